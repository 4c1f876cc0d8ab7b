"""The Litestar application: `create_app()` wires settings, auth, routes and the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware

from service.api.auth import make_jwt_auth
from service.api.client_cap import client_cap_middleware
from service.api.connections import body_deadline_middleware, vouch
from service.api.metrics import MetricsController, metrics_middleware
from service.api.openapi import docs_assets, one_bearer_scheme, openapi_config
from service.api.problems import EXCEPTION_HANDLERS
from service.api.ratelimit import (
    RateLimited,
    load_rate_limits,
    rate_limit_middleware,
    rate_limited,
)
from service.api.requests import TollgateRequest
from service.api.responses import JsonResponse
from service.api.routes.admin import AdminController
from service.api.routes.alerts import AccountWebhookController, AlertsController
from service.api.routes.callbacks import job_callback
from service.api.routes.deps import DEPENDENCIES
from service.api.routes.health import health, ready
from service.api.routes.jobs import JobsController
from service.api.routes.keys import AdminKeysController, KeysController
from service.api.routes.me import get_me
from service.api.routes.models import list_models
from service.api.routes.rules import RulesController
from service.api.routes.usage import USAGE_HANDLERS
from service.api.routes.webhooks import WEBHOOK_HANDLERS
from service.api.uploads import check_upload
from service.logs import DATE_FORMAT, FORMAT, install_redaction
from service.models import load_models
from service.runtime import open_runtime, storage_secret
from service.settings import Settings, get_settings
from service.storage import LocalStorage, local_file_routes, make_storage

log = logging.getLogger("tollgate")


class MissingSecret(RuntimeError):
    """Raised at start-up: without a secret no token could be checked."""


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    install_redaction()  # signed URLs stay out of every log line of this process
    secret = settings.jwt_secret
    if not secret and not settings.jwt_public_key:
        raise MissingSecret(
            "TOLLGATE_JWT_SECRET is not set: set it, or use `tollgate dev`, which makes one"
        )
    secret = secret or ""
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, secret, local_storage)
        app.state.runtime = runtime
        log.info("tollgate ready: redis=%s database=%s storage=%s",
                 "embedded fakeredis" if settings.embedded_redis else "external",
                 settings.database_url.split("@")[-1],
                 "local folder" if settings.embedded_storage else "S3")
        try:
            yield
        finally:
            await runtime.close()

    jwt_auth = make_jwt_auth(settings, secret)
    # A bad TOLLGATE_RATE_LIMITS file stops the start, like a bad models file.
    middleware: list[Any] = [DefineMiddleware(
        client_cap_middleware, max_in_flight=settings.client_max_in_flight),
        metrics_middleware, DefineMiddleware(
        body_deadline_middleware, timeout_s=settings.body_read_timeout)]
    if settings.rate_limits_enabled:
        # After the JWT middleware (Litestar puts it first), which tells the user.
        middleware.append(DefineMiddleware(rate_limit_middleware,
                                           limits=load_rate_limits(settings.rate_limits)))
    load_models(settings)  # a bad TOLLGATE_MODELS file stops the start, not a request
    handlers: list[Any] = [get_me, list_models, RulesController, JobsController, job_callback,
                           AdminController, health, ready, MetricsController, docs_assets(),
                           *WEBHOOK_HANDLERS, *USAGE_HANDLERS, KeysController,
                           AdminKeysController, AccountWebhookController, AlertsController]
    # Local-folder storage serves its own signed upload/download URLs; the runtime shares
    # it. S3 storage is built by the lifespan, where its client can be closed.
    local_storage = make_storage(settings, storage_secret(secret)) \
        if settings.embedded_storage else None
    if isinstance(local_storage, LocalStorage):
        handlers.extend(local_file_routes(local_storage, check_upload=check_upload,
                                          signed=vouch))

    return Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies=DEPENDENCIES,
        exception_handlers={**EXCEPTION_HANDLERS, RateLimited: rate_limited},
        on_app_init=[jwt_auth.on_app_init, one_bearer_scheme],
        middleware=middleware,
        request_class=TollgateRequest,
        response_class=JsonResponse,
        # Litestar's own lines in the console's one format; the root logger stays the one
        # `tollgate` set up (service.logs), not replaced by Litestar's.
        logging_config=LoggingConfig(
            configure_root_logger=False,
            formatters={"standard": {"format": FORMAT, "datefmt": DATE_FORMAT}}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(version="0.1.0"),
        debug=False,
    )
