"""Runs the flusher once against the API's services, for tests that read history."""

from __future__ import annotations

from service.flusher.loop import flush_once
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api


async def flush_everything(api: Api) -> None:
    rt = await open_runtime(api.settings, SECRET)
    try:
        await flush_once(rt.core, rt.sessions, api.settings)
    finally:
        await rt.close()
