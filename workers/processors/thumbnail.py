"""The default processor: a PNG thumbnail of at most 256x256 for each image."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from service.contract import describe_error
from workers.processors import Item, Output

THUMBNAIL_SIZE = (256, 256)
# Modes PNG stores as they are; anything else (CMYK, YCbCr, LAB, HSV, F) is converted first.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def thumbnail_png(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        image: Image.Image = decoded
        if image.mode not in PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.thumbnail(THUMBNAIL_SIZE)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


def make_thumbnails(items: list[Item]) -> list[Output]:
    outputs = []
    for item in items:
        try:
            outputs.append(Output(item.index, thumbnail_png(item.data), "image/png"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            outputs.append(Output.failed(item.index, describe_error("cannot make a thumbnail",
                                                                    exc)))
    return outputs
