"""The local-folder backend (embedded default): files under a root, URLs signed by the service."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import anyio

from service.storage.base import PresignedUpload, _expiry

_MAX_KEY_CHARS = 1024




# Signed in place of a Content-Type on URLs that take any type.
ANY_TYPE = "*"
# The extended attribute that keeps an upload's Content-Type on the file itself.
TYPE_XATTR = "user.tollgate.content_type"


class LocalStorage:
    """Files under `root`, reachable through URLs this service signs and serves itself."""

    def __init__(self, root: Path, public_url: str, secret: bytes, *,
                 internal_url: str | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self.internal_url = (internal_url or public_url).rstrip("/")
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

    def _url(self, key: str, query: str, internal: bool) -> str:
        base = self.internal_url if internal else self.public_url
        return f"{base}/files/{quote(key, safe='/')}?{query}"

    def presign_upload(self, key: str, content_type: str | None, size: int, ttl_s: int, *,
                       internal: bool = False) -> PresignedUpload:
        """`content_type=None` signs a URL that takes any Content-Type (worker outputs)."""
        self.check_key(key)  # no resolve(): presigning 1000 URLs must not touch the disk
        exp, expires_at = _expiry(ttl_s)
        sig = self._sign(key, "PUT", exp, str(size), ANY_TYPE if content_type is None
                         else content_type)
        any_type = "&ct=any" if content_type is None else ""
        url = self._url(key, f"m=PUT&exp={exp}&max={size}{any_type}&sig={sig}", internal)
        headers = {} if content_type is None else {"Content-Type": content_type}
        return PresignedUpload(url, "PUT", headers, expires_at)

    def presign_download(self, key: str, ttl_s: int, *, internal: bool = False) -> str:
        self.check_key(key)
        exp, _ = _expiry(ttl_s)
        sig = self._sign(key, "GET", exp, "", "")
        return self._url(key, f"m=GET&exp={exp}&sig={sig}", internal)

    @staticmethod
    def _type_path(path: Path) -> Path:
        # Beside the file, hidden (as the upload's temporary file is): the Content-Type its
        # PUT named, where the file system keeps no extended attributes (and files kept
        # before they were used).
        return path.parent / f".{path.name}.content-type"

    async def remember_content_type(self, key: str, content_type: str | None) -> None:
        """Keeps the Content-Type an upload came with (a processor's image/png), or forgets
        an earlier one (None)."""
        await anyio.to_thread.run_sync(self.remember_content_type_at, self.path_for(key),
                                       content_type)

    def remember_content_type_at(self, path: Path, content_type: str | None) -> None:
        """The same for the file at `path` (from path_for), blocking: the /files PUT route
        runs it in the thread call that renames the upload into place.

        Kept as an extended attribute of the file itself, as S3 keeps an object's metadata:
        it goes with the file (a rename, a delete) and costs one system call, where creating
        a hidden file beside it cost about as much CPU as the upload itself (~0.85 ms on
        ext4, measured with bench/job_cost.py). A file system without user attributes gets
        the hidden file."""
        where = self._type_path(path)
        try:
            if content_type:
                os.setxattr(path, TYPE_XATTR, content_type.encode())
            else:
                with contextlib.suppress(OSError):  # none kept: nothing to forget
                    os.removexattr(path, TYPE_XATTR)
        except OSError:  # no user attributes here (ENOTSUP): the hidden file
            if content_type:
                where.write_text(content_type)
                return
        where.unlink(missing_ok=True)  # one kept before attributes were used

    def content_type_at(self, path: Path) -> str | None:
        """The kept Content-Type of the file at `path` (from path_for), blocking: the /files
        GET route reads it in the thread call that stats the file."""
        try:
            return os.getxattr(path, TYPE_XATTR).decode().strip() or None
        except FileNotFoundError:
            return None
        except OSError:  # no attribute (ENODATA) or no attributes here: the hidden file
            pass
        try:
            return self._type_path(path).read_text().strip() or None
        except FileNotFoundError:
            return None

    async def content_type_of(self, key: str) -> str | None:
        return await anyio.to_thread.run_sync(self.content_type_at, self.path_for(key))

    async def missing(self, keys: list[str]) -> list[int]:
        def scan() -> list[int]:
            return [i for i, key in enumerate(keys) if not self.path_for(key).is_file()]

        return await anyio.to_thread.run_sync(scan)

    async def read(self, key: str) -> bytes:
        return await anyio.Path(self.path_for(key)).read_bytes()

    async def delete(self, keys: list[str]) -> None:
        def remove() -> None:
            folders = set()
            for key in keys:
                path = self.path_for(key)
                if not path.is_dir():
                    path.unlink(missing_ok=True)
                    self._type_path(path).unlink(missing_ok=True)
                folders.add(path.parent)
            for folder in folders:  # an emptied folder goes too; a folder in use stays
                if folder != self.root:
                    with contextlib.suppress(OSError):
                        folder.rmdir()

        await anyio.to_thread.run_sync(remove)

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError(f"not a folder prefix: {prefix!r}")
        folder = self.path_for(prefix.rstrip("/"))

        def remove() -> int:
            if not folder.is_dir():
                return 0
            count = sum(1 for path in folder.rglob("*")
                        if path.is_file() and not path.name.startswith("."))
            shutil.rmtree(folder, ignore_errors=True)
            return count

        count: int = await anyio.to_thread.run_sync(remove)
        return count

    async def copy(self, pairs: list[tuple[str, str]]) -> None:
        def copy_all() -> None:
            for source, target in pairs:
                src, dst = self.path_for(source), self.path_for(target)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.parent / f".{dst.name}.{secrets.token_hex(6)}.part"
                shutil.copyfile(src, tmp)  # FileNotFoundError when the source is gone
                tmp.replace(dst)
                self.remember_content_type_at(dst, self.content_type_at(src))

        await anyio.to_thread.run_sync(copy_all)

    async def write(self, key: str, data: bytes) -> None:
        """Atomic: readers see the old file or the new one, never half of it."""
        path = self.path_for(key)
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        tmp = anyio.Path(path.parent / f".{path.name}.{secrets.token_hex(6)}.part")
        await tmp.write_bytes(data)
        await tmp.replace(path)

    def close(self) -> None:
        return None
