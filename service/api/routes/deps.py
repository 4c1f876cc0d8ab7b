"""What route handlers get injected: the process's Runtime and the caller."""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from service.api.auth import Principal
from service.runtime import Runtime

UserRequest: TypeAlias = Request[Principal, Any, Any]


def runtime_of(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


DEPENDENCIES = {"rt": Provide(runtime_of, sync_to_thread=False)}
