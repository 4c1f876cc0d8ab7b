"""The models a job can run on: each a processor with its own price, queue and limits.

The one table of them, read from the TOML file that `TOLLGATE_MODELS` names. Without it there
is one model, `thumbnail`, made from the version 1 settings (`TOLLGATE_PROCESSOR`,
`TOLLGATE_PRICE_PER_ITEM`, `TOLLGATE_QUEUE_NAME`, `TOLLGATE_BATCH_SIZE`, `TOLLGATE_MAX_ITEMS`),
so a version 1 set-up keeps working. The API prices and checks jobs with it, dispatch picks a
job's queue and batch size from it, and `tollgate worker --model NAME` finds its processor in
it. Workers never import it: they get a processor spec and a queue name.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.exceptions import ValidationError as ParamsViolation
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.errors import BadArgument, ModelUnavailable, UnknownModel
from service.settings import Settings

FALLBACK_MODEL = "thumbnail"
NamePattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ContentTypeGlob = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$&^_.+*-]+/[A-Za-z0-9!#$&^_.+*-]+$")]
# The params of the version 1 model: workers.processors.thumbnail reads `size` and `format`.
THUMBNAIL_PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 256,
                 "description": "the longest side of the thumbnail, in pixels"},
        "format": {"enum": ["png", "jpeg", "webp"], "default": "png",
                   "description": "the image format of the thumbnail"},
    },
    "additionalProperties": False,
}
# A refusal lists at most this many of the ways params break the schema.
MAX_PARAMS_ERRORS = 20


class ModelsConfigError(ValueError):
    """The TOLLGATE_MODELS file cannot be used; raised at start-up, never per request."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NamePattern)]
    processor: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]
    price_per_item: Annotated[int, Field(ge=0)]
    queue: Annotated[str, Field(min_length=1, max_length=200)]
    batch_size: Annotated[int, Field(ge=1)]
    max_items: Annotated[int, Field(ge=1)]
    content_types: tuple[ContentTypeGlob, ...] = ("*/*",)
    description: str = ""
    default: bool = False
    params_schema: dict[str, Any] | None = None
    # The largest item (bytes) a job of this model may declare (default TOLLGATE_MAX_ITEM_SIZE).
    max_item_bytes: Annotated[int, Field(ge=1)] = 100 * 1024**2
    # Items its processor failed with `Output.failed(..., billable=True)` (the input's fault,
    # found after the work was done) are charged like done items.
    bill_input_errors: bool = False

    @field_validator("params_schema")
    @classmethod
    def _a_valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """A schema JSON Schema itself refuses is a start-up error, never a 500 per request."""
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(f"params_schema is not a Draft 2020-12 JSON Schema: "
                                 f"{exc.message}") from None
        return schema

    def accepts(self, content_type: str) -> bool:
        """Globs like `image/*`; media types are case-insensitive."""
        wanted = content_type.lower()
        return any(fnmatchcase(wanted, glob.lower()) for glob in self.content_types)

    def public_view(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "price_per_item": self.price_per_item, "max_items": self.max_items,
                "content_types": list(self.content_types), "default": self.default,
                "params_schema": self.params_schema}


class ModelTable:
    """Models by name, in the order the file lists them, and the one a job gets by default."""

    def __init__(self, models: list[Model]) -> None:
        if not models:
            raise ModelsConfigError("no models configured: add a [models.<name>] table")
        defaults = [m.name for m in models if m.default]
        if len(defaults) > 1:
            raise ModelsConfigError(f"several default models: {', '.join(defaults)}")
        if not defaults:  # none marked: the first one listed
            models = [models[0].model_copy(update={"default": True}), *models[1:]]
        by_queue: dict[str, Model] = {}
        for model in models:
            other = by_queue.setdefault(model.queue, model)
            # A worker loads the processor of the model it serves: a queue it shares with
            # another processor would hand it batches it cannot run.
            if other.processor != model.processor:
                raise ModelsConfigError(
                    f"models {other.name!r} and {model.name!r} share queue {model.queue!r} "
                    f"but not a processor: give each its own queue")
        self._by_name = {model.name: model for model in models}
        self.default = next(model for model in models if model.default)
        # Compiled once per model and process (the table is read once per process).
        self._validators = {model.name: StrictIntegers(model.params_schema)
                            for model in models if model.params_schema is not None}
        # Whether `{}` (what most jobs carry) is valid: decided once, not on every job.
        self._empty_valid = {name: validator.is_valid({})
                             for name, validator in self._validators.items()}
        # Models whose processor this process found it cannot run (`tollgate dev` checks its
        # embedded workers' at start): name -> why, one line.
        self._unavailable: dict[str, str] = {}

    def __iter__(self) -> Iterator[Model]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str | None) -> Model:
        """The named model, or the default one for None; UnknownModel (422) otherwise."""
        if name is None:
            return self.default
        model = self._by_name.get(name)
        if model is None:
            raise UnknownModel(f"no model {name!r}; GET /models lists them",
                               models=list(self._by_name))
        return model

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Jobs for this model are refused (503 model_unavailable) and GET /models and the
        job view say why: its processor cannot run where this process runs the work."""
        self.get(name)
        self._unavailable[name] = reason

    def unavailable(self, name: str | None) -> str | None:
        """Why the named model cannot run now, or None."""
        return self._unavailable.get(name) if name is not None and self._unavailable else None

    def check_available(self, model: Model) -> None:
        reason = self.unavailable(model.name)
        if reason is not None:
            raise ModelUnavailable(reason, model=model.name)

    def public_views(self) -> list[dict[str, Any]]:
        """GET /models: each model's view, with whether its processor can run."""
        views = []
        for model in self:
            view, reason = model.public_view(), self.unavailable(model.name)
            view["available"] = reason is None
            if reason is not None:
                view["unavailable_reason"] = reason
            views.append(view)
        return views

    def queues(self) -> list[str]:
        return list(dict.fromkeys(model.queue for model in self))

    def check_params(self, model: Model, params: dict[str, Any]) -> None:
        """Params a job or rule of this model may carry: valid against the model's
        params_schema, or an empty object for a model without one; else 422 naming the
        field (`field`, and every problem in `errors`, as `params.<path>`).

        An "integer" takes only a JSON integer here, so what the job stores is what its
        processor gets: a whole float (`64.0`, which JSON Schema alone counts as an integer
        and a processor checking `isinstance(v, int)` refuses on every item) is made an int
        in `params`, in place; `64.5` is 422."""
        validator = self._validators.get(model.name)
        if validator is None:
            if params:
                name = next(iter(params))
                where = params_path((name,))
                raise BadArgument(
                    f"{where}: model {model.name!r} takes no params (it declares no "
                    f"params_schema)", field=where,
                    errors=[{"message": "not allowed: the model takes no params", "key": where,
                             "source": "body"}])
            return
        if not params and self._empty_valid[model.name]:
            return
        violations = list(validator.iter_errors(params))
        if violations and coerce_integral_floats(params, violations):
            violations = list(validator.iter_errors(params))
        if not violations:
            return
        first = best_match(violations)
        where = violation_path(first)
        raise BadArgument(f"{where}: {first.message}", field=where, errors=[
            {"message": violation.message, "key": violation_path(violation), "source": "body"}
            for violation in violations[:MAX_PARAMS_ERRORS]])


def _strict_integer(checker: Any, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 2020-12, except that "integer" is an int only (not 64.0): see check_params.
StrictIntegers: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer))


def _violations(found: Iterable[ParamsViolation]) -> Iterator[ParamsViolation]:
    """Every violation, with those under anyOf/oneOf/allOf branches (`context`)."""
    for violation in found:
        yield violation
        yield from _violations(violation.context or ())


def coerce_integral_floats(params: dict[str, Any], found: list[ParamsViolation]) -> bool:
    """Makes an int of every whole float the schema wanted as an "integer"; True if any."""
    changed = False
    for violation in _violations(found):
        wanted = violation.validator_value
        value = violation.instance
        if (violation.validator != "type" or not isinstance(value, float)
                or not value.is_integer()
                or "integer" not in (wanted if isinstance(wanted, list) else [wanted])):
            continue
        path = list(violation.absolute_path)
        if not path:
            continue
        *parents, last = path
        container: Any = params
        for part in parents:
            container = container[part]
        if container[last] == value:
            container[last] = int(value)
            changed = True
    return changed


def params_path(parts: Any) -> str:
    """`params.size`, `params.sizes[0]`: the JSON path of a value inside params."""
    path = "params"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def violation_path(violation: ParamsViolation) -> str:
    """The field a schema violation is about; for a missing or unexpected property, that
    property (jsonschema reports the object holding it)."""
    parts = list(violation.absolute_path)
    instance, required = violation.instance, violation.validator_value
    if (violation.validator == "required" and isinstance(instance, dict)
            and isinstance(required, list)):
        missing = [name for name in required if name not in instance]
        if missing:
            parts.append(missing[0])
    elif (violation.validator in ("additionalProperties", "unevaluatedProperties")
          and isinstance(instance, dict)):
        declared = violation.schema.get("properties", {}) if isinstance(violation.schema,
                                                                          dict) else {}
        extra = [name for name in instance if name not in declared]
        if extra:
            parts.append(extra[0])
    return params_path(parts)


def fallback_model(settings: Settings) -> Model:
    return Model(name=FALLBACK_MODEL, processor=settings.processor,
                 price_per_item=settings.price_per_item, queue=settings.queue_name,
                 batch_size=settings.batch_size, max_items=settings.max_items,
                 description="the version 1 processor (TOLLGATE_PROCESSOR)", default=True,
                 params_schema=THUMBNAIL_PARAMS_SCHEMA, max_item_bytes=settings.max_item_size)


def parse_models(document: dict[str, Any], settings: Settings) -> ModelTable:
    """A parsed TOML document; fields a model leaves out come from the settings."""
    tables = document.get("models")
    if not isinstance(tables, dict) or not tables:
        raise ModelsConfigError("the models file has no [models.<name>] tables")
    models = []
    for name, entry in tables.items():
        if not isinstance(entry, dict):
            raise ModelsConfigError(f"models.{name} is not a table")
        values = {"queue": name, "batch_size": settings.batch_size,
                  "max_items": settings.max_items, "max_item_bytes": settings.max_item_size,
                  **entry, "name": name}
        try:
            models.append(Model.model_validate(values))
        except ValidationError as exc:
            raise ModelsConfigError(f"models.{name}: {exc}") from exc
    return ModelTable(models)


def read_models_file(path: str, settings: Settings) -> ModelTable:
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ModelsConfigError(f"TOLLGATE_MODELS={path!r} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelsConfigError(f"TOLLGATE_MODELS={path!r} is not valid TOML: {exc}") from exc
    return parse_models(document, settings)


def load_models(settings: Settings) -> ModelTable:
    """The model table of these settings, read once per process (ModelsConfigError if bad)."""
    # Keyed by the values it depends on: Settings objects are not hashable.
    key = (settings.models, settings.processor, settings.price_per_item, settings.queue_name,
           settings.batch_size, settings.max_items, settings.max_item_size)
    table = _TABLES.get(key)
    if table is None:
        table = (ModelTable([fallback_model(settings)]) if settings.models is None
                 else read_models_file(settings.models, settings))
        _TABLES[key] = table
    return table


_TABLES: dict[tuple[Any, ...], ModelTable] = {}
