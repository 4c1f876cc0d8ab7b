"""What a command checks and makes before it starts its process: the public URL, a
secret, Redis within reach, a processor that loads. Shared by the commands of
service.cli.main and `tollgate dev` (service.cli.dev)."""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any

from service.settings import Settings


def default_public_url(host: str, port: int) -> str:
    """The URL clients are handed when TOLLGATE_PUBLIC_URL is unset: the server's own address
    (a wildcard address is reached on the loopback one)."""
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in reach:  # an IPv6 literal
        reach = f"[{reach}]"
    return f"http://{reach}:{port}"


def redis_or_exit(settings: Settings) -> None:
    """One PING to each configured Redis; an unreachable one ends the command with one line
    (not a traceback from deep inside the first request)."""
    from service.state.clients import queue_redis, state_redis

    async def ping_state() -> None:
        client = state_redis(settings)
        try:
            await asyncio.wait_for(client.ping(), 5)
        finally:
            await client.aclose()

    checks: list[tuple[str, str, Any]] = []
    if settings.redis_url is not None:
        checks.append(("TOLLGATE_REDIS_URL", settings.redis_url,
                       lambda: asyncio.run(ping_state())))
    queue_url = settings.queue_redis_url
    if queue_url is not None and queue_url != settings.redis_url:
        checks.append(("TOLLGATE_QUEUE_REDIS_URL", queue_url,
                       lambda: queue_redis(settings).ping()))
    for variable, url, ping in checks:
        try:
            ping()
        except Exception as exc:  # any failure to connect ends the start the same way
            where = url.rsplit("@", 1)[-1]  # never print a password
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            sys.exit(f"cannot reach Redis at {where} ({variable}): {reason}; start it, or "
                     f"fix {variable} (unset, `tollgate dev` runs an embedded one)")


def processor_problem(model_name: str, spec: str, *, setup: bool) -> str | None:
    """Why a model's processor cannot run in this process (its module or one it imports is
    missing, or its setup() fails to import something), as one line; None when it loads."""
    from workers.jobs import preload

    try:
        preload(spec, setup=setup)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if missing.split(".")[0] == "torch":
            return (f"model {model_name!r}: processor {spec} needs torch, which is not "
                    f"installed: pip install -e '.[gpu]' (the gpu extra)")
        module = spec.partition(":")[0]
        if missing == module or module.startswith(missing + "."):
            return (f"model {model_name!r}: processor module {module!r} cannot be imported "
                    f"(No module named {missing!r}): put the folder that holds it on "
                    f"PYTHONPATH (e.g. PYTHONPATH=.), or install its package")
        return (f"model {model_name!r}: processor {spec} imports {missing!r}, which is not "
                f"installed: install the package that provides it")
    except (AttributeError, TypeError, ValueError) as exc:  # a bad `module:name`
        return f"model {model_name!r}: processor {spec!r} cannot be loaded: {exc}"
    return None


def generated_secret() -> str:
    return secrets.token_urlsafe(32)
