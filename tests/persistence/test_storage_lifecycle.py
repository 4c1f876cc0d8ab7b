"""How long files live, on the local folder and on S3 (moto server): inputs go when their
job is flushed, outputs TOLLGATE_RESULT_TTL after the job finished; and a local upload URL
stops working (and keeps no bytes) once its job moved on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from service.api.problems import EXCEPTION_HANDLERS
from service.contract import input_key, output_key
from service.errors import InvalidTransition
from service.flusher.loop import flush_once
from service.history.models import JobLog, utcnow
from service.state.store import Core
from service.storage import LocalStorage, S3Storage, Storage, local_file_routes
from service.storage.routes import WRITE_BUFFER
from tests.persistence.test_flusher import (
    Sessions,
    finished_job,
    new_job,
    new_user,
    settings_for,
    start,
)

pytestmark = pytest.mark.redis

DAY = 86_400


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "files", "http://testserver.local", b"secret")
        return
    s3 = S3Storage(request.getfixturevalue("s3_endpoint"), f"tg-{uuid.uuid4().hex[:12]}",
                   "us-east-1", "testing", "testing")
    s3.ensure_bucket()
    yield s3
    s3.close()


async def put(storage: Storage, *keys: str) -> None:
    for key in keys:
        await storage.write(key, b"bytes of " + key.encode())  # type: ignore[attr-defined]


async def present(storage: Storage, *keys: str) -> set[str]:
    missing = set(await storage.missing(list(keys)))
    return {key for index, key in enumerate(keys) if index not in missing}


async def test_delete_and_delete_prefix_remove_exactly_what_they_name(storage: Storage
                                                                      ) -> None:
    keys = ["jobs/a/in/0", "jobs/a/in/1", "jobs/a/out/0", "jobs/ab/in/0", "jobs/b/in/0"]
    await put(storage, *keys)
    await storage.delete(["jobs/a/in/0", "jobs/a/in/1", "jobs/a/in/9"])  # 9 was never there
    assert await present(storage, *keys) == {"jobs/a/out/0", "jobs/ab/in/0", "jobs/b/in/0"}
    assert await storage.delete_prefix("jobs/a/") == 1
    assert await present(storage, *keys) == {"jobs/ab/in/0", "jobs/b/in/0"}
    assert await storage.delete_prefix("jobs/a/") == 0
    with pytest.raises(ValueError):
        await storage.delete_prefix("jobs/b")  # not a folder: would take jobs/b* too


async def test_delete_prefix_takes_folders_of_many_pages(storage: Storage) -> None:
    if isinstance(storage, S3Storage):
        storage.list_page_size = 3
    keys = [f"jobs/many/out/{i}" for i in range(10)]
    await put(storage, *keys, "jobs/other/out/0")
    assert await storage.delete_prefix("jobs/many/") == 10
    assert await present(storage, *keys, "jobs/other/out/0") == {"jobs/other/out/0"}


async def test_flushing_a_job_deletes_its_inputs_and_its_results_expire_after_the_ttl(
    storage: Storage, core: Core, sqlite_sessions: Sessions, key_prefix: str
) -> None:
    sessions = sqlite_sessions
    await new_user(core, "ann")
    done = await finished_job(core, "ann", (True, True))
    canceled = await new_job(core, "ann", total=2)
    await core.cancel(canceled, "ann", reason="user", flush_delay_ms=0)
    live = await new_job(core, "ann", total=1)
    await start(core, live, "ann")
    done_inputs = [input_key(done, i) for i in range(2)]
    done_outputs = [output_key(done, i) for i in range(2)]
    await put(storage, *done_inputs, *done_outputs, input_key(canceled, 0), input_key(live, 0))
    settings = settings_for(key_prefix)

    stats = await flush_once(core, sessions, settings, storage=storage)
    assert (stats.flushed_jobs, stats.results_expired) == (2, 0)
    everything = [*done_inputs, *done_outputs, input_key(canceled, 0), input_key(live, 0)]
    assert await present(storage, *everything) == {*done_outputs, input_key(live, 0)}

    # A late PUT of an input (S3 takes one while its URL is valid) goes with the results.
    await put(storage, done_inputs[0])
    async with sessions() as session, session.begin():
        await session.execute(update(JobLog).where(JobLog.id == done).values(
            finished_at=utcnow() - timedelta(seconds=settings.result_ttl + 60)))
    stats = await flush_once(core, sessions, settings, storage=storage)
    assert stats.results_expired == 1
    assert await present(storage, *everything) == {input_key(live, 0)}
    async with sessions() as session:
        expired = await session.get(JobLog, done)
        kept = await session.get(JobLog, canceled)
    assert expired is not None and expired.results_deleted_at is not None
    assert kept is not None and kept.results_deleted_at is None
    assert (await flush_once(core, sessions, settings, storage=storage)).results_expired == 0


async def test_a_flush_without_storage_keeps_every_file(
    core: Core, sqlite_sessions: Sessions, key_prefix: str, tmp_path: Path
) -> None:
    local = LocalStorage(tmp_path / "files", "http://testserver.local", b"secret")
    await new_user(core, "ann")
    done = await finished_job(core, "ann", (True,))
    await put(local, input_key(done, 0))
    await flush_once(core, sqlite_sessions, settings_for(key_prefix))
    assert await present(local, input_key(done, 0)) == {input_key(done, 0)}


@pytest.mark.parametrize("size", [100, WRITE_BUFFER + 1], ids=["small", "large"])
async def test_an_upload_refused_once_its_bytes_are_in_keeps_nothing(
        tmp_path: Path, size: int) -> None:
    """The job moved on while the body streamed in: the bytes are dropped, not kept. A small
    declared body is checked once, after its bytes are in; a large (or undeclared) one is
    checked before the bytes too, then again after them."""
    local = LocalStorage(tmp_path / "files", "http://testserver.local", b"secret")
    checks: list[bool] = []  # per check: were the bytes in (a temporary file written)?

    async def refuses_once_the_bytes_are_in(_: Request[Any, Any, Any], key: str) -> None:
        assert key == "jobs/j/in/0"
        bytes_in = any(local.root.rglob("*.part"))
        checks.append(bytes_in)
        if bytes_in:
            raise InvalidTransition("uploads are closed: the job is canceled",
                                    job_status="canceled")

    app = Litestar(
        route_handlers=local_file_routes(local, check_upload=refuses_once_the_bytes_are_in),
        exception_handlers=EXCEPTION_HANDLERS)
    upload = local.presign_upload("jobs/j/in/0", "image/png", size, 600)
    path = upload.url.removeprefix("http://testserver.local")

    async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
        response = await client.put(path, content=b"x" * size,
                                    headers=upload.headers)
    assert response.status_code == 409 and response.json()["code"] == "invalid_transition"
    assert checks == ([True] if size <= WRITE_BUFFER else [False, True])
    assert [p for p in local.root.rglob("*") if p.is_file()] == []


def test_the_default_result_ttl_is_seven_days() -> None:
    assert settings_for("x").result_ttl == 7 * DAY
