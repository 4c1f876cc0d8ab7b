"""The client's generated modules are current: sync.py is aio.py translated, codes.py is
service/errors.py's table; and the problem map gives every code of that table its class."""

from __future__ import annotations

import inspect

import httpx
import pytest

from service.client import (
    AsyncTollgate,
    ConcurrencyLimit,
    InsufficientCredits,
    InvalidTransition,
    NotFound,
    ProblemError,
    Tollgate,
    Unauthorized,
    Unavailable,
    UploadsMissing,
    ValidationFailed,
)
from service.client.problems import problem_from
from service.errors import TollgateError, error_table
from tests.client.regenerate import COMMAND, generated, unasync


@pytest.mark.parametrize("name", ["sync.py", "codes.py"])
def test_the_generated_module_is_current(name: str) -> None:
    path, text = next((path, text) for path, text in generated().items() if path.name == name)
    assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run {COMMAND}"


def test_a_name_without_a_blocking_counterpart_stops_the_translation() -> None:
    source = '"""Doc."""\nimport asyncio\n\n\nasync def f() -> None:\n    await asyncio.sleep(1)\n'
    with pytest.raises(ValueError, match="asyncio"):
        unasync(source)
    translated = unasync(source.replace("import asyncio", "").replace("asyncio.sleep", "pause"))
    assert "def f() -> None:\n    pause(1)\n" in translated and "async" not in translated


def test_both_clients_have_the_same_calls_with_the_same_parameters() -> None:
    def calls(cls: type) -> dict[str, list[tuple[str, object, object]]]:
        return {name.removeprefix("a") if name == "aclose" else name: [
            (p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
            for name, method in vars(cls).items()
            if callable(method) and not name.startswith("_")}

    blocking, awaited = calls(Tollgate), calls(AsyncTollgate)
    assert {"run", "wait", "retry", "deliveries", "redeliver", "events", "list"} <= set(awaited)
    assert blocking == awaited


EXPECTED: dict[str, type[ProblemError]] = {
    "unauthorized": Unauthorized, "not_found": NotFound,
    "insufficient_credits": InsufficientCredits, "concurrency_limit": ConcurrencyLimit,
    "invalid_transition": InvalidTransition, "uploads_missing": UploadsMissing,
    "unavailable": Unavailable,
}


@pytest.mark.parametrize("error", error_table(), ids=lambda error: error.code)
def test_every_code_of_the_server_raises_its_class(error: type[TollgateError]) -> None:
    code, status = error.code, error.status
    response = httpx.Response(status, json={"code": code, "title": "t", "detail": "d"})
    raised = problem_from(response)
    expected = EXPECTED.get(code) or (ValidationFailed if status in (400, 422)
                                      else ProblemError)
    assert type(raised) is expected
    assert (raised.status, raised.code, raised.detail) == (status, code, "d")


def test_a_code_the_client_does_not_know_falls_back_on_its_status() -> None:
    newer = problem_from(httpx.Response(422, json={"code": "from_a_newer_server"}))
    assert type(newer) is ValidationFailed and newer.code == "from_a_newer_server"
    proxy = problem_from(httpx.Response(502, text="<html>bad gateway</html>"))
    assert type(proxy) is ProblemError and proxy.code == "http_error"
