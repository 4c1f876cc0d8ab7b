"""PUT and GET /files/{key}: the embedded stand-in for S3's presigned URLs."""

from __future__ import annotations

import mimetypes
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, BinaryIO, cast

import anyio
from litestar import Request, Response, get, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import File
from litestar.types import Scope
from litestar.types.file_types import FileInfo, FileSystemProtocol

from service.errors import (
    BadSignature,
    KeyConflict,
    NotFound,
    PayloadTooLarge,
    UploadInProgress,
)
from service.storage.local import ANY_TYPE, LocalStorage

# Bytes gathered in the event loop before one thread call writes them: an item of this size
# or less (every upload of a usual job) costs two thread calls in all (write, rename) instead
# of one per file operation, each a hand-off to anyio's worker threads (measured with
# bench/job_cost.py: the thread hops were most of the API's CPU per local upload).
WRITE_BUFFER = 1024 * 1024


async def _receive_file(request: Request[Any, Any, Any], path: Path, max_size: int,
                        still_allowed: Callable[[], Awaitable[None]] | None = None,
                        after_rename: Callable[[], None] | None = None) -> None:
    """Streams the body to a temp file beside `path`, then renames it into place, unless
    `still_allowed` refuses once the bytes are in (the job moved on during the upload).
    `after_rename` (blocking) runs in the same thread call as the rename."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_size:
        raise PayloadTooLarge(f"this URL accepts at most {max_size} bytes")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    out: BinaryIO | None = None

    def write(chunks: list[bytes], last: bool) -> None:
        nonlocal out
        if out is None:
            if path.is_dir():
                raise KeyConflict("another object's key continues below this one")
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "wb")  # noqa: SIM115  (closed below or in the finally)
        out.writelines(chunks)
        if last:
            out.close()

    received, buffered, chunks = 0, 0, []
    replaced = False
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_size:
                raise PayloadTooLarge(f"this URL accepts at most {max_size} bytes")
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BUFFER:
                await anyio.to_thread.run_sync(write, chunks, False)
                chunks, buffered = [], 0
        await anyio.to_thread.run_sync(write, chunks, True)
        if still_allowed is not None:
            await still_allowed()

        def rename() -> None:
            os.replace(tmp, path)  # atomic: a reader never sees half a file
            if after_rename is not None:
                after_rename()

        await anyio.to_thread.run_sync(rename)
        replaced = True
    finally:
        if out is not None and not replaced:
            out.close()
            await anyio.to_thread.run_sync(partial(tmp.unlink, missing_ok=True))


# A Content-Type kept from an upload: `type/subtype` and simple parameters, nothing else.
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}"
                           r"(\s*;\s*[a-z0-9_.-]{1,32}=[a-z0-9_.-]{1,64})*$", re.IGNORECASE)
# Served as they are; anything else could act on the API's origin (HTML, SVG, XML, scripts).
_INLINE_SAFE = ("audio/", "video/", "application/json", "application/pdf", "text/plain",
                "text/csv")


def kept_type(header: str | None) -> str | None:
    """The Content-Type of an upload as it will be kept, or None (absent or malformed)."""
    if header and len(header) <= 200 and _CONTENT_TYPE.match(header.strip()):
        return header.strip().lower()
    return None


def _served_type(path: Path, kept: str | None = None) -> str:
    """The type the upload came with (a processor's image/png), else a guess from the name.
    Images (not SVG) and a few inert types are served as they are; anything else (HTML,
    SVG, scripts) as opaque bytes, so an uploaded file can never run as a page on the API's
    origin."""
    chosen = kept or mimetypes.guess_type(path.name)[0]
    if not chosen:
        return "application/octet-stream"
    base = chosen.split(";")[0].strip()
    if base.startswith("image/") and base != "image/svg+xml":
        return chosen
    if base.startswith(_INLINE_SAFE):
        return chosen
    return "application/octet-stream"


def _look(storage: LocalStorage, path: Path
          ) -> tuple[FileInfo, str | None, bytes | None] | None:
    """A download's file, its kept Content-Type and (for a file that Litestar would send in
    one piece anyway) its bytes, in one thread call: File alone makes four more (a symlink
    check, open, read, close), each a hand-off to anyio's worker threads. None when there
    is no such file. The info is what Litestar's own stat parsing makes, so the headers
    (Content-Length, Last-Modified, ETag) are the same."""
    if not path.is_file():
        return None
    found = path.stat()
    info: FileInfo = {
        "created": found.st_ctime, "gid": found.st_gid, "ino": found.st_ino,
        "islink": path.is_symlink(), "mode": found.st_mode, "mtime": found.st_mtime,
        "name": str(path), "nlink": found.st_nlink, "size": found.st_size, "type": "file",
        "uid": found.st_uid,
    }
    if info["islink"]:
        info["destination"] = str(path.readlink()).encode("utf-8")
    data = None
    if found.st_size <= SEND_WHOLE:
        with open(path, "rb") as file:
            data = file.read()
        info["size"] = len(data)  # what is sent, should the file have changed since
    return info, storage.content_type_at(path), data


# Litestar's File sends a file of up to its chunk size (1 MiB) in one body message.
SEND_WHOLE = 1024 * 1024


class _Preloaded:
    """A file system (Litestar's FileSystemProtocol) that opens the bytes `_look` read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def info(self, path: Any, **kwargs: Any) -> FileInfo:
        raise NotImplementedError  # never asked: File gets the info it needs

    async def open(self, file: Any, mode: str = "rb", buffering: int = -1) -> _BytesFile:
        return _BytesFile(self._data)


class _BytesFile:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aenter__(self) -> _BytesFile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self, size: int = -1) -> bytes:
        data, self._data = (self._data, b"") if size < 0 else (self._data[:size],
                                                                self._data[size:])
        return data


# Asked before and after an upload's bytes arrive: raises a TollgateError (e.g. 409
# invalid_transition) when the key may no longer be written, and the bytes are dropped.
UploadCheck = Callable[[Request[Any, Any, Any], str], Awaitable[None]]


def local_file_routes(storage: LocalStorage, check_upload: UploadCheck | None = None,
                      signed: Callable[[Scope], None] | None = None) -> list[HTTPRouteHandler]:
    """PUT and GET /files/{key}: the embedded stand-in for S3's presigned URLs. `signed` is
    told of a PUT whose signature is valid, before its body is read (the API reads a body
    without valid credentials on strict terms: service.api.connections)."""
    # One upload in flight per key in this process, so parallel PUTs to one URL cannot each
    # hold a temp file of the URL's size: the others are 409 upload_in_progress.
    uploading: set[str] = set()

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
            raise BadSignature() from None
        try:
            path = storage.path_for(key)
        except ValueError:
            raise BadSignature() from None
        if signed is not None:
            signed(request.scope)
        # The check runs again once the bytes are in (before the rename); asking first too
        # only pays when that saves receiving a large or undeclared body. A body that is
        # declared, within the URL's limit and small enough to gather in memory gets the
        # same answer from the second check alone, one Redis round trip fewer.
        declared = request.headers.get("content-length")
        small = (declared is not None and declared.isdigit()
                 and int(declared) <= min(max_size, WRITE_BUFFER))
        if key in uploading:
            raise UploadInProgress("another upload to this URL is in progress; retry when "
                                   "it has ended")
        uploading.add(key)
        try:
            if check_upload is not None and not small:
                await check_upload(request, key)
            await _receive_file(
                request, path, max_size,
                None if check_upload is None else partial(check_upload, request, key),
                partial(storage.remember_content_type_at, path,
                        kept_type(request.headers.get("content-type"))))
        finally:
            uploading.discard(key)
        return Response({}, status_code=200)

    @get("/files/{key:path}", include_in_schema=False)
    async def download_file(
        key: FromPath[str],
        m: FromQuery[str | None] = None,
        exp: FromQuery[int | None] = None,
        sig: FromQuery[str | None] = None,
    ) -> Response[Any]:
        key = key.lstrip("/")
        if m != "GET" or exp is None or sig is None or not storage.verify(key, "GET", exp, sig):
            raise BadSignature() from None
        try:
            path = storage.path_for(key)
        except ValueError:
            raise BadSignature() from None

        seen = await anyio.to_thread.run_sync(_look, storage, path)
        if seen is None:
            raise NotFound(f"no object {key!r}")
        info, kept, data = seen
        preloaded = None if data is None else cast(FileSystemProtocol, _Preloaded(data))
        return File(path, content_disposition_type="inline",
                    media_type=_served_type(path, kept), file_info=info, file_system=preloaded,
                    headers={"X-Content-Type-Options": "nosniff"})

    return [upload_file, download_file]
