"""The wire contract's Structs are what crosses between the API and the workers: the
dispatcher's payload decodes in the worker, a worker's report is what the API's callback
schema takes, and each limit is stated once (the Lua script reads MAX_REPORT_ITEMS too)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.api.app import create_app
from service.contract import (
    LUA_CONSTANTS,
    MAX_REPORT_ITEMS,
    BatchItem,
    CallbackIn,
    ItemReportIn,
    batch_payload,
    read_batch,
)
from service.settings import Settings
from service.state.scripts import load_scripts
from workers.jobs import Batch

ITEM = BatchItem(index=0, name="a.png", content_type="image/png", input_url="http://s/in/0",
                 output_url="http://s/out/0", output_key="jobs/j/out/0", size=12)


def payload(**changes: Any) -> dict[str, Any]:
    built = batch_payload(job_id="j", batch_no=0, callback_url="http://api/jobs/j/callback",
                          callback_token="t", lease_ttl_s=60, items=[ITEM], params={"size": 8})
    built.update(changes)
    return built


def test_the_dispatchers_payload_is_plain_json_and_decodes_in_the_worker() -> None:
    built = payload()
    assert msgspec.json.decode(msgspec.json.encode(built)) == built
    wire = read_batch(built)
    assert wire.items == [ITEM] and wire.rq_job_id == "tg-j-0" and wire.params == {"size": 8}
    batch = Batch.from_payload(built)
    assert batch.items == [ITEM] and dict(batch.params) == {"size": 8}


@pytest.mark.parametrize("changes", [
    {"items": [{"index": -1}]},
    {"lease_ttl_s": "sixty"},
    {"lease_ttl_s": 0},
    {"job_id": None},
    {"items": [{**msgspec.to_builtins(ITEM), "output_key": "k" * 1025}]},
])
def test_a_payload_off_the_contract_is_refused_by_name(changes: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        read_batch(payload(**changes))


def test_the_callback_schema_is_the_workers_report() -> None:
    """The API validates reports with the contract's own Structs (no second copy)."""
    app = create_app(Settings(jwt_secret="x" * 32))
    schemas = app.openapi_schema.to_schema()["components"]["schemas"]
    assert set(schemas["CallbackIn"]["properties"]) == set(CallbackIn.__struct_fields__)
    assert set(schemas["ItemReportIn"]["properties"]) == set(ItemReportIn.__struct_fields__)
    report = CallbackIn(event="items", items=[
        ItemReportIn(index=0, ok=False, idempotency_key="j:item:0", error="bad", billable=True)])
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=CallbackIn)
    assert decoded == report
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(
            {"event": "items", "items": [{"index": i, "ok": True, "idempotency_key": f"k{i}"}
                                         for i in range(MAX_REPORT_ITEMS + 1)]}), type=CallbackIn)


def test_lua_reads_the_report_limit_from_the_contract() -> None:
    source = load_scripts()["items_result"].source
    assert f"local MAX_REPORT_ITEMS = {MAX_REPORT_ITEMS}" in source
    assert LUA_CONSTANTS["MAX_REPORT_ITEMS"] == MAX_REPORT_ITEMS
    assert "n > MAX_REPORT_ITEMS" in source  # the bound the script checks is that one
