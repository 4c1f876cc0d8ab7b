"""The local-folder storage: its signed URLs, its refusal of unsafe keys, and its HTTP routes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.api.problems import EXCEPTION_HANDLERS
from service.settings import Settings
from service.storage import LocalStorage, S3Storage, local_file_routes, make_storage
from service.storage.local import TYPE_XATTR

SECRET = b"local-storage-test-secret"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files", "http://testserver.local", SECRET)


@pytest.fixture
async def client(storage: LocalStorage) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = Litestar(route_handlers=local_file_routes(storage), exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as test_client:
        yield test_client


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_signature_binds_key_method_expiry_size_and_type(storage: LocalStorage) -> None:
    upload = storage.presign_upload("jobs/j1/in/0", "image/png", 100, 600)
    q = query_of(upload.url)
    exp, sig = int(q["exp"]), q["sig"]
    assert q["m"] == "PUT" and q["max"] == "100"
    assert upload.headers == {"Content-Type": "image/png"}
    assert storage.verify("jobs/j1/in/0", "PUT", exp, sig, max_size=100, content_type="image/png")
    assert not storage.verify("jobs/j1/in/1", "PUT", exp, sig, max_size=100,
                              content_type="image/png")
    assert not storage.verify("jobs/j1/in/0", "GET", exp, sig)
    assert not storage.verify("jobs/j1/in/0", "PUT", exp + 1, sig, max_size=100,
                              content_type="image/png")
    assert not storage.verify("jobs/j1/in/0", "PUT", exp, sig, max_size=10**9,
                              content_type="image/png")
    assert not storage.verify("jobs/j1/in/0", "PUT", exp, sig, max_size=100,
                              content_type="text/html")
    other = LocalStorage(storage.root, storage.public_url, b"another secret")
    assert not other.verify("jobs/j1/in/0", "PUT", exp, sig, max_size=100,
                            content_type="image/png")


def test_expired_urls_do_not_verify(storage: LocalStorage) -> None:
    url = storage.presign_download("a/b", 600)
    q = query_of(url)
    past = int(time.time()) - 1
    resigned = storage._sign("a/b", "GET", past, "", "")
    assert storage.verify("a/b", "GET", int(q["exp"]), q["sig"])
    assert not storage.verify("a/b", "GET", past, resigned)


@pytest.mark.parametrize(
    "key", ["", "../etc/passwd", "a/../../b", "/abs", "a//b", "a/./b", "a\\b", "a\x00b", "a/",
            "x" * 2000],
)
def test_unsafe_keys_are_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.path_for(key)


def test_symlink_out_of_the_root_is_refused(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        storage.path_for("link/secret")


async def test_upload_then_download_over_http(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    body = b"\x89PNG fake image bytes" * 100
    upload = storage.presign_upload("jobs/j1/in/0", "image/png", len(body), 600)
    response = await client.put(path_of(upload.url), content=body, headers=upload.headers)
    assert response.status_code == 200, response.text
    assert await storage.read("jobs/j1/in/0") == body
    # No temporary file left; the upload's Content-Type is kept on the file itself.
    assert sorted(p.name for p in storage.path_for("jobs/j1/in/0").parent.iterdir()) == ["0"]
    assert os.getxattr(storage.path_for("jobs/j1/in/0"), TYPE_XATTR) == b"image/png"

    response = await client.get(path_of(storage.presign_download("jobs/j1/in/0", 600)))
    assert response.status_code == 200
    assert response.content == body


async def test_bad_or_tampered_signatures_get_403_problem(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    upload = storage.presign_upload("jobs/j1/in/0", "image/png", 10, 600)
    q = query_of(upload.url)
    attempts = [
        (path_of(upload.url), {"Content-Type": "text/html"}, 403),  # another content type
        (f"/files/jobs/j1/in/1?m=PUT&exp={q['exp']}&max=10&sig={q['sig']}", upload.headers, 403),
        (f"/files/jobs/j1/in/0?m=PUT&exp={q['exp']}&max=99&sig={q['sig']}", upload.headers, 403),
        ("/files/jobs/j1/in/0", upload.headers, 403),  # no signature at all
        (f"/files/jobs/j1/in/0?m=PUT&exp=abc&max=10&sig={q['sig']}", upload.headers, 422),
    ]
    for path, headers, status in attempts:
        response = await client.put(path, content=b"0123456789", headers=headers)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("application/problem+json")
        code = response.json()["code"]
        assert code == ("bad_signature" if status == 403 else "validation_error"), path
    assert await storage.missing(["jobs/j1/in/0", "jobs/j1/in/1"]) == [0, 1]
    download = path_of(storage.presign_download("jobs/j1/in/0", 600))
    response = await client.get(download.replace("m=GET", "m=PUT"))
    assert response.status_code == 403


async def test_body_larger_than_declared_is_413_and_leaves_nothing(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    upload = storage.presign_upload("jobs/j1/in/0", "image/png", 10, 600)
    response = await client.put(path_of(upload.url), content=b"x" * 11, headers=upload.headers)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"

    # A client that declares less than it sends is caught while the body streams in.
    lying = {**upload.headers, "Content-Length": "8"}
    response = await client.put(path_of(upload.url), content=b"x" * 16, headers=lying)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert [path for path in storage.root.rglob("*") if path.is_file()] == []


async def test_any_type_urls_take_any_content_type_but_not_more_bytes(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    upload = storage.presign_upload("jobs/j1/out/0", None, 8, 600)
    assert upload.headers == {}
    for content_type in ("image/webp", "application/json"):
        response = await client.put(path_of(upload.url), content=b"12345678",
                                    headers={"Content-Type": content_type})
        assert response.status_code == 200
    response = await client.put(path_of(upload.url), content=b"123456789")
    assert response.status_code == 413
    typed = storage.presign_upload("jobs/j1/out/1", "image/png", 8, 600)
    response = await client.put(path_of(typed.url).replace("&sig=", "&ct=any&sig="),
                                content=b"1", headers={"Content-Type": "text/html"})
    assert response.status_code == 403  # a typed URL cannot be turned into an any-type one


@pytest.mark.parametrize(("name", "served_as"), [
    ("thumb.png", "image/png"), ("page.html", "application/octet-stream"),
    ("logo.svg", "application/octet-stream"), ("0", "application/octet-stream"),
])
async def test_downloads_never_serve_active_content(
    storage: LocalStorage, client: AsyncTestClient[Litestar], name: str, served_as: str
) -> None:
    await storage.write(f"jobs/j1/out/{name}", b"<script>alert(1)</script>")
    response = await client.get(path_of(storage.presign_download(f"jobs/j1/out/{name}", 600)))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == served_as
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_upload_onto_a_folder_key_is_409(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    await storage.write("jobs/j1/in/0", b"x")
    upload = storage.presign_upload("jobs/j1/in", "image/png", 8, 600)
    response = await client.put(path_of(upload.url), content=b"1", headers=upload.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "key_conflict"


async def test_download_of_a_missing_object_is_404(
    storage: LocalStorage, client: AsyncTestClient[Litestar]
) -> None:
    response = await client.get(path_of(storage.presign_download("jobs/nothing", 600)))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_missing_lists_exactly_the_absent_indexes(storage: LocalStorage) -> None:
    for index in (0, 2, 3):
        await storage.write(f"jobs/j/in/{index}", b"data")
    keys = [f"jobs/j/in/{i}" for i in range(5)]
    assert await storage.missing(keys) == [1, 4]


def test_make_storage_picks_by_settings(tmp_path: Path) -> None:
    local = make_storage(Settings(storage_dir=str(tmp_path / "s")), SECRET)
    assert isinstance(local, LocalStorage)
    s3 = make_storage(Settings(s3_endpoint="http://127.0.0.1:9", s3_access_key="a",
                               s3_secret_key="b"), SECRET)
    assert isinstance(s3, S3Storage)
    s3.close()
