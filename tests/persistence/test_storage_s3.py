"""S3 storage against a real S3 API server (moto in server mode), plus the presigner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from unittest import mock

import httpx
import pytest

from service.storage.s3 import S3Storage
from service.storage.sigv4 import SigV4Presigner

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[S3Storage]:
    storage = S3Storage(s3_endpoint, f"tg-{uuid.uuid4().hex[:12]}", "us-east-1", "testing",
                        "testing")
    storage.ensure_bucket()
    storage.ensure_bucket()  # a second call finds the bucket and keeps it
    yield storage
    storage.close()


async def test_presigned_put_stores_the_bytes_and_get_returns_them(s3: S3Storage) -> None:
    body = b"\x89PNG real bytes " * 64
    upload = s3.presign_upload("jobs/j1/in/0 name é", "image/png", len(body), 600)
    assert upload.method == "PUT"
    async with httpx.AsyncClient() as http:
        response = await http.put(upload.url, content=body, headers=upload.headers)
        assert response.status_code == 200, response.text
        download = await http.get(s3.presign_download("jobs/j1/in/0 name é", 600))
    assert download.content == body
    assert await s3.read("jobs/j1/in/0 name é") == body
    head = s3.client.head_object(Bucket=s3.bucket, Key="jobs/j1/in/0 name é")
    assert head["ContentType"] == "image/png"


@pytest.mark.parametrize("count", [5, 40, 100])
async def test_missing_lists_exactly_the_absent_indexes(s3: S3Storage, count: int) -> None:
    # Every count here goes through listing of the shared folder (HEADs only for a single
    # key), in pages of 7 (1000 in production), so 40 and 100 read several pages.
    s3.list_page_size = 7
    keys = [f"jobs/j{count}/in/{i}" for i in range(count)]
    absent = {1, count - 1, count // 2}
    present = [key for index, key in enumerate(keys) if index not in absent]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"x"),
                      present))
    s3.client.put_object(Bucket=s3.bucket, Key=f"jobs/j{count}/in/other", Body=b"x")
    with mock.patch.object(s3, "_exists", wraps=s3._exists) as heads:
        assert await s3.missing(keys) == sorted(absent)
    assert heads.call_count == 0


async def test_a_crowded_folder_falls_back_to_heads(s3: S3Storage) -> None:
    s3.list_page_size = 2
    keys = [f"crowded/{i}" for i in range(9)]
    others = [f"crowded/other-{i}" for i in range(40)]  # far more than we look for
    for key in [*keys[:4], *others]:
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
    with mock.patch.object(s3, "_exists", wraps=s3._exists) as heads:
        assert await s3.missing(keys) == [4, 5, 6, 7, 8]
    assert heads.call_count == len(keys)


async def test_missing_without_a_shared_folder_falls_back_to_heads(s3: S3Storage) -> None:
    keys = [f"{letter}/file" for letter in "abcdefghijk"]
    s3.client.put_object(Bucket=s3.bucket, Key="c/file", Body=b"x")
    assert await s3.missing(keys) == [i for i in range(len(keys)) if i != 2]


async def test_missing_is_empty_when_everything_arrived(s3: S3Storage) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="only/one", Body=b"x")
    assert await s3.missing(["only/one"]) == []
    assert await s3.missing([]) == []


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://s3.example.com",
                                      "https://minio.example.com:8443"])
@pytest.mark.parametrize("key", ["jobs/j/in/0", "a b/ü~+%/(1).png", "x"])
def test_fast_presigner_signs_exactly_like_boto3(endpoint: str, key: str) -> None:
    storage = S3Storage(endpoint, "tollgate", "eu-central-1", "AKIDEXAMPLE", "se/cr+et")
    now = datetime(2026, 11, 26, 4, 30, 1, tzinfo=UTC)
    presigner = SigV4Presigner(endpoint, "tollgate", "eu-central-1", "AKIDEXAMPLE", "se/cr+et")
    try:
        with mock.patch("botocore.auth.get_current_datetime",
                        return_value=now.replace(tzinfo=None)):
            for content_type in ("image/png", "text/plain;  charset=utf-8"):
                expected = storage.client.generate_presigned_url(
                    "put_object",
                    Params={"Bucket": "tollgate", "Key": key, "ContentType": content_type},
                    ExpiresIn=900, HttpMethod="PUT")
                assert presigner.presign("PUT", key, 900, content_type, now=now) == expected
            expected = storage.client.generate_presigned_url(
                "put_object", Params={"Bucket": "tollgate", "Key": key}, ExpiresIn=900,
                HttpMethod="PUT")
            assert presigner.presign("PUT", key, 900, None, now=now) == expected  # any type
            expected = storage.client.generate_presigned_url(
                "get_object", Params={"Bucket": "tollgate", "Key": key}, ExpiresIn=900)
            assert presigner.presign("GET", key, 900, now=now) == expected
    finally:
        storage.close()
