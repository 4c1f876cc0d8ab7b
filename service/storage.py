"""Where uploads and results live: any S3 API through presigned URLs, or a local folder.

Clients and workers never send file bytes through the API: they get URLs to PUT and GET
directly. With S3 the URLs are SigV4 presigned; with the local folder (the embedded
default) the service signs the URLs with HMAC and serves `/files/...` itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import mimetypes
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, urlsplit

import anyio
from litestar import Request, Response, get, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import File

from service.settings import Settings

PROBLEM_JSON = "application/problem+json"
# Few keys: HEAD each one. Many keys sharing a folder: one LIST per 1000 keys is far cheaper.
_HEAD_AT_MOST = 8
_MAX_KEY_CHARS = 1024


@dataclass(frozen=True, slots=True)
class PresignedUpload:
    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


class Storage(Protocol):
    def presign_upload(
        self, key: str, content_type: str | None, size: int, ttl_s: int
    ) -> PresignedUpload: ...

    def presign_download(self, key: str, ttl_s: int) -> str: ...

    async def missing(self, keys: list[str]) -> list[int]: ...

    async def read(self, key: str) -> bytes: ...

    def close(self) -> None: ...


def _expiry(ttl_s: int) -> tuple[int, datetime]:
    exp = int(time.time()) + ttl_s
    return exp, datetime.fromtimestamp(exp, tz=UTC)


# ---------------------------------------------------------------- local folder


# Signed in place of a Content-Type on URLs that take any type.
ANY_TYPE = "*"


class LocalStorage:
    """Files under `root`, reachable through URLs this service signs and serves itself."""

    def __init__(self, root: Path, public_url: str, secret: bytes) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self._secret = secret

    @staticmethod
    def check_key(key: str) -> None:
        """Refuses keys that could name anything but a file below the root (no I/O)."""
        if (
            not key
            or len(key) > _MAX_KEY_CHARS
            or "\x00" in key
            or "\\" in key
            or any(part in ("", ".", "..") for part in key.split("/"))
        ):
            raise ValueError(f"unsafe storage key {key!r}")

    def path_for(self, key: str) -> Path:
        """The file of a key; refuses anything that could point outside the root."""
        self.check_key(key)
        # resolve() follows symlinks, so a link inside the root cannot lead out of it.
        path = self.root.joinpath(*key.split("/")).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key {key!r} leaves the storage folder")
        return path

    def _sign(self, key: str, method: str, exp: int, max_size: str, content_type: str) -> str:
        message = f"{method}\n{key}\n{exp}\n{max_size}\n{content_type}".encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def verify(
        self,
        key: str,
        method: str,
        exp: int,
        sig: str,
        *,
        max_size: int | None = None,
        content_type: str = "",
    ) -> bool:
        if exp < time.time():
            return False
        expected = self._sign(key, method, exp, "" if max_size is None else str(max_size),
                              content_type)
        return hmac.compare_digest(expected.encode(), sig.encode())

    def _url(self, key: str, query: str) -> str:
        return f"{self.public_url}/files/{quote(key, safe='/')}?{query}"

    def presign_upload(self, key: str, content_type: str | None, size: int, ttl_s: int
                       ) -> PresignedUpload:
        """`content_type=None` signs a URL that takes any Content-Type (worker outputs)."""
        self.check_key(key)  # no resolve(): presigning 1000 URLs must not touch the disk
        exp, expires_at = _expiry(ttl_s)
        sig = self._sign(key, "PUT", exp, str(size), ANY_TYPE if content_type is None
                         else content_type)
        any_type = "&ct=any" if content_type is None else ""
        url = self._url(key, f"m=PUT&exp={exp}&max={size}{any_type}&sig={sig}")
        headers = {} if content_type is None else {"Content-Type": content_type}
        return PresignedUpload(url, "PUT", headers, expires_at)

    def presign_download(self, key: str, ttl_s: int) -> str:
        self.check_key(key)
        exp, _ = _expiry(ttl_s)
        return self._url(key, f"m=GET&exp={exp}&sig={self._sign(key, 'GET', exp, '', '')}")

    async def missing(self, keys: list[str]) -> list[int]:
        def scan() -> list[int]:
            return [i for i, key in enumerate(keys) if not self.path_for(key).is_file()]

        return await anyio.to_thread.run_sync(scan)

    async def read(self, key: str) -> bytes:
        return await anyio.Path(self.path_for(key)).read_bytes()

    async def write(self, key: str, data: bytes) -> None:
        """Atomic: readers see the old file or the new one, never half of it."""
        path = self.path_for(key)
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        tmp = anyio.Path(path.parent / f".{path.name}.{secrets.token_hex(6)}.part")
        await tmp.write_bytes(data)
        await tmp.replace(path)

    def close(self) -> None:
        return None


def _problem(status: int, code: str, title: str, detail: str) -> Response[dict[str, Any]]:
    body = {"type": "about:blank", "status": status, "code": code, "title": title,
            "detail": detail}
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def _bad_signature() -> Response[dict[str, Any]]:
    return _problem(403, "bad_signature", "Bad or expired signature",
                    "this URL is not signed for this request, or it expired")


async def _receive_file(
    request: Request[Any, Any, Any], path: Path, max_size: int
) -> Response[dict[str, Any]] | None:
    """Streams the body to a temp file beside `path`, then renames it into place."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_size:
        return _problem(413, "too_large", "Upload larger than declared",
                        f"this URL accepts at most {max_size} bytes")
    if await anyio.Path(path).is_dir():
        return _problem(409, "key_conflict", "Key names a folder",
                        "another object's key continues below this one")
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    tmp = anyio.Path(path.parent / f".{path.name}.{secrets.token_hex(6)}.part")
    received = 0
    try:
        async with await anyio.open_file(tmp, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_size:
                    return _problem(413, "too_large", "Upload larger than declared",
                                    f"this URL accepts at most {max_size} bytes")
                await out.write(chunk)
        await tmp.replace(path)  # atomic: a reader never sees half a file
        return None
    finally:
        await tmp.unlink(missing_ok=True)


def _served_type(path: Path) -> str:
    """Images show inline; anything else (HTML, SVG, scripts) is served as opaque bytes,
    so an uploaded file can never run as a page on the API's origin."""
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed and guessed.startswith("image/") and guessed != "image/svg+xml":
        return guessed
    return "application/octet-stream"


def local_file_routes(storage: LocalStorage) -> list[HTTPRouteHandler]:
    """PUT and GET /files/{key}: the embedded stand-in for S3's presigned URLs."""

    @put("/files/{key:path}", status_code=200, request_max_body_size=None,
         include_in_schema=False)
    async def upload_file(
        request: Request[Any, Any, Any],
        key: FromPath[str],
        m: FromQuery[str | None] = None,
        exp: FromQuery[int | None] = None,
        sig: FromQuery[str | None] = None,
        max_size: Annotated[int | None, QueryParameter(name="max")] = None,
        ct: FromQuery[str | None] = None,
    ) -> Response[dict[str, Any]]:
        key = key.lstrip("/")
        content_type = ANY_TYPE if ct == "any" else request.headers.get("content-type", "")
        if (
            m != "PUT" or exp is None or sig is None or max_size is None
            or not storage.verify(key, "PUT", exp, sig, max_size=max_size,
                                  content_type=content_type)
        ):
            return _bad_signature()
        try:
            path = storage.path_for(key)
        except ValueError:
            return _bad_signature()
        refused = await _receive_file(request, path, max_size)
        return refused or Response({}, status_code=200)

    @get("/files/{key:path}", include_in_schema=False)
    async def download_file(
        key: FromPath[str],
        m: FromQuery[str | None] = None,
        exp: FromQuery[int | None] = None,
        sig: FromQuery[str | None] = None,
    ) -> Response[Any]:
        key = key.lstrip("/")
        if m != "GET" or exp is None or sig is None or not storage.verify(key, "GET", exp, sig):
            return _bad_signature()
        try:
            path = storage.path_for(key)
        except ValueError:
            return _bad_signature()
        if not await anyio.Path(path).is_file():
            return _problem(404, "not_found", "Not found", f"no object {key!r}")
        return File(path, content_disposition_type="inline", media_type=_served_type(path),
                    headers={"X-Content-Type-Options": "nosniff"})

    return [upload_file, download_file]


# ---------------------------------------------------------------- S3


class SigV4Presigner:
    """S3 SigV4 query-string presigning without botocore's per-call machinery.

    boto3's generate_presigned_url costs about 1 ms per URL (a 1000-item job would spend a
    second in it); this does the same signature in tens of microseconds, with the signing
    key derived once per day. Tests check it against boto3's output byte for byte.
    """

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str,
                 secret_key: str) -> None:
        parts = urlsplit(endpoint)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        self._host = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/") + "/" + bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._day = ""
        self._signing_key = b""
        # Every URL signed in the same second with the same TTL shares its query string.
        self._second = -1
        self._stamp = self._today = ""
        self._queries: dict[tuple[int, str], str] = {}

    def _key_for(self, day: str) -> bytes:
        if day != self._day:
            k = hmac.new(f"AWS4{self._secret_key}".encode(), day.encode(), hashlib.sha256)
            for part in (self._region, "s3", "aws4_request"):
                k = hmac.new(k.digest(), part.encode(), hashlib.sha256)
            self._day, self._signing_key = day, k.digest()
        return self._signing_key

    def presign(self, method: str, key: str, ttl_s: int, content_type: str | None = None,
                now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        second = int(now.timestamp())
        if second != self._second:
            self._second, self._queries = second, {}
            self._stamp, self._today = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        stamp, day = self._stamp, self._today
        scope = f"{day}/{self._region}/s3/aws4_request"
        headers = [("host", self._host)]
        if content_type is not None:
            headers.insert(0, ("content-type", " ".join(content_type.split())))
        signed = ";".join(name for name, _ in headers)
        query = self._queries.get((ttl_s, signed))
        if query is None:
            query = self._queries[(ttl_s, signed)] = "&".join(
                f"{name}={quote(value, safe='-_.~')}"
                for name, value in (
                    ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                    ("X-Amz-Credential", f"{self._access_key}/{scope}"),
                    ("X-Amz-Date", stamp),
                    ("X-Amz-Expires", str(ttl_s)),
                    ("X-Amz-SignedHeaders", signed),
                )
            )
        path = quote(f"{self._base_path}/{key}", safe="/~")
        canonical = "\n".join([
            method, path, query, "".join(f"{n}:{v}\n" for n, v in headers), signed,
            "UNSIGNED-PAYLOAD",
        ])
        to_sign = "\n".join([
            "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest(),
        ])
        signature = hmac.new(self._key_for(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature}"


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
                 access_key: str | None, secret_key: str | None, *, threads: int = 16) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.region = region
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
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
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tollgate-s3")
        self._presigner = (
            SigV4Presigner(self.client.meta.endpoint_url, bucket, region, access_key, secret_key)
            if access_key and secret_key
            else None  # credentials from the environment/IAM: let boto3 sign
        )

    async def _in_thread(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def presign_upload(self, key: str, content_type: str | None, size: int, ttl_s: int
                       ) -> PresignedUpload:
        _, expires_at = _expiry(ttl_s)
        if self._presigner is not None:
            url = self._presigner.presign("PUT", key, ttl_s, content_type)
        else:
            params = {"Bucket": self.bucket, "Key": key}
            if content_type is not None:
                params["ContentType"] = content_type
            url = self.client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=ttl_s, HttpMethod="PUT")
        headers = {} if content_type is None else {"Content-Type": content_type}
        return PresignedUpload(url, "PUT", headers, expires_at)

    def presign_download(self, key: str, ttl_s: int) -> str:
        if self._presigner is not None:
            return self._presigner.presign("GET", key, ttl_s)
        url: str = self.client.generate_presigned_url(
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


def make_storage(settings: Settings, secret: bytes) -> Storage:
    if settings.embedded_storage:
        return LocalStorage(Path(settings.storage_dir), settings.public_url, secret)
    return S3Storage(settings.s3_endpoint, settings.s3_bucket, settings.s3_region,
                     settings.s3_access_key, settings.s3_secret_key)
