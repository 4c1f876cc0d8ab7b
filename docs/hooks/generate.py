"""mkdocs hook: the pages that are generated at build time, never kept by hand.

- `<!-- generated:openapi -->` (reference.md): every operation and schema of the OpenAPI
  document that the app itself builds (service.api.app.create_app), as Markdown tables.
- `<!-- generated:settings -->` (configuration.md): every field of service.settings.Settings
  by group, its variable, meaning, type and default, as `setting(...)` declares them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """One table per group of service.settings (GROUPS), each setting with its variable,
    meaning, type (a duration says so: it takes `30s`, `5m`, `2h`, `7d`) and default."""
    from service.settings import GROUPS, Settings, group_of, parse_duration

    by_group: dict[str, list[str]] = {group: [] for group in GROUPS}
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name!r} has no meaning: declare it with setting(...)")
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation)
        annotation = annotation.replace("typing.", "").replace("NoneType", "None")
        if any(getattr(meta, "func", None) is parse_duration for meta in field.metadata):
            annotation = "duration" + (" (whole seconds)" if annotation == "int" else "")
        default = "unset" if field.default is None else f"`{field.default!r}`"
        bounds = [f"{kind} {getattr(meta, kind)}" for meta in field.metadata
                  for kind in ("ge", "gt", "le", "lt") if getattr(meta, kind, None) is not None]
        kind = annotation + (f" ({', '.join(bounds)})" if bounds else "")
        by_group[group_of(name)].append(
            f"| `TOLLGATE_{name.upper()}` | {_cell(field.description)} | {_cell(kind)} | "
            f"{_cell(default)} |")
    out: list[str] = []
    for group, rows in by_group.items():
        if rows:
            out += [f"### {group}", "", "| variable | meaning | type | default |",
                    "|---|---|---|---|", *rows, ""]
    return "\n".join(out).rstrip()


def openapi_document() -> dict[str, Any]:
    from service.api.app import create_app
    from service.settings import Settings

    # Building the app opens nothing (its lifespan does): any secret makes the document.
    app = create_app(Settings(jwt_secret="docs-build-" + "x" * 32))
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_type(option) for option in schema[key])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _bounds(schema: dict[str, Any]) -> str:
    keys = ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern",
            "format", "default")
    found = [f"{key} `{schema[key]}`" for key in keys if key in schema]
    for key in ("oneOf", "anyOf"):
        for option in schema.get(key, []):
            found += [f"{k} `{option[k]}`" for k in keys if k in option]
    return ", ".join(found)


def openapi_markdown(document: dict[str, Any]) -> str:
    out: list[str] = [f"OpenAPI {document['openapi']}, API version "
                      f"{document['info']['version']}: every operation the API serves, "
                      f"built from the app when these pages were built."]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method in ("get", "post", "put", "patch", "delete", "head"):
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((method.upper(), path, operation))
    for tag, operations in by_tag.items():
        out.append(f"\n## {tag}\n")
        for method, path, operation in operations:
            out.append(f"### `{method} {path}`\n")
            summary = operation.get("summary", "")
            description = operation.get("description", "")
            out.append(" ".join(part for part in (summary + ".", description) if part.strip(".")))
            out.append("")
            parameters = operation.get("parameters", [])
            if parameters:
                out += ["| parameter | in | type | required | bounds |", "|---|---|---|---|---|"]
                for parameter in parameters:
                    schema = parameter.get("schema", {})
                    out.append(f"| `{parameter['name']}` | {parameter['in']} | "
                               f"{_cell(_type(schema))} | "
                               f"{'yes' if parameter.get('required') else 'no'} | "
                               f"{_cell(_bounds(schema))} |")
                out.append("")
            body = operation.get("requestBody")
            if body:
                for media, content in body.get("content", {}).items():
                    out.append(f"Body ({media}): {_type(content.get('schema', {}))}\n")
            out += ["| status | answer |", "|---|---|"]
            for status, response in operation.get("responses", {}).items():
                contents = response.get("content", {})
                shapes = ", ".join(f"{_type(c.get('schema', {}))} ({media})"
                                   for media, c in contents.items())
                text = response.get("description", "")
                out.append(f"| {status} | {_cell(text)}{': ' + _cell(shapes) if shapes else ''} |")
            out.append("")
    out.append("\n## Schemas\n")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        out.append(f"### {name}\n")
        if schema.get("description"):
            out.append(schema["description"] + "\n")
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        if properties:
            out += ["| field | type | required | bounds |", "|---|---|---|---|"]
            for field, spec in properties.items():
                out.append(f"| `{field}` | {_cell(_type(spec))} | "
                           f"{'yes' if field in required else 'no'} | {_cell(_bounds(spec))} |")
        else:
            out.append(f"{_cell(_type(schema))}")
        out.append("")
    return "\n".join(out)


_CACHE: dict[str, str] = {}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated:openapi -->" in markdown:
        if "openapi" not in _CACHE:
            _CACHE["openapi"] = openapi_markdown(openapi_document())
        markdown = markdown.replace("<!-- generated:openapi -->", _CACHE["openapi"])
    if "<!-- generated:settings -->" in markdown:
        markdown = markdown.replace("<!-- generated:settings -->", settings_table())
    return markdown


def on_post_build(config: Any) -> None:
    """The document itself beside the pages, for tools (no JavaScript renders it)."""
    target = Path(config["site_dir"]) / "openapi.json"
    target.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True))


_ = re  # kept for readers extending the hook with patterns
