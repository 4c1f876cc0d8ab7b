"""The S3 backend (AWS, MinIO, R2): boto3 for reads and listings, SigV4 URLs for clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from service.storage.base import PresignedUpload, _expiry
from service.storage.sigv4 import SigV4Presigner

# One key: HEAD it. More keys sharing a folder: one LIST per 1000 keys is far cheaper. Even
# for a job of 8 items one LIST beats 8 HEADs: each boto3 call costs the API about 2 ms of
# CPU, and eight made confirm-upload cost ~16 ms (bench/job_cost.py, issue 11).
_HEAD_AT_MOST = 1
# S3's DeleteObjects takes at most 1000 keys per request.
_DELETE_AT_MOST = 1000


def _is_absent(error: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _shared_folder(keys: list[str]) -> str:
    # The common prefix of all keys is the common prefix of the smallest and largest.
    low, high = min(keys), max(keys)
    size = 0
    while size < min(len(low), len(high)) and low[size] == high[size]:
        size += 1
    return low[: low.rfind("/", 0, size) + 1]


class S3Storage:
    """Any S3 API (AWS, MinIO, R2) through one shared boto3 client and a thread pool."""

    list_page_size = 1000  # S3's maximum

    def __init__(self, endpoint: str | None, bucket: str, region: str,
                 access_key: str | None, secret_key: str | None, *, threads: int = 16,
                 public_endpoint: str | None = None) -> None:
        """`endpoint`: S3 as this service and the workers reach it; `public_endpoint`: as
        clients reach it (compose: http://minio:9000 inside, http://localhost:9000 outside).
        A URL's signature covers its host, so each kind is signed for its own endpoint."""
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.region = region

        def client(endpoint_url: str | None) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    max_pool_connections=threads,
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )

        self.client: Any = client(endpoint)
        # Signs client URLs when credentials come from the environment (no I/O to sign).
        self._public_client: Any = (client(public_endpoint) if public_endpoint
                                    else self.client)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tollgate-s3")
        self._presigners = (
            (SigV4Presigner(self.client.meta.endpoint_url, bucket, region, access_key,
                            secret_key),
             SigV4Presigner(self._public_client.meta.endpoint_url, bucket, region, access_key,
                            secret_key))
            if access_key and secret_key
            else None  # credentials from the environment/IAM: let boto3 sign
        )

    async def _in_thread(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def presign_upload(self, key: str, content_type: str | None, size: int, ttl_s: int, *,
                       internal: bool = False) -> PresignedUpload:
        _, expires_at = _expiry(ttl_s)
        if self._presigners is not None:
            url = self._presigners[0 if internal else 1].presign("PUT", key, ttl_s, content_type)
        else:
            params = {"Bucket": self.bucket, "Key": key}
            if content_type is not None:
                params["ContentType"] = content_type
            signer = self.client if internal else self._public_client
            url = signer.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=ttl_s, HttpMethod="PUT")
        headers = {} if content_type is None else {"Content-Type": content_type}
        return PresignedUpload(url, "PUT", headers, expires_at)

    def presign_download(self, key: str, ttl_s: int, *, internal: bool = False) -> str:
        if self._presigners is not None:
            return self._presigners[0 if internal else 1].presign("GET", key, ttl_s)
        signer = self.client if internal else self._public_client
        url: str = signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_s
        )
        return url

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _is_absent(error):
                return False
            raise
        return True

    def _listed(self, prefix: str, wanted: int) -> set[str] | None:
        """Every key under `prefix`, or None when the folder holds far more than we look for."""
        found: set[str] = set()
        pages_allowed = wanted // self.list_page_size + 3
        token: str | None = None
        for _ in range(pages_allowed):
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                    "MaxKeys": self.list_page_size}
            if token:
                args["ContinuationToken"] = token
            page = self.client.list_objects_v2(**args)
            found.update(obj["Key"] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")
        return None

    async def missing(self, keys: list[str]) -> list[int]:
        if len(keys) > _HEAD_AT_MOST:
            prefix = _shared_folder(keys)
            if prefix:
                listed = await self._in_thread(lambda: self._listed(prefix, len(keys)))
                if listed is not None:
                    return [i for i, key in enumerate(keys) if key not in listed]
        found = await asyncio.gather(*(self._in_thread(partial(self._exists, key))
                                       for key in keys))
        return [i for i, present in enumerate(found) if not present]

    async def read(self, key: str) -> bytes:
        def fetch() -> bytes:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body

        data: bytes = await self._in_thread(fetch)
        return data

    def _delete_now(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_AT_MOST):
            chunk = keys[start:start + _DELETE_AT_MOST]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise RuntimeError(f"S3 kept {len(errors)} of {len(chunk)} objects: "
                                   f"{first.get('Key')!r}: {first.get('Code')}")

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._in_thread(partial(self._delete_now, keys))

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError(f"not a folder prefix: {prefix!r}")

        def remove() -> int:
            count = 0
            token: str | None = None
            while True:  # ends: every page is one S3 listing of a finite folder
                args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                        "MaxKeys": self.list_page_size}
                if token:
                    args["ContinuationToken"] = token
                page = self.client.list_objects_v2(**args)
                keys = [obj["Key"] for obj in page.get("Contents", [])]
                self._delete_now(keys)
                count += len(keys)
                if not page.get("IsTruncated"):
                    return count
                token = page.get("NextContinuationToken")

        count: int = await self._in_thread(remove)
        return count

    async def copy(self, pairs: list[tuple[str, str]]) -> None:
        def copy_all() -> None:
            for source, target in pairs:  # server-side: the bytes never come here
                try:
                    self.client.copy_object(Bucket=self.bucket, Key=target,
                                            CopySource={"Bucket": self.bucket, "Key": source})
                except Exception as error:
                    if _is_absent(error):
                        raise FileNotFoundError(source) from error
                    raise

        await self._in_thread(copy_all)

    async def write(self, key: str, data: bytes, content_type: str = "application/octet-stream"
                    ) -> None:
        def store() -> None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                   ContentType=content_type)

        await self._in_thread(store)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except Exception as error:
            if not _is_absent(error):
                raise
        if self.region == "us-east-1":
            self.client.create_bucket(Bucket=self.bucket)
        else:
            self.client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": self.region},
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        if self._public_client is not self.client:
            self._public_client.close()
