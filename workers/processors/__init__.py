"""The processor protocol: a batch of items in, one output per item out.

A processor gets a batch so a GPU processor can stack it into one tensor: the RQ job's
items, or as many of them as fit TOLLGATE_WORKER_MAX_BATCH_BYTES of declared input (an item
larger than that comes alone). Each `Item` reads its bytes lazily (`data`, `path`, `open()`),
so only what the processor reads is in memory. It reports
a bad item in that item's `Output.error`; an exception for the whole batch makes the worker
retry the batch item by item, so one bad item fails only itself.

A processor may have a `setup()` method (load weights, warm CUDA): the worker calls it once
per process before the first batch, never per batch. A spec that names a class gets an
instance of it, made once per process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO

NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


STOPPED = "job closed: its lease renewal was refused (canceled or finished)"


class JobStopped(Exception):
    """The job was canceled (or finished) while its batch ran: reading the next item's bytes
    raises this, so the processor stops within one item. The worker catches it, uploads and
    reports nothing more. A processor should let it through (it is no OSError/ValueError)."""


class Item:
    """One input, its bytes read lazily from the worker's spool.

    `index`, `name`, `content_type`, `size` (bytes). `params`: the job's params (a rule's, or
    the job's own), read-only and the same for every item of the job, checked against the
    model's params_schema by the API; a field the schema gives a default may be absent, so
    read it with `.get(name, default)`.

    The input itself, three ways (the worker streams every input to a spool file first,
    keeping only small ones in memory, so a batch never has to fit in memory whole):
    - `item.data`: the bytes; read from the spool file on first access, then kept until the
      item's group is done;
    - `item.path`: a local file holding them, for a library that takes a file name or reads
      only what it needs (`PIL.Image.open(item.path)` reads the header first; ffmpeg, numpy
      memmap); a small in-memory input is written to a file on first access;
    - `item.open()`: a binary file object over them (close it, or use `with`).
    Reading `data` or `path` after the job was canceled raises `JobStopped`.
    """

    __slots__ = ("_data", "_made_file", "_path", "_size", "_spool_dir", "_stop",
                 "content_type", "index", "name", "params")

    def __init__(self, index: int, name: str, content_type: str, data: bytes | None = None,
                 params: Mapping[str, Any] = NO_PARAMS, *,
                 path: str | os.PathLike[str] | None = None, spool_dir: str | None = None,
                 stop: threading.Event | None = None) -> None:
        if (data is None) == (path is None):
            raise ValueError("an Item takes its bytes (data) or a file (path), one of them")
        self.index = index
        self.name = name
        self.content_type = content_type
        self.params = params
        self._data = data
        self._path = None if path is None else os.fspath(path)
        self._size = len(data) if data is not None else os.path.getsize(self._path or "")
        self._spool_dir = spool_dir
        self._made_file = False
        self._stop = stop

    def __repr__(self) -> str:
        return (f"Item(index={self.index}, name={self.name!r}, "
                f"content_type={self.content_type!r}, size={self._size})")

    @property
    def size(self) -> int:
        return self._size

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise JobStopped(STOPPED)

    @property
    def data(self) -> bytes:
        self._check_stop()
        if self._data is None:
            with open(self._path or "", "rb") as file:
                self._data = file.read()
        return self._data

    @property
    def path(self) -> str:
        self._check_stop()
        if self._path is None:
            fd, path = tempfile.mkstemp(prefix="tollgate-item-", dir=self._spool_dir)
            with os.fdopen(fd, "wb") as file:
                file.write(self._data or b"")
            self._path, self._made_file = path, True
        return self._path

    def open(self) -> BinaryIO:
        self._check_stop()
        if self._path is not None:
            return open(self._path, "rb")
        return io.BytesIO(self._data or b"")

    def release(self) -> None:
        """Drops the bytes kept in memory and a file this item made itself (the worker's
        spool folder holds the others)."""
        if self._path is not None:
            self._data = None
        if self._made_file and self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path, self._made_file = None, False


@dataclass(frozen=True, slots=True)
class Output:
    index: int
    data: bytes | None
    content_type: str
    error: str | None = None

    # A failure caused by the input, found after the work was done (a truncated image that
    # decoded for seconds): charged like a result when the job's model has
    # `bill_input_errors = true`, free otherwise. Exceptions and timeouts stay free.
    billable: bool = False

    @classmethod
    def failed(cls, index: int, error: str, billable: bool = False) -> Output:
        return cls(index, None, "", error, billable)


Processor = Callable[[list[Item]], list[Output]]


def load_processor(spec: str) -> Processor:
    """Resolves "package.module:function" (TOLLGATE_PROCESSOR) to a callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"processor {spec!r} is not of the form 'module:function'")
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if isinstance(target, type):  # a class: its instance is the processor
        target = target()
    if not callable(target):
        raise TypeError(f"processor {spec!r} is not callable")
    processor: Processor = target
    return processor


_SETUP_LOCK = threading.Lock()
# Processors whose setup() ran in this process, by id (the value keeps the id from reuse).
# A forked work-horse inherits a copy: what its parent set up stays set up in it.
_SET_UP: dict[int, object] = {}


def ensure_setup(processor: Processor) -> bool:
    """Runs the processor's `setup()` unless it ran in this process; True when it ran now.

    An exception leaves it not set up, so the next batch tries again.
    """
    setup = getattr(processor, "setup", None)
    if setup is None or id(processor) in _SET_UP:
        return False
    with _SETUP_LOCK:
        if id(processor) in _SET_UP:
            return False
        setup()
        _SET_UP[id(processor)] = processor
    return True
