"""Request rates per user and plan (docs/reference.md, too_many_requests).

Each request on a user route takes one request from its user's quota of its class, `write`
(POST, PUT, PATCH, DELETE) or `read` (the rest), in one script (lua/rate_limit.lua) on the
user's own bucket, so every API process counts against the same number. The script reads
the plan from the user hash itself: the check is the request's one extra Redis round trip,
batched by the AutoPipeline with whatever else the process sends in that loop turn.
Admin routes and the public paths (probes, metrics, files, callbacks) carry no user and are
not counted.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import Principal
from service.api.problems import problem
from service.errors import TooManyRequests
from service.runtime import Runtime
from service.state.plans import DEFAULT_PLAN, PLANS

WINDOW_S = 60
CLASSES = ("write", "read")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests per WINDOW_S by plan and class; TOLLGATE_RATE_LIMITS may change any of them.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "free": {"write": 60, "read": 600},
    "pro": {"write": 600, "read": 6000},
}


class BadRateLimits(ValueError):
    """Raised at start-up: the TOLLGATE_RATE_LIMITS file cannot be used."""


@dataclass(frozen=True, slots=True)
class RateLimits:
    by_plan: Mapping[str, Mapping[str, int]]

    def script_args(self, klass: str) -> list[str | int]:
        """The script's plan, limit pairs for one class, the default plan's first."""
        plans = [DEFAULT_PLAN, *(name for name in self.by_plan if name != DEFAULT_PLAN)]
        args: list[str | int] = []
        for name in plans:
            args += [name, self.by_plan[name][klass]]
        return args


def load_rate_limits(path: str | None) -> RateLimits:
    """The defaults, with what the TOML file at `path` sets: `[<plan>]` tables of
    `write = N` and `read = N` (requests a minute, N >= 1)."""
    limits = {plan: dict(classes) for plan, classes in DEFAULT_LIMITS.items()}
    if path is None:
        return RateLimits(limits)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadRateLimits(f"TOLLGATE_RATE_LIMITS {path!r}: {exc}") from None
    for plan, table in data.items():
        if plan not in PLANS or not isinstance(table, dict):
            raise BadRateLimits(f"TOLLGATE_RATE_LIMITS: [{plan}] is not a plan table; "
                                f"plans: {', '.join(PLANS)}")
        for klass, value in table.items():
            if klass not in CLASSES:
                raise BadRateLimits(f"TOLLGATE_RATE_LIMITS: [{plan}] {klass!r} is not one of "
                                    f"{', '.join(CLASSES)}")
            if type(value) is not int or value < 1:
                raise BadRateLimits(f"TOLLGATE_RATE_LIMITS: [{plan}] {klass} must be an "
                                    f"integer of at least 1, not {value!r}")
            limits.setdefault(plan, {})[klass] = value
    return RateLimits(limits)


@dataclass(frozen=True, slots=True)
class ApiKeyLimit:
    """The hook for API keys: a key with limits lower than its user's is counted
    on its own as well, and the tighter of the two answers."""

    key_id: str
    by_class: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Decision:
    klass: str
    allowed: bool
    limit: int
    remaining: int
    wait_ms: int  # allowed: until the whole quota is back; refused: until one request is

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The IETF httpapi draft's fields: the policy (quota, window) and its state."""
        seconds = max(1, math.ceil(self.wait_ms / 1000))
        return [
            (b"ratelimit-policy", f'"{self.klass}";q={self.limit};w={WINDOW_S}'.encode()),
            (b"ratelimit", f'"{self.klass}";r={self.remaining};t={seconds}'.encode()),
        ]


async def take_request(rt: Runtime, limits: RateLimits, user_id: str, klass: str,
                       api_key: ApiKeyLimit | None = None) -> Decision:
    """Takes one request of `klass` from the user's quota (and the key's, if any)."""
    user = rt.core.keys.user(user_id)
    keys = {"user": user.base, "rate": user.rate(klass)}
    key_limit = 0
    if api_key is not None:
        keys |= {"key_rate": user.key_rate(api_key.key_id, klass)}
        key_limit = api_key.by_class[klass]
    reply = await rt.core.run_named(
        "rate_limit", keys=keys, args={"window_ms": WINDOW_S * 1000, "key_limit": key_limit,
                                       "plan_limits": limits.script_args(klass)})
    if not isinstance(reply["allowed"], int):  # {'bad_argument', what}: a bug
        raise RuntimeError(f"rate_limit refused its arguments: {reply!r}")
    return Decision(klass, reply["allowed"] == 1, int(reply["limit"]),
                    int(reply["remaining"]), int(reply["wait_ms"]))


class RateLimited(TooManyRequests):
    """429 too_many_requests with the headers that say when to come back."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"more than {decision.limit} {decision.klass} requests in "
                         f"{WINDOW_S} s; retry after the time in Retry-After")
        self.decision = decision


def rate_limited(_: Request[Any, Any, Any], exc: RateLimited) -> Response[Any]:
    response = problem(exc.status, exc.code, exc.title, exc.detail)
    decision = exc.decision
    response.headers["Retry-After"] = str(max(1, math.ceil(decision.wait_ms / 1000)))
    for name, value in decision.headers():
        response.headers[name.decode()] = value.decode()
    return response


def request_class(method: str) -> str:
    return "write" if method in WRITE_METHODS else "read"


def counted(scope: Scope) -> Principal | None:
    """The caller when the request is on a user route: a user token, not an admin route."""
    user = scope.get("user")
    if not isinstance(user, Principal) or scope["path"].startswith("/admin"):
        return None
    return user


def rate_limit_middleware(app: ASGIApp, limits: RateLimits) -> ASGIApp:
    """Refuses a user's request past its quota (429); adds the RateLimit fields to the
    answers of counted requests. Runs inside the JWT middleware, which sets the user."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        principal = counted(scope)
        if principal is None or scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        rt: Runtime = scope["litestar_app"].state.runtime
        decision = await take_request(rt, limits, principal.user_id,
                                      request_class(scope["method"]))
        if not decision.allowed:
            raise RateLimited(decision)
        fields = decision.headers()

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await app(scope, receive, send_with_fields)

    return middleware
