"""An example GPU processor: the edge map of every image of a batch, in one forward pass.

`setup()` runs once per worker process: it picks CUDA when there is one, else the CPU, says
which in the log, and builds a small network with fixed weights made here (nothing is
downloaded): a 1x1 convolution to grey (ITU-R BT.601 weights, scaled to 0..1) and a 3x3
Sobel convolution giving the x and y gradients. A batch is decoded and resized to 256x256 on
the CPU, stacked into one uint8 tensor (N, 3, 256, 256), and run through the network as one
op under `torch.inference_mode()`; each item comes back as the gradient magnitude, an 8-bit
greyscale PNG. torch is imported on first use: it is the optional "gpu" extra.

Params: `strength` (a number from 0 to 4, default 1) scales the gradient magnitude: above 1
faint edges show, below 1 only strong ones do. Declare it in the model's params_schema:

    [models.edges]
    processor = "workers.processors.torch_batch:EdgeMaps"
    params_schema = { type = "object", additionalProperties = false, properties = {
        strength = { type = "number", minimum = 0, maximum = 4, default = 1 } } }

Serve it with `processor = "workers.processors.torch_batch:EdgeMaps"` in a model.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any, BinaryIO

from PIL import Image

from service.contract import describe_error
from workers.processors import Item, Output

log = logging.getLogger(__name__)

SIZE = 256
GREY = (0.299, 0.587, 0.114)
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
# The largest gradient magnitude of a 0..1 grey image (4 on each axis) maps to 255.
FULL_SCALE = 255.0 / math.sqrt(4.0**2 + 4.0**2)
DEFAULT_STRENGTH, MAX_STRENGTH = 1.0, 4.0


def strength_of(items: list[Item]) -> float:
    """The job's `strength` param (the same on every item of a batch: one job's)."""
    value = items[0].params.get("strength", DEFAULT_STRENGTH) if items else DEFAULT_STRENGTH
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_STRENGTH:
        raise ValueError(f"params.strength must be a number from 0 to {MAX_STRENGTH:g}, "
                         f"not {value!r}")
    return float(value)


def _pixels(data: bytes | BinaryIO) -> bytes:
    """RGB bytes of the image at SIZE x SIZE; raises on anything PIL cannot decode.
    `data`: the bytes, or a binary file (`Item.open()`)."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image.load()
        rgb = image.convert("RGB")
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return rgb.tobytes()


def _png(plane: bytes) -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (SIZE, SIZE), plane).save(out, format="PNG")
    return out.getvalue()


class EdgeMaps:
    """A processor object: `setup()` builds the network once, each call runs one batch."""

    def __init__(self) -> None:
        self.device: Any = None
        self.network: Any = None

    def setup(self) -> None:
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        grey = torch.nn.Conv2d(3, 1, kernel_size=1, bias=False)
        sobel = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1, padding_mode="replicate",
                                bias=False)
        with torch.no_grad():
            grey.weight.copy_(torch.tensor(GREY).view(1, 3, 1, 1) / 255.0)
            gx = torch.tensor(SOBEL_X)
            sobel.weight.copy_(torch.stack([gx, gx.t()]).unsqueeze(1))
        network = torch.nn.Sequential(grey, sobel).to(device).eval()
        with torch.inference_mode():  # the first op on a device pays its start-up: pay it here
            network(torch.zeros(1, 3, SIZE, SIZE, device=device))
        self.device, self.network = device, network
        name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        log.info("EdgeMaps runs on %s%s", device, name)

    def __call__(self, items: list[Item]) -> list[Output]:
        import torch

        if self.network is None:  # called outside a worker, which calls setup() first
            self.setup()
        try:
            strength = strength_of(items)
        except ValueError as exc:
            error = describe_error("bad params", exc)
            return [Output.failed(item.index, error) for item in items]
        outputs: dict[int, Output] = {}
        decoded: list[tuple[int, bytes]] = []
        for item in items:
            try:
                with item.open() as source:
                    decoded.append((item.index, _pixels(source)))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                outputs[item.index] = Output.failed(item.index,
                                                    describe_error("cannot decode image", exc))
        if decoded:
            pixels = bytearray(b"".join(raw for _, raw in decoded))
            batch = torch.frombuffer(pixels, dtype=torch.uint8).view(len(decoded), SIZE, SIZE, 3)
            with torch.inference_mode():
                x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
                gradients = self.network(x)  # (N, 2, SIZE, SIZE)
                magnitude = gradients.square().sum(dim=1).sqrt() * (FULL_SCALE * strength)
                planes = magnitude.clamp_(0, 255).to(torch.uint8).cpu()
            for (index, _), plane in zip(decoded, planes, strict=True):
                outputs[index] = Output(index, _png(plane.numpy().tobytes()), "image/png")
        return [outputs[item.index] for item in items]


edge_maps = EdgeMaps()
