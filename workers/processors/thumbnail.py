"""The default processor: a thumbnail of each image, as the job's params ask.

Params (the `thumbnail` model's params_schema, service/models.py): `size`, the longest side
in pixels (16..1024, default 256), and `format`, `png`, `jpeg` or `webp` (default png). The
image keeps its aspect ratio and is never enlarged.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from service.contract import describe_error
from workers.processors import Item, Output

DEFAULT_SIZE, MIN_SIZE, MAX_SIZE = 256, 16, 1024
THUMBNAIL_SIZE = (DEFAULT_SIZE, DEFAULT_SIZE)
DEFAULT_FORMAT = "png"
# params `format` -> (PIL format, Content-Type of the output)
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"),
           "webp": ("WEBP", "image/webp")}
# Modes PNG stores as they are; anything else (CMYK, YCbCr, LAB, HSV, F) is converted first.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def _storable(image: Image.Image, image_format: str) -> Image.Image:
    """The image in a mode the format stores (JPEG has no alpha; WebP is RGB(A) only)."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image_format == "PNG":
        if image.mode in PNG_MODES:
            return image
        return image.convert("RGBA" if has_alpha else "RGB")
    if image_format == "JPEG":
        return image if image.mode in ("L", "RGB") else image.convert("RGB")
    if image.mode in ("RGB", "RGBA"):
        return image
    return image.convert("RGBA" if has_alpha else "RGB")


def thumbnail(data: bytes | BinaryIO, size: int = DEFAULT_SIZE, image_format: str = "PNG"
              ) -> bytes:
    """The image scaled to fit size x size, encoded as `image_format` (a PIL format name).
    `data`: the bytes, or a binary file (`Item.open()`: PIL reads the header first, so a
    large input that is no image is refused without being read whole)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as decoded:
        return _scaled(decoded, size, image_format)


def _scaled(decoded: Image.Image, size: int, image_format: str) -> bytes:
    """Decodes an opened image (the costly part) and encodes its thumbnail."""
    decoded.load()
    image = _storable(decoded, image_format)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


def thumbnail_png(data: bytes) -> bytes:
    return thumbnail(data)


def thumbnail_params(params: Mapping[str, Any]) -> tuple[int, str, str]:
    """(size, PIL format, Content-Type) from the job's params; ValueError if the API let
    through params of another schema (a worker served under a model that declares other
    params)."""
    size = params.get("size", DEFAULT_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"params.size must be an integer from {MIN_SIZE} to {MAX_SIZE}, "
                         f"not {size!r}")
    name = params.get("format", DEFAULT_FORMAT)
    if name not in FORMATS:
        raise ValueError(f"params.format must be one of {', '.join(FORMATS)}, not {name!r}")
    image_format, content_type = FORMATS[name]
    return size, image_format, content_type


def make_thumbnails(items: list[Item]) -> list[Output]:
    outputs = []
    for item in items:
        try:
            size, image_format, content_type = thumbnail_params(item.params)
        except ValueError as exc:
            outputs.append(Output.failed(item.index, describe_error("bad params", exc)))
            continue
        outputs.append(_thumbnail_output(item, size, image_format, content_type))
    return outputs


def _thumbnail_output(item: Item, size: int, image_format: str, content_type: str) -> Output:
    """An input PIL cannot identify fails free (only its header was read); one that fails
    while it is decoded (a truncated image) fails billable: the decoding was the work
    (charged when the model has bill_input_errors)."""
    with item.open() as source:
        try:
            opened = Image.open(source)
        except (UnidentifiedImageError, OSError, ValueError,
                Image.DecompressionBombError) as exc:
            return Output.failed(item.index, describe_error("cannot make a thumbnail", exc))
        with opened:
            try:
                return Output(item.index, _scaled(opened, size, image_format), content_type)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                return Output.failed(item.index, describe_error("cannot make a thumbnail", exc),
                                     billable=True)
