"""Integer params (issue 23, low finding): JSON Schema counts 64.0 as an integer, a processor
checking isinstance(v, int) does not, so every item of such a job failed. check_params makes
each whole float an "integer" wants an int, in place, before the job or rule is stored, and
refuses 64.5; a "number" keeps its float."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import BadArgument
from service.models import Model, ModelTable

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "size": {"type": "integer"},
        "scale": {"type": "number"},
        "sizes": {"type": "array", "items": {"type": ["integer", "null"]}},
        "box": {"type": "object", "properties": {"w": {"type": "integer"}}},
        "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    },
}


def table() -> tuple[ModelTable, Model]:
    model = Model(name="m", processor="a:b", price_per_item=1, queue="q", batch_size=1,
                  max_items=1, params_schema=SCHEMA)
    return ModelTable([model]), model


def test_whole_floats_become_ints_wherever_the_schema_wants_an_integer() -> None:
    models, model = table()
    params: dict[str, Any] = {"size": 64.0, "scale": 2.0, "sizes": [1.0, None, 3],
                              "box": {"w": 8.0}, "either": 5.0}
    models.check_params(model, params)
    assert params == {"size": 64, "scale": 2.0, "sizes": [1, None, 3], "box": {"w": 8},
                      "either": 5}
    assert [type(v) for v in (params["size"], params["sizes"][0], params["box"]["w"],
                              params["either"], params["scale"])] == [int, int, int, int, float]


@pytest.mark.parametrize("params", [{"size": 64.5}, {"sizes": [1.5]}, {"box": {"w": True}}])
def test_a_fractional_or_boolean_integer_is_refused(params: dict[str, Any]) -> None:
    models, model = table()
    with pytest.raises(BadArgument):
        models.check_params(model, params)
