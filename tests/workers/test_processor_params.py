"""The job's params reach the processor: read-only on every Item of the batch, and the
example processors use them (thumbnail `size` and `format`, EdgeMaps `strength`)."""

from __future__ import annotations

import io
import operator
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from PIL import Image
from rq.job import Job

from service.contract import SERIALIZER, BatchItem, batch_payload, make_queue
from service.models import THUMBNAIL_PARAMS_SCHEMA
from service.state.queue import enqueue_job
from tests.workers.conftest import TOKEN, FakeApi, unique_job_id
from workers.callbacks import RetryingClient
from workers.jobs import Batch, run_batch
from workers.processors import Item, Output
from workers.processors.thumbnail import make_thumbnails

JOB_ID = "01jobid0000000000000000000-3"


def image_bytes(width: int, height: int, mode: str = "RGB", image_format: str = "PNG") -> bytes:
    color: Any = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 90, "CMYK":
                  (0, 200, 200, 0), "P": 3}[mode]
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format=image_format)
    return out.getvalue()


def item(index: int, data: bytes, **params: Any) -> Item:
    return Item(index, f"img-{index}", "image/png", data, MappingProxyType(params))


def decoded(output: Output) -> tuple[str | None, tuple[int, int], str]:
    assert output.error is None and output.data is not None, output.error
    with Image.open(io.BytesIO(output.data)) as image:
        return image.format, image.size, image.mode


@pytest.mark.parametrize(("params", "size", "image_format", "content_type"), [
    ({}, (256, 128), "PNG", "image/png"),  # the schema's defaults: 256, png
    ({"size": 64}, (64, 32), "PNG", "image/png"),
    ({"size": 1024, "format": "jpeg"}, (800, 400), "JPEG", "image/jpeg"),  # never enlarged
    ({"size": 16, "format": "webp"}, (16, 8), "WEBP", "image/webp"),
    ({"format": "jpeg"}, (256, 128), "JPEG", "image/jpeg"),
])
def test_thumbnail_size_and_format_come_from_the_params(
        params: dict[str, Any], size: tuple[int, int], image_format: str,
        content_type: str) -> None:
    [output] = make_thumbnails([item(0, image_bytes(800, 400), **params)])
    assert output.content_type == content_type
    assert decoded(output)[:2] == (image_format, size)


@pytest.mark.parametrize(("mode", "image_format", "stored_mode"), [
    ("RGBA", "jpeg", "RGB"),  # JPEG has no alpha
    ("CMYK", "webp", "RGB"),  # WebP stores RGB(A) only
    ("RGBA", "webp", "RGBA"),
    ("L", "jpeg", "L"),
    ("P", "png", "P"),
])
def test_thumbnail_converts_what_the_format_cannot_store(
        mode: str, image_format: str, stored_mode: str) -> None:
    source = image_bytes(40, 40, mode, "TIFF" if mode == "CMYK" else "PNG")
    [output] = make_thumbnails([item(0, source, size=32, format=image_format)])
    assert decoded(output) == (image_format.upper(), (32, 32), stored_mode)


@pytest.mark.parametrize("params", [{"size": 8}, {"size": 2048}, {"size": "64"},
                                    {"size": True}, {"format": "gif"}])
def test_thumbnail_refuses_params_outside_its_schema(params: dict[str, Any]) -> None:
    """A worker served under a model that declares other params: a clear item error."""
    [output] = make_thumbnails([item(0, image_bytes(40, 40), **params)])
    assert output.data is None and output.error is not None
    assert output.error.startswith("bad params: ValueError: params.")


def test_the_default_models_schema_declares_what_the_thumbnail_takes() -> None:
    properties = THUMBNAIL_PARAMS_SCHEMA["properties"]
    assert properties["size"] == {**properties["size"], "type": "integer", "minimum": 16,
                                  "maximum": 1024, "default": 256}
    assert properties["format"]["enum"] == ["png", "jpeg", "webp"]
    assert properties["format"]["default"] == "png"
    assert THUMBNAIL_PARAMS_SCHEMA["additionalProperties"] is False


def write_attempts(params: Mapping[str, Any]) -> list[str]:
    """The errors of three writes into the params: the mapping, a nested one, a list."""
    errors = []
    for attempt in (lambda: operator.setitem(params, "size", 1),
                    lambda: operator.setitem(params["nested"], "a", 2),
                    lambda: params["list"].append(3)):
        try:
            attempt()
        except (TypeError, AttributeError) as exc:
            errors.append(type(exc).__name__)
    return errors


@pytest.fixture
def http() -> Iterator[RetryingClient]:
    with httpx.Client(timeout=10) as client:
        yield RetryingClient(client, sleep=lambda _: None)


def test_every_item_of_a_batch_gets_the_jobs_params_read_only(
        fake_api: FakeApi, http: RetryingClient) -> None:
    seen: list[Mapping[str, Any]] = []
    errors: list[str] = []

    def recording(items: list[Item]) -> list[Output]:
        for one in items:
            seen.append(one.params)
            errors.extend(write_attempts(one.params))
        return [Output(one.index, one.data, one.content_type) for one in items]

    params = {"size": 64, "nested": {"a": 1}, "list": [1, 2]}
    specs = []
    for index in range(3):
        fake_api.inputs[f"{index}.bin"] = b"x"
        specs.append(BatchItem(index, f"f{index}", "image/png", fake_api.input_url(f"{index}.bin"),
                               fake_api.output_url(f"{index}.bin"), f"out/{index}"))
    payload = batch_payload(job_id=JOB_ID, batch_no=0, callback_url=fake_api.callback_url(JOB_ID),
                            callback_token=TOKEN, lease_ttl_s=60, items=specs, params=params)
    assert payload["params"] == params  # plain JSON on the wire
    summary = run_batch(Batch.from_payload(payload), recording, http)

    assert summary["ok"] == 3
    assert [dict(one) for one in seen] == [{"size": 64, "nested": MappingProxyType({"a": 1}),
                                           "list": (1, 2)}] * 3
    assert all(isinstance(one, MappingProxyType) for one in seen)
    assert errors == ["TypeError", "TypeError", "AttributeError"] * 3
    assert params == {"size": 64, "nested": {"a": 1}, "list": [1, 2]}  # the payload unchanged


@pytest.mark.redis
def test_every_batch_of_a_job_carries_its_params(sync_redis: Any, key_prefix: str) -> None:
    queue = make_queue(sync_redis, key_prefix)
    job_id = unique_job_id(key_prefix)
    params = {"size": 64, "format": "webp", "tags": ["a"]}
    specs = [BatchItem(i, f"f{i}", "image/png", f"http://in/{i}", f"http://out/{i}", f"o/{i}")
             for i in range(5)]
    ids = enqueue_job(queue, job_id=job_id, callback_url="http://api/cb", callback_token="t",
                      items=specs, batch_size=2, lease_ttl_s=30, timeout_s=900, params=params)
    assert len(ids) == 3
    for rq_id in ids:
        job = Job.fetch(rq_id, connection=sync_redis, serializer=SERIALIZER)
        assert job.args[0]["params"] == params
        assert dict(Batch.from_payload(job.args[0]).params) == {
            "size": 64, "format": "webp", "tags": ("a",)}


def test_a_batch_from_before_params_gets_an_empty_mapping() -> None:
    payload = batch_payload(job_id=JOB_ID, batch_no=0, callback_url="http://api/cb",
                            callback_token=TOKEN, lease_ttl_s=60, items=[])
    del payload["params"]
    assert dict(Batch.from_payload(payload).params) == {}


@pytest.mark.slow  # imports torch: over 3 s
def test_torch_edge_maps_scale_the_edges_by_strength() -> None:
    pytest.importorskip("torch")
    from workers.processors.torch_batch import SIZE, EdgeMaps

    half = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    half.paste((64, 64, 64), (SIZE // 2, 0, SIZE, SIZE))  # a quarter step: 45 at strength 1
    out = io.BytesIO()
    half.save(out, format="PNG")
    processor = EdgeMaps()
    peaks = {}
    for strength in (0, 0.5, 1, 4):
        [output] = processor([item(0, out.getvalue(), strength=strength)])
        assert output.data is not None, output.error
        with Image.open(io.BytesIO(output.data)) as image:
            peaks[strength] = image.getextrema()[1]
    assert peaks[0] == 0
    assert peaks[1] in (44, 45) and peaks[0.5] in (22, 23) and peaks[4] in (179, 180, 181)
    [refused] = processor([item(0, out.getvalue(), strength=5)])
    assert refused.data is None and "params.strength" in (refused.error or "")
