"""mkdocs hook: the pages that are generated at build time, never kept by hand.

- `<!-- generated:openapi -->` (reference.md): every operation and schema of the OpenAPI
  document that the app itself builds (service.api.app.create_app), as Markdown tables.
- `<!-- generated:settings -->` (configuration.md): every field of service.settings.Settings,
  its variable, type and default, with its meaning from the comment above it in
  service/settings.py or, for a field without one, from MEANINGS below.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Meanings of the settings that service/settings.py does not comment.
MEANINGS = {
    "redis_url": "state Redis; `redis+cluster://host:port` for Redis Cluster (unset: an "
                 "embedded fakeredis in the process, `tollgate dev` only)",
    "queue_redis_url": "RQ's Redis (standalone; unset: the state Redis)",
    "database_url": "SQL history, users, rules, ledger",
    "public_url": "base URL clients reach the API on (job links, local-folder URLs handed to "
                  "clients); `tollgate api` and `tollgate dev` default it to their "
                  "`--host`/`--port`",
    "jwt_secret": "HS256 secret for user/admin tokens (also keys callback tokens and local "
                  "URLs); `tollgate dev` makes one and prints it",
    "jwt_public_key": "RS256 public key (PEM) to verify user tokens instead",
    "signup_credits": "credits of a newly provisioned user",
    "storage_dir": "local-folder storage",
    "s3_endpoint": "S3 storage instead of the local folder: the endpoint as the API and the "
                   "workers reach it",
    "s3_bucket": "S3 bucket", "s3_region": "S3 region", "s3_access_key": "S3 access key",
    "s3_secret_key": "S3 secret key",
    "processor": "`module:function` run by workers on each batch (the one model without "
                 "`TOLLGATE_MODELS`)",
    "hold_ttl": "seconds a created/uploaded job may wait before its hold expires",
    "max_items": "items per job", "key_prefix": "Redis key prefix",
    "price_per_item": "credits per item (the one model without `TOLLGATE_MODELS`)",
    "lease_ttl": "seconds a running job's lease lasts without a heartbeat",
    "flush_delay": "seconds a finished job stays in Redis before the flush",
    "queue_name": "RQ queue (the one model without `TOLLGATE_MODELS`)",
    "batch_size": "items per RQ job",
    "requeue_after": "seconds before a queued job nobody started is enqueued again",
    "upload_url_ttl": "seconds an upload URL stays valid",
    "result_url_ttl": "seconds a result download URL stays valid",
    "idempotency_ttl": "seconds an `Idempotency-Key` of POST /jobs is remembered",
    "max_body_bytes": "largest API request body",
    "max_item_size": "largest item (bytes) a job may declare, for a model that sets no "
                     "`max_item_bytes`",
    "flush_batch": "jobs per bucket per flusher round (a bucket that fills a round is taken "
                   "again at once, up to 25 rounds a pass)",
    "flusher_interval": "seconds between flusher passes",
    "redis_max_connections": "state Redis connection pool size per process",
    "redis_autopipeline": "send the scripts concurrent requests issue in one event-loop turn "
                          "as one pipeline (standalone Redis only)",
    "webhook_timeout": "seconds a receiver has to answer a delivery before it counts as "
                       "failed",
    "webhook_log_ttl": "seconds a job's delivery log is kept after its last delivery ended",
    "internal_url": "base URL workers reach the API on (callback URLs, local-folder URLs "
                    "handed to workers); unset: `TOLLGATE_PUBLIC_URL`",
    "s3_public_endpoint": "S3 as clients reach it: upload and result URLs handed to clients "
                          "are signed for it; unset: `TOLLGATE_S3_ENDPOINT`",
    "models": "path of a TOML file of models ([Models and processors](models.md)); unset: "
              "one model, `thumbnail`, from `TOLLGATE_PROCESSOR`, `_PRICE_PER_ITEM`, "
              "`_QUEUE_NAME`, `_BATCH_SIZE`, `_MAX_ITEMS`",
    "buckets": "hash-slot buckets, fixed for the life of the data (`tollgate rebucket` moves "
               "it: [Operations](operations.md#changing-tollgate_buckets))",
    "result_ttl": "seconds a finished job's outputs are kept; then the flusher deletes its "
                  "files and the job view shows `result_expired: true` (inputs go when the "
                  "job is flushed)",
    "body_read_timeout": "seconds a request body may take to arrive, else 408 "
                         "`request_timeout`",
    "keepalive_timeout": "seconds an idle keep-alive connection stays open (granian, uvicorn)",
    "flush_attempts": "tries of a record SQL refuses before it is set aside in "
                      "`flush_failures` (`tollgate inspect failures`)",
    "flush_retry_delay": "seconds before the first retry of a refused record (doubling, at "
                         "most 1 h)",
    "webhook_allow_private": "allow webhook URLs that resolve to private, loopback or "
                             "link-local addresses (local testing, a private network)",
    "events_poll_interval": "seconds between two reads of the change counters of open event "
                            "streams",
}


def _comments(source: str) -> dict[str, str]:
    """The comment block right above each `name: type = ...` line of the Settings class."""
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    # The comment block above it, across the fields it also covers (a
                    # block over two fields with no blank line between them).
                    block: list[str] = []
                    index = item.lineno - 2
                    while index >= 0 and lines[index].strip() and not block:
                        while index >= 0 and lines[index].strip().startswith("#"):
                            block.insert(0, lines[index].strip().lstrip("#").strip())
                            index -= 1
                        if not block:
                            index -= 1  # a field line of the same block
                    if block:
                        found[item.target.id] = " ".join(block)
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    from service.settings import Settings

    comments = _comments((ROOT / "service" / "settings.py").read_text())
    rows = ["| variable | meaning | type | default |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = MEANINGS.get(name) or comments.get(name)
        if not meaning:
            raise ValueError(f"setting {name!r} has no meaning: comment it in "
                             f"service/settings.py or add it to docs/hooks MEANINGS")
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation)
        annotation = annotation.replace("typing.", "").replace("NoneType", "None")
        default = "unset" if field.default is None else f"`{field.default!r}`"
        bounds = [f"{kind} {getattr(meta, kind)}" for meta in field.metadata
                  for kind in ("ge", "gt", "le", "lt") if getattr(meta, kind, None) is not None]
        kind = annotation + (f" ({', '.join(bounds)})" if bounds else "")
        rows.append(f"| `TOLLGATE_{name.upper()}` | {_cell(meaning)} | {_cell(kind)} | "
                    f"{_cell(default)} |")
    return "\n".join(rows)


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
