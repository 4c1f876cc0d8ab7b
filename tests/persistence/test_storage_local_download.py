"""GET /files/{key}: the answer is Litestar's own File response, byte for byte and header for
header, made with one thread call for a file sent in one piece."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from litestar import Litestar, get
from litestar.response import File
from litestar.testing import AsyncTestClient

from service.api.problems import EXCEPTION_HANDLERS
from service.storage import LocalStorage, local_file_routes
from service.storage.routes import SEND_WHOLE

BASE = "http://testserver.local"


@pytest.mark.parametrize("size", [7, SEND_WHOLE, SEND_WHOLE + 1], ids=["small", "1MiB", "large"])
async def test_a_download_answers_as_litestars_file(tmp_path: Path, size: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalStorage(tmp_path / "files", BASE, b"secret")
    key = "jobs/j/out/0"
    data = os.urandom(size)
    await local.write(key, data)
    await local.remember_content_type(key, "image/png")
    path = local.path_for(key)

    @get("/reference", include_in_schema=False)
    async def reference() -> File:  # what the route answered before it read the file itself
        return File(path, content_disposition_type="inline", media_type="image/png",
                    headers={"X-Content-Type-Options": "nosniff"})

    app = Litestar(route_handlers=[*local_file_routes(local), reference],
                   exception_handlers=EXCEPTION_HANDLERS)
    calls = 0
    run_sync = anyio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await run_sync(*args, **kwargs)

    async with AsyncTestClient(app=app, base_url=BASE) as client:
        expected = await client.get("/reference")
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
        got = await client.get(local.presign_download(key, 600).removeprefix(BASE))
        monkeypatch.undo()
    assert got.status_code == expected.status_code == 200
    assert got.content == expected.content == data
    assert dict(got.headers) == dict(expected.headers)
    if size <= SEND_WHOLE:
        assert calls == 1  # stat, kept type and bytes together


async def test_a_missing_file_is_a_404(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "files", BASE, b"secret")
    app = Litestar(route_handlers=local_file_routes(local), exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app=app, base_url=BASE) as client:
        response = await client.get(local.presign_download("jobs/j/out/9", 600).removeprefix(BASE))
    assert response.status_code == 404 and response.json()["code"] == "not_found"
