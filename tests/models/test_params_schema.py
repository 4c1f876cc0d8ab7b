"""params_schema: checked as a JSON Schema when the table loads, and params checked against
it (compiled once per model), refusals naming the field by its JSON path."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import BadArgument
from service.models import ModelsConfigError, load_models, parse_models
from service.settings import Settings

SETTINGS = Settings()


def table(schema: dict[str, Any] | None) -> Any:
    entry: dict[str, Any] = {"processor": "workers.processors.noop:passthrough",
                             "price_per_item": 1}
    if schema is not None:
        entry["params_schema"] = schema
    return parse_models({"models": {"m": entry}}, SETTINGS)


@pytest.mark.parametrize("schema", [{"type": "no-such-type"}, {"properties": 5},
                                    {"minimum": "x"}])
def test_a_schema_json_schema_refuses_is_a_start_up_error(schema: dict[str, Any]) -> None:
    with pytest.raises(ModelsConfigError, match="params_schema"):
        table(schema)


@pytest.mark.parametrize(("schema", "params", "field"), [
    (None, {"a": 1}, "params.a"),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {
        "b": {"type": "array", "items": {"type": "integer"}}}}}},
     {"a": {"b": [1, 2, "x"]}}, "params.a.b[2]"),
    ({"type": "object", "required": ["need"]}, {}, "params.need"),
    ({"type": "object", "additionalProperties": False, "properties": {"a": {}}},
     {"a": 1, "zz": 2}, "params.zz"),
    ({"type": "object", "maxProperties": 1}, {"a": 1, "b": 2}, "params"),
])
def test_refusals_name_the_field(schema: dict[str, Any] | None, params: dict[str, Any],
                                 field: str) -> None:
    models = table(schema)
    with pytest.raises(BadArgument) as refused:
        models.check_params(models.get("m"), params)
    assert refused.value.status == 422 and refused.value.code == "validation_error"
    assert refused.value.extra["field"] == field
    assert refused.value.detail.startswith(f"{field}: ")
    assert field in [error["key"] for error in refused.value.extra["errors"]]


def test_valid_params_pass_and_no_schema_takes_an_empty_object() -> None:
    table(None).check_params(table(None).get("m"), {})
    models = table({"type": "object", "properties": {"a": {"type": "integer"}}})
    models.check_params(models.get("m"), {"a": 3, "other": "free"})


def test_the_version_1_model_declares_thumbnail_params() -> None:
    models = load_models(Settings(models=None))
    model = models.default
    assert model.public_view()["params_schema"] == model.params_schema
    models.check_params(model, {"size": 16, "format": "jpeg"})
    for params, field in (({"size": 1025}, "params.size"), ({"format": "bmp"}, "params.format"),
                          ({"quality": 9}, "params.quality")):
        with pytest.raises(BadArgument) as refused:
            models.check_params(model, params)
        assert refused.value.extra["field"] == field
