"""The published contract: refusals documented from service.errors, one bearer scheme, and a
docs page whose assets come from an installed, pinned package (never a CDN)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import openapi_ui_bundles.swagger_ui
from litestar.config.app import AppConfig
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, Example, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router

from service.api.problems import PROBLEM_JSON
from service.api.schemas import Problem
from service.errors import (
    BadArgument,
    MalformedJson,
    RequestTimeout,
    TollgateError,
    Unauthorized,
    Unavailable,
)

DOCS_ASSETS = "/schema/assets"
BEARER: dict[str, list[str]] = {"bearer": []}

# Any operation may answer these: a request it cannot read, and a store that is restarting.
_ALWAYS: tuple[type[TollgateError], ...] = (TollgateError, Unavailable)


def refusals(*errors: type[TollgateError], user: bool = True, json_body: bool = False
             ) -> dict[int, ResponseSpec]:
    """The `responses` of one operation: its refusals as problem documents, one entry per
    status, listing each code with its title and an example."""
    listed = list(errors) + list(_ALWAYS)
    if user:
        listed.append(Unauthorized)
    if json_body:  # a body that is not JSON, not valid, or not sent in time (connections.py)
        listed += [MalformedJson, BadArgument, RequestTimeout]
    by_status: dict[int, list[type[TollgateError]]] = defaultdict(list)
    for error in listed:
        if error not in by_status[error.status]:
            by_status[error.status].append(error)
    return {status: _spec(status, group) for status, group in sorted(by_status.items())}


def _spec(status: int, group: list[type[TollgateError]]) -> ResponseSpec:
    description = "; ".join(f"`{error.code}`: {error.title}" for error in group)
    examples = [Example(summary=error.code, value={
        "type": f"https://tollgate.dev/problems/{error.code}", "title": error.title,
        "status": status, "code": error.code}) for error in group]
    return ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, description=description,
                        examples=examples, generate_examples=False)


def documented_codes(responses: dict[int, ResponseSpec]) -> set[str]:
    return {str(example.value["code"]) for spec in responses.values()
            for example in spec.examples or [] if isinstance(example.value, dict)}


class LocalSwagger(SwaggerRenderPlugin):
    """Swagger UI from the openapi-ui-bundles package, served by this API itself."""

    def __init__(self) -> None:
        super().__init__(js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                         css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                         standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                         path="/",
                         favicon=f'<link rel="icon" href="{DOCS_ASSETS}/favicon-32x32.png">')


def docs_assets() -> Router:
    return create_static_files_router(
        path=DOCS_ASSETS, directories=[openapi_ui_bundles.swagger_ui.static_path],
        include_in_schema=False, opt={"exclude_from_auth": True})


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="tollgate", version=version, path="/schema",
        description="A credit-metered GPU job gateway. Every refusal is an RFC 9457 problem "
                    "document (application/problem+json) with a stable `code`.",
        render_plugins=[LocalSwagger()],
        components=Components(security_schemes={"bearer": SecurityScheme(
            type="http", scheme="bearer", bearer_format="JWT",
            description="A JWT: `sub` is the user id; `role: admin` for the admin calls.")}),
        security=[BEARER],
    )


def one_bearer_scheme(app_config: AppConfig) -> AppConfig:
    """Runs after JWTAuth.on_app_init, which adds its own `BearerToken` scheme with a `name`
    (invalid in OpenAPI 3.1 next to `scheme`): keep only the scheme openapi_config declares."""
    config = app_config.openapi_config
    if config is not None and isinstance(config.components, list):
        ours: list[Any] = [c for c in config.components
                           if "BearerToken" not in (c.security_schemes or {})]
        config.components = ours
        config.security = [BEARER]
    return app_config
