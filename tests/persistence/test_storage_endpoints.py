"""Each URL names the address its reader can reach: clients the public one, workers the
internal one (local folder: TOLLGATE_PUBLIC_URL / TOLLGATE_INTERNAL_URL; S3:
TOLLGATE_S3_PUBLIC_ENDPOINT / TOLLGATE_S3_ENDPOINT)."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings
from service.storage import LocalStorage, S3Storage, make_storage


def test_local_folder_urls_for_clients_and_workers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "http://localhost:8000", b"s",
                           internal_url="http://api:8000")
    assert storage.presign_download("a/b", 60).startswith("http://localhost:8000/files/a/b?")
    assert storage.presign_download("a/b", 60, internal=True).startswith(
        "http://api:8000/files/a/b?")
    assert storage.presign_upload("a/b", None, 9, 60, internal=True).url.startswith(
        "http://api:8000/files/a/b?")
    assert storage.presign_upload("a/b", "image/png", 9, 60).url.startswith(
        "http://localhost:8000/files/a/b?")


def test_internal_url_defaults_to_the_public_one(tmp_path: Path) -> None:
    settings = Settings(public_url="http://localhost:8000/", storage_dir=str(tmp_path))
    assert settings.worker_url == "http://localhost:8000"
    storage = make_storage(settings, b"s")
    assert storage.presign_download("a", 60, internal=True).startswith("http://localhost:8000/")
    moved = Settings(public_url="http://localhost:8000", internal_url="http://api:8000",
                     storage_dir=str(tmp_path))
    assert moved.worker_url == "http://api:8000"


def test_s3_urls_are_signed_for_the_endpoint_of_their_reader() -> None:
    storage = S3Storage("http://minio:9000", "b", "us-east-1", "key", "secret",
                        public_endpoint="http://localhost:9000")
    try:
        client_url = storage.presign_download("k", 60)
        worker_url = storage.presign_download("k", 60, internal=True)
        assert client_url.startswith("http://localhost:9000/b/k?")
        assert worker_url.startswith("http://minio:9000/b/k?")
        assert client_url.split("X-Amz-Signature=")[1] != worker_url.split("X-Amz-Signature=")[1]
        assert storage.presign_upload("k", None, 9, 60).url.startswith("http://localhost:9000/")
        assert storage.presign_upload("k", None, 9, 60, internal=True).url.startswith(
            "http://minio:9000/")
    finally:
        storage.close()
    alone = S3Storage("http://minio:9000", "b", "us-east-1", "key", "secret")
    try:
        assert alone.presign_download("k", 60).startswith("http://minio:9000/")
    finally:
        alone.close()
