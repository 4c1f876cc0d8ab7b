"""A batch's inputs: streamed to spool files, grouped so that a group's declared sizes fit
TOLLGATE_WORKER_MAX_BATCH_BYTES.

A download writes its body as it arrives: in memory up to SPOOL_IN_MEMORY, past that into a
file of the group's spool folder (deleted with the group), so no input has to fit in memory.
The processor reads it lazily through its `Item` (`data`, `path`, `open()`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from service.contract import BatchItem
from workers.callbacks import CallbackError, RetryingClient
from workers.processors import NO_PARAMS, STOPPED, Item, JobStopped, Output

# An input up to this size stays in memory; a larger one is spooled to a file as it arrives.
SPOOL_IN_MEMORY = 1024 * 1024
DOWNLOAD_CHUNK = 256 * 1024


class InputTooLarge(Exception):
    """The input has more bytes than its job declared (and storage should have refused)."""


class Spool:
    """One download's bytes: in memory up to SPOOL_IN_MEMORY, then in a file of `folder`."""

    def __init__(self, folder: str, limit: int | None, stop: threading.Event | None) -> None:
        self.folder, self.limit, self.stop = folder, limit, stop
        self.buffer = bytearray()
        self.size = 0
        self.path: str | None = None
        self._file: Any = None

    def write(self, chunk: bytes) -> None:
        if self.stop is not None and self.stop.is_set():
            raise JobStopped(STOPPED)
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise InputTooLarge(f"the input is larger than its declared {self.limit} bytes")
        if self._file is None and len(self.buffer) + len(chunk) <= SPOOL_IN_MEMORY:
            self.buffer += chunk
            return
        if self._file is None:
            fd, self.path = tempfile.mkstemp(prefix="in-", dir=self.folder)
            self._file = os.fdopen(fd, "wb")
            self._file.write(self.buffer)
            self.buffer = bytearray()
        self._file.write(chunk)

    def fill(self, response: httpx.Response) -> Spool:
        try:
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                self.write(chunk)
        finally:
            if self._file is not None:
                self._file.close()
        return self

    def item(self, spec: BatchItem, params: Mapping[str, Any]) -> Item:
        if self.path is not None:
            return Item(spec.index, spec.name, spec.content_type, None, params, path=self.path,
                        spool_dir=self.folder, stop=self.stop)
        return Item(spec.index, spec.name, spec.content_type, bytes(self.buffer), params,
                    spool_dir=self.folder, stop=self.stop)


def download(http: RetryingClient, spec: BatchItem, params: Mapping[str, Any] = NO_PARAMS,
             *, folder: str | None = None, stop: threading.Event | None = None) -> Item | Output:
    """The input streamed into a Spool under `folder` (the system's temp folder if None)."""
    where = folder or tempfile.gettempdir()
    try:
        response, spool = http.stream_get(
            spec.input_url, lambda answer: Spool(where, spec.size, stop).fill(answer))
    except CallbackError as exc:
        return Output.failed(spec.index, f"download failed: {exc}")
    except InputTooLarge as exc:
        return Output.failed(spec.index, f"download failed: {exc}")
    if spool is None:
        return Output.failed(spec.index, f"download failed: HTTP {response.status_code}")
    return spool.item(spec, params)


def item_groups(items: list[BatchItem], max_bytes: int | None) -> Iterator[list[BatchItem]]:
    """The batch's items in order, in groups whose declared sizes add up to at most
    `max_bytes` (an item larger than that is a group alone); one group when None."""
    if max_bytes is None:
        if items:
            yield items
        return
    group: list[BatchItem] = []
    held = 0
    for spec in items:
        size = spec.size or 0
        if group and held + size > max_bytes:
            yield group
            group, held = [], 0
        group.append(spec)
        held += size
    if group:
        yield group
