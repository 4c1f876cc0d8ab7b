"""The model table: TOLLGATE_MODELS parsed into models, the version 1 fallback, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli.main import worker_target
from service.errors import UnknownModel
from service.models import ModelsConfigError, load_models, parse_models
from service.settings import Settings

TWO_MODELS = """
[models.thumbnail]
processor = "workers.processors.thumbnail:make_thumbnails"
price_per_item = 1
queue = "gpu"
batch_size = 8
max_items = 1000
content_types = ["image/*"]
description = "256 px PNG thumbnails"
default = true

[models.invert]
processor = "workers.processors.torch_batch:InvertImages"
price_per_item = 3
queue = "gpu-torch"
batch_size = 16
max_items = 50
content_types = ["image/png", "image/jpeg"]

[models.invert.params_schema]
type = "object"
properties = { strength = { type = "number", minimum = 0 } }
additionalProperties = false
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return str(path)


def test_a_models_file_gives_every_field_and_the_schema(tmp_path: Path) -> None:
    table = load_models(Settings(models=write(tmp_path, TWO_MODELS)))
    assert [m.name for m in table] == ["thumbnail", "invert"]
    invert = table.get("invert")
    assert (invert.price_per_item, invert.queue, invert.batch_size, invert.max_items) == (
        3, "gpu-torch", 16, 50)
    assert invert.processor == "workers.processors.torch_batch:InvertImages"
    assert invert.params_schema == {
        "type": "object", "properties": {"strength": {"type": "number", "minimum": 0}},
        "additionalProperties": False}
    assert table.get(None).name == "thumbnail" and table.default.default
    assert not invert.default
    assert table.get("thumbnail").params_schema is None
    assert invert.public_view() == {
        "name": "invert", "description": "", "price_per_item": 3, "max_items": 50,
        "content_types": ["image/png", "image/jpeg"], "default": False,
        "params_schema": invert.params_schema}


def test_without_a_file_the_version_1_settings_make_one_model() -> None:
    settings = Settings(processor="workers.processors.noop:passthrough", price_per_item=4,
                        queue_name="old-queue", batch_size=3, max_items=12)
    [model] = list(load_models(settings))
    assert (model.name, model.processor, model.price_per_item, model.queue, model.batch_size,
            model.max_items, model.default) == (
        "thumbnail", "workers.processors.noop:passthrough", 4, "old-queue", 3, 12, True)
    assert model.accepts("application/octet-stream")  # version 1 took any content type


def test_fields_left_out_come_from_the_settings() -> None:
    settings = Settings(batch_size=5, max_items=77)
    table = parse_models({"models": {"a": {"processor": "m:f", "price_per_item": 2}}}, settings)
    model = table.get("a")
    assert (model.queue, model.batch_size, model.max_items, model.default) == ("a", 5, 77, True)
    assert model.content_types == ("*/*",)


@pytest.mark.parametrize(("content_type", "taken"), [
    ("image/png", True), ("IMAGE/PNG", True), ("image/jpeg", True), ("image/gif", False),
    ("text/plain", False)])
def test_content_types_match_exactly_or_by_glob(content_type: str, taken: bool) -> None:
    table = parse_models({"models": {
        "a": {"processor": "m:f", "price_per_item": 1, "content_types": ["image/png", "image/j*"]},
    }}, Settings())
    assert table.get("a").accepts(content_type) is taken


def test_without_a_default_the_first_listed_model_is_it() -> None:
    table = parse_models({"models": {
        "b": {"processor": "m:f", "price_per_item": 1},
        "a": {"processor": "m:g", "price_per_item": 1}}}, Settings())
    assert table.default.name == "b"
    assert [m.default for m in table] == [True, False]


def test_an_unknown_model_is_a_422_unknown_model() -> None:
    table = load_models(Settings())
    with pytest.raises(UnknownModel) as caught:
        table.get("nope")
    assert (caught.value.status, caught.value.code) == (422, "unknown_model")


@pytest.mark.parametrize(("models", "message"), [
    ({}, "no \\[models"),
    ({"a": {"processor": "m:f", "price_per_item": 1, "default": True},
      "b": {"processor": "m:f", "price_per_item": 1, "default": True}}, "several default"),
    ({"a": {"processor": "m:f", "price_per_item": 1, "queue": "q"},
      "b": {"processor": "m:g", "price_per_item": 1, "queue": "q"}}, "share queue"),
    ({"a": {"processor": "m:f", "price_per_item": -1}}, "price_per_item"),
    ({"a": {"processor": "m:f", "price_per_item": 1, "batch_size": 0}}, "batch_size"),
    ({"a": {"processor": "no colon", "price_per_item": 1}}, "processor"),
    ({"a": {"processor": "m:f", "price_per_item": 1, "colour": "red"}}, "colour"),
    ({"a": {"processor": "m:f", "price_per_item": 1, "content_types": ["png"]}},
     "content_types"),
    ({"a b": {"processor": "m:f", "price_per_item": 1}}, "name"),
    ({"a": {"processor": "m:f"}}, "price_per_item"),
])
def test_a_bad_models_file_is_refused_with_the_reason(models: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(ModelsConfigError, match=message):
        parse_models({"models": models}, Settings())


def test_models_sharing_a_queue_and_a_processor_are_fine() -> None:
    table = parse_models({"models": {
        "cheap": {"processor": "m:f", "price_per_item": 1, "queue": "q"},
        "priority": {"processor": "m:f", "price_per_item": 5, "queue": "q"}}}, Settings())
    assert table.queues() == ["q"]


def test_an_unreadable_or_invalid_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match="cannot be read"):
        load_models(Settings(models=str(tmp_path / "missing.toml")))
    with pytest.raises(ModelsConfigError, match="not valid TOML"):
        load_models(Settings(models=write(tmp_path, "[models.a\n")))


def test_worker_target_is_the_models_queue_and_processor(tmp_path: Path) -> None:
    settings = Settings(models=write(tmp_path, TWO_MODELS))
    assert worker_target(settings, "invert", None) == (
        "gpu-torch", "workers.processors.torch_batch:InvertImages")
    assert worker_target(settings, None, None) == (
        "gpu", "workers.processors.thumbnail:make_thumbnails")
    assert worker_target(settings, None, "gpu-torch") == (
        "gpu-torch", "workers.processors.torch_batch:InvertImages")
    with pytest.raises(SystemExit, match="no model 'nope'"):
        worker_target(settings, "nope", None)
    with pytest.raises(SystemExit, match="served on queue"):
        worker_target(settings, "invert", "gpu")


def test_a_version_1_worker_on_its_own_queue_runs_tollgate_processor() -> None:
    settings = Settings(processor="workers.processors.noop:passthrough", queue_name="gpu")
    assert worker_target(settings, None, "elsewhere") == (
        "elsewhere", "workers.processors.noop:passthrough")
    assert worker_target(settings, None, None) == ("gpu", "workers.processors.noop:passthrough")
