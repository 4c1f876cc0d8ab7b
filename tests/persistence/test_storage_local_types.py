"""Local-folder downloads keep the Content-Type their upload came with (a processor's
image/png on an extension-less output key), and still never serve active content inline."""

from __future__ import annotations

import os

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


async def test_a_type_kept_beside_the_file_still_serves_and_a_new_upload_drops_it(
    storage: LocalStorage, client: AsyncTestClient[Litestar],
) -> None:
    """Files kept before the type moved onto the file itself (or on a file system without
    user attributes) have it in a hidden file beside them: still read, and forgotten by
    the next upload of the key."""
    await storage.write("jobs/j1/out/0", b"old")
    path = storage.path_for("jobs/j1/out/0")
    beside = path.parent / ".0.content-type"
    beside.write_text("image/png")
    assert await storage.content_type_of("jobs/j1/out/0") == "image/png"
    got = await client.get(path_of(storage.presign_download("jobs/j1/out/0", 600)))
    assert got.headers["content-type"] == "image/png"
    upload = storage.presign_upload("jobs/j1/out/0", None, 64, 600)
    await client.put(path_of(upload.url), content=b"new", headers={"Content-Type": "image/gif"})
    assert not beside.exists()
    assert await storage.content_type_of("jobs/j1/out/0") == "image/gif"


async def test_without_user_attributes_the_type_is_kept_beside_the_file(
    storage: LocalStorage, client: AsyncTestClient[Litestar], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unsupported(*args: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    monkeypatch.setattr(os, "getxattr", unsupported)
    monkeypatch.setattr(os, "removexattr", unsupported)
    upload = storage.presign_upload("jobs/j1/out/0", None, 64, 600)
    await client.put(path_of(upload.url), content=b"1", headers={"Content-Type": "image/png"})
    beside = storage.path_for("jobs/j1/out/0").parent / ".0.content-type"
    assert beside.read_text() == "image/png"
    got = await client.get(path_of(storage.presign_download("jobs/j1/out/0", 600)))
    assert got.headers["content-type"] == "image/png"
    await client.put(path_of(upload.url), content=b"2")
    assert not beside.exists()
    assert await storage.content_type_of("jobs/j1/out/0") is None
