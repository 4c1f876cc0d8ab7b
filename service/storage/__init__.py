"""Where uploads and results live: any S3 API through presigned URLs, or a local folder.

Clients and workers never send file bytes through the API: they get URLs to PUT and GET
directly. With S3 the URLs are SigV4 presigned; with the local folder (the embedded
default) the service signs the URLs with HMAC and serves `/files/...` itself.
"""


from __future__ import annotations

from pathlib import Path

from service.settings import Settings
from service.storage.base import PresignedUpload, Storage
from service.storage.local import LocalStorage
from service.storage.routes import local_file_routes
from service.storage.s3 import S3Storage

__all__ = ["LocalStorage", "PresignedUpload", "S3Storage", "Storage", "local_file_routes",
           "make_storage"]


def make_storage(settings: Settings, secret: bytes) -> Storage:
    if settings.embedded_storage:
        return LocalStorage(Path(settings.storage_dir), settings.public_url, secret,
                            internal_url=settings.worker_url)
    return S3Storage(settings.s3_endpoint, settings.s3_bucket, settings.s3_region,
                     settings.s3_access_key, settings.s3_secret_key,
                     public_endpoint=settings.s3_public_endpoint)
