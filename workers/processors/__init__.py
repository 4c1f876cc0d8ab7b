"""The processor protocol: a batch of items in, one output per item out.

A processor gets a whole batch so a GPU processor can stack it into one tensor. It reports
a bad item in that item's `Output.error`; an exception for the whole batch makes the worker
retry the batch item by item, so one bad item fails only itself.

A processor may have a `setup()` method (load weights, warm CUDA): the worker calls it once
per process before the first batch, never per batch. A spec that names a class gets an
instance of it, made once per process.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Item:
    """One input. `params`: the job's params (a rule's, or the job's own), read-only and the
    same for every item of the job, checked against the model's params_schema by the API;
    a field the schema gives a default may be absent, so read it with `.get(name, default)`."""

    index: int
    name: str
    content_type: str
    data: bytes
    params: Mapping[str, Any] = field(default_factory=lambda: NO_PARAMS)


@dataclass(frozen=True, slots=True)
class Output:
    index: int
    data: bytes | None
    content_type: str
    error: str | None = None

    @classmethod
    def failed(cls, index: int, error: str) -> Output:
        return cls(index, None, "", error)


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
