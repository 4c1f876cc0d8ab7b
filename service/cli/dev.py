"""`tollgate dev`: the API, a worker and the flusher in one process.

With no services named in the environment it runs on the embedded defaults: fakeredis with
Lua in this process, SQLite, a local folder. A forking RQ worker cannot share in-process
fakeredis, so the worker is a SimpleWorker loop in a thread.
"""

from __future__ import annotations

import asyncio
import os
import threading

import uvicorn

from service.api.app import create_app
from service.api.auth import issue_token
from service.api.webhook_log import webhook_job_view
from service.cli.main import generated_secret
from service.cli.serve import uvicorn_options
from service.history.engine import run_migrations
from service.settings import Settings
from service.sweeper import run_flusher_with_requeue


def _describe(settings: Settings) -> list[str]:
    return [
        "state:   " + ("embedded fakeredis (in this process; gone when it stops)"
                       if settings.embedded_redis else settings.redis_url or ""),
        "history: " + settings.database_url.split("@")[-1],
        "storage: " + (f"local folder {os.path.abspath(settings.storage_dir)}"
                       if settings.embedded_storage else f"S3 {settings.s3_endpoint}"),
    ]


def run_dev(*, host: str, port: int) -> int:
    overrides: dict[str, object] = {}
    if not os.environ.get("TOLLGATE_JWT_SECRET"):
        overrides["jwt_secret"] = generated_secret()
    if not os.environ.get("TOLLGATE_PUBLIC_URL"):
        overrides["public_url"] = f"http://{host}:{port}"
    settings = Settings(**overrides)  # type: ignore[arg-type]
    assert settings.jwt_secret
    run_migrations(settings.database_url)

    from service.models import load_models
    from service.state.clients import queue_redis
    from workers.runner import start_embedded_worker_thread

    # A worker thread per model queue, each with its model's processor.
    served = {model.queue: model.processor for model in load_models(settings)}
    workers = [start_embedded_worker_thread(settings, queue_redis(settings), queue, processor)
               for queue, processor in served.items()]
    # A daemon thread: it ends with the process (every flusher step is safe to cut short).
    flusher = threading.Thread(
        target=lambda: asyncio.run(run_flusher_with_requeue(settings, once=False,
                                                            job_view=webhook_job_view)),
        name="tollgate-flusher", daemon=True)
    flusher.start()

    token = issue_token(settings.jwt_secret, "dev-user", ttl_s=7 * 86400)
    admin = issue_token(settings.jwt_secret, "dev-admin", admin=True, ttl_s=7 * 86400)
    lines = [
        "tollgate dev: API + worker + flusher in one process",
        *("  " + line for line in _describe(settings)),
        f"  API:     {settings.public_url}   (OpenAPI: {settings.public_url}/schema)",
        f"  secret:  TOLLGATE_JWT_SECRET={settings.jwt_secret}",
        f"  token:   {token}",
        f"  admin:   {admin}",
        "next, in another shell:",
        f"  curl -s -H 'Authorization: Bearer {token}' {settings.public_url}/me",
        f"  tollgate demo --url {settings.public_url} --token {token}",
    ]
    print("\n".join(lines), flush=True)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                    **uvicorn_options(settings))
    finally:
        for worker in workers:
            worker.stop()
    return 0
