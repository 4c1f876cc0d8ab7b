"""An example GPU processor: inverts the colours of a batch of images in one tensor op.

Items of one size are stacked into one uint8 tensor (N, H, W, 3) on CUDA when present and on
the CPU otherwise. torch is imported on first use: it is the optional "gpu" extra.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from workers.processors import Item, Output
from workers.processors.thumbnail import THUMBNAIL_SIZE


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGB")
    # Bounded input size keeps one batch tensor small on the GPU.
    rgb.thumbnail(THUMBNAIL_SIZE)
    return rgb


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def invert_images(items: list[Item]) -> list[Output]:
    import torch

    device: Any = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    outputs: dict[int, Output] = {}
    by_size: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}
    for item in items:
        try:
            image = _decode(item.data)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            outputs[item.index] = Output.failed(item.index, f"cannot decode image: {exc}")
            continue
        by_size.setdefault(image.size, []).append((item.index, image))

    for (width, height), group in by_size.items():
        pixels = bytearray(b"".join(image.tobytes() for _, image in group))
        batch = torch.frombuffer(pixels, dtype=torch.uint8).reshape(len(group), height, width, 3)
        inverted = (255 - batch.to(device)).cpu().contiguous()
        for (index, _), tensor in zip(group, inverted, strict=True):
            image = Image.frombytes("RGB", (width, height), tensor.numpy().tobytes())
            outputs[index] = Output(index, _png(image), "image/png")
    return [outputs[item.index] for item in items]
