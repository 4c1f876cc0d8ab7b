from __future__ import annotations

import io

import pytest
from PIL import Image

from workers.jobs import run_processor
from workers.processors import Item, Output, load_processor
from workers.processors.noop import fail_odd, passthrough
from workers.processors.thumbnail import make_thumbnails


def png(width: int, height: int, mode: str = "RGB", color: object = (200, 30, 60)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format="PNG" if mode != "CMYK" else "JPEG")
    return out.getvalue()


def item(index: int, data: bytes, content_type: str = "image/png") -> Item:
    return Item(index, f"item-{index}", content_type, data)


def test_thumbnail_fits_256_box_and_keeps_aspect_ratio() -> None:
    [out] = make_thumbnails([item(3, png(1024, 512))])
    assert out.index == 3 and out.error is None and out.content_type == "image/png"
    assert out.data is not None
    with Image.open(io.BytesIO(out.data)) as thumb:
        assert thumb.format == "PNG"
        assert thumb.size == (256, 128)
        assert thumb.getpixel((10, 10)) == (200, 30, 60)


def test_thumbnail_never_enlarges_a_small_image() -> None:
    [out] = make_thumbnails([item(0, png(40, 30))])
    assert out.data is not None
    with Image.open(io.BytesIO(out.data)) as thumb:
        assert thumb.size == (40, 30)


def test_thumbnail_converts_modes_png_cannot_store() -> None:
    [out] = make_thumbnails([item(0, png(300, 300, "CMYK", (0, 255, 0, 0)), "image/jpeg")])
    assert out.error is None and out.data is not None
    with Image.open(io.BytesIO(out.data)) as thumb:
        assert thumb.mode == "RGB" and thumb.size == (256, 256)


def test_undecodable_input_fails_only_that_item() -> None:
    outputs = make_thumbnails([item(0, png(10, 10)), item(1, b"not an image"), item(2, b"")])
    assert [o.index for o in outputs] == [0, 1, 2]
    assert outputs[0].error is None
    assert outputs[1].data is None and "cannot make a thumbnail" in (outputs[1].error or "")
    assert outputs[2].data is None and outputs[2].error


def test_truncated_png_is_an_item_error_not_a_crash() -> None:
    data = png(400, 400)
    [out] = make_thumbnails([item(0, data[: len(data) // 2])])
    assert out.data is None and out.error


def test_batch_exception_is_retried_item_by_item() -> None:
    items = [item(i, bytes([i])) for i in range(5)]
    outputs = run_processor(fail_odd, items)
    assert [o.index for o in outputs] == [0, 1, 2, 3, 4]
    assert [o.error is None for o in outputs] == [True, False, True, False, True]
    assert outputs[2].data == bytes([2])
    assert "odd item index 3" in (outputs[3].error or "")


def test_processor_that_breaks_the_protocol_falls_back_item_by_item() -> None:
    calls: list[int] = []

    def drops_the_last(batch: list[Item]) -> list[Output]:
        calls.append(len(batch))
        return passthrough(batch)[:-1]

    outputs = run_processor(drops_the_last, [item(i, b"x") for i in range(3)])
    assert calls == [3, 1, 1, 1]
    assert all(o.error and "no output" in o.error for o in outputs)


def test_outputs_come_back_in_item_order() -> None:
    def reversed_outputs(batch: list[Item]) -> list[Output]:
        return list(reversed(passthrough(batch)))

    outputs = run_processor(reversed_outputs, [item(i, bytes([i])) for i in (4, 7, 9)])
    assert [(o.index, o.data) for o in outputs] == [(4, b"\x04"), (7, b"\x07"), (9, b"\t")]


def test_load_processor_resolves_module_function() -> None:
    assert load_processor("workers.processors.noop:passthrough") is passthrough
    assert load_processor("workers.processors.thumbnail:make_thumbnails") is make_thumbnails


@pytest.mark.parametrize("spec", ["workers.processors.noop", "noop:", ":passthrough",
                                  "workers.processors.noop:BATCH_SIZE_NOT_THERE",
                                  "workers.processors.thumbnail:THUMBNAIL_SIZE"])
def test_load_processor_refuses_bad_specs(spec: str) -> None:
    with pytest.raises((ValueError, AttributeError, TypeError, ImportError)):
        load_processor(spec)


def halves(width: int, height: int) -> bytes:
    """Black on the left half, white on the right: one vertical edge in the middle."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.paste((255, 255, 255), (width // 2, 0, width, height))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow  # imports torch: over 3 s
def test_torch_edge_maps_find_the_edge_of_a_batch(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torch")
    from workers.processors.torch_batch import SIZE, EdgeMaps

    processor = EdgeMaps()
    with caplog.at_level("INFO", logger="workers.processors.torch_batch"):
        outputs = processor([item(0, halves(SIZE, SIZE)), item(1, b"junk"),
                             item(2, png(SIZE, SIZE, color=(90, 90, 90))),
                             item(3, halves(64, 32))])
    device = "cuda" if processor.device.type == "cuda" else "cpu"
    assert any(f"EdgeMaps runs on {device}" in message for message in caplog.messages)
    assert [o.index for o in outputs] == [0, 1, 2, 3]
    assert outputs[1].data is None and "cannot decode image" in (outputs[1].error or "")
    planes = {}
    for index in (0, 2, 3):
        data = outputs[index].data
        assert data is not None and outputs[index].content_type == "image/png"
        with Image.open(io.BytesIO(data)) as image:
            assert (image.size, image.mode) == ((SIZE, SIZE), "L")
            planes[index] = image.copy()
    # A full black-to-white step is a gradient of 4 on a 0..1 grey scale: 4 * 255 / sqrt(32).
    middle = SIZE // 2
    assert [planes[0].getpixel((x, 100)) for x in (0, middle - 2, middle - 1, middle,
                                                   middle + 1, SIZE - 1)] == [0, 0, 180, 180,
                                                                              0, 0]
    assert planes[2].getextrema() == (0, 0)  # a flat image has no edges, borders included
    assert planes[3].getpixel((10, 10)) == 0 and max(
        planes[3].getpixel((x, 10)) for x in range(SIZE)) > 50  # resized: a softer edge


@pytest.mark.slow  # imports torch: over 3 s
def test_torch_edge_maps_run_setup_only_when_nobody_did() -> None:
    pytest.importorskip("torch")
    from workers.processors import ensure_setup
    from workers.processors.torch_batch import EdgeMaps

    processor = EdgeMaps()
    assert ensure_setup(processor) and processor.network is not None
    network = processor.network
    processor([item(0, halves(8, 8))])
    assert processor.network is network and not ensure_setup(processor)
