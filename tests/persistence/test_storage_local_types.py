"""Local-folder downloads keep the Content-Type their upload came with (a processor's
image/png on an extension-less output key), and still never serve active content inline."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.storage import LocalStorage
from service.storage.routes import kept_type
from tests.persistence.test_storage_local import client, path_of, storage

__all__ = ["client", "storage"]


@pytest.mark.parametrize(("uploaded_as", "served_as"), [
    ("image/png", "image/png"), ("image/webp", "image/webp"),
    ("application/json", "application/json"),
    ("text/html", "application/octet-stream"), ("image/svg+xml", "application/octet-stream"),
    ("application/xhtml+xml", "application/octet-stream"),
    ("text/html\r\nX-Evil: 1", "application/octet-stream"),
    (None, "application/octet-stream"),
])
async def test_an_output_is_served_with_the_type_it_was_uploaded_with(
    storage: LocalStorage, client: AsyncTestClient[Litestar],
    uploaded_as: str | None, served_as: str,
) -> None:
    upload = storage.presign_upload("jobs/j1/out/0", None, 64, 600)  # what a worker gets
    headers = {} if uploaded_as is None else {"Content-Type": uploaded_as}
    if uploaded_as and "\r" in uploaded_as:
        assert kept_type(uploaded_as) is None  # httpx would refuse to send it
        headers = {"Content-Type": "text/html; x=\"1\""}
    response = await client.put(path_of(upload.url), content=b"\x89PNG....", headers=headers)
    assert response.status_code == 200, response.text
    got = await client.get(path_of(storage.presign_download("jobs/j1/out/0", 600)))
    assert got.status_code == 200 and got.content == b"\x89PNG...."
    assert got.headers["content-type"].split(";")[0] == served_as
    assert got.headers["x-content-type-options"] == "nosniff"


async def test_a_new_upload_replaces_the_kept_type_and_delete_drops_it(
    storage: LocalStorage, client: AsyncTestClient[Litestar],
) -> None:
    upload = storage.presign_upload("jobs/j1/out/0", None, 64, 600)
    await client.put(path_of(upload.url), content=b"1", headers={"Content-Type": "image/png"})
    assert await storage.content_type_of("jobs/j1/out/0") == "image/png"
    await client.put(path_of(upload.url), content=b"2")
    assert await storage.content_type_of("jobs/j1/out/0") is None
    await client.put(path_of(upload.url), content=b"3", headers={"Content-Type": "image/gif"})
    await storage.delete(["jobs/j1/out/0"])
    assert await storage.content_type_of("jobs/j1/out/0") is None
    assert not storage.path_for("jobs/j1/out").exists()  # the emptied folder went too
