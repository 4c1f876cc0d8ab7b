"""A worker's error text is stored as service.contract.clean_error makes it, whichever side cut
it first: at most MAX_ERROR_CHARS characters, no control characters."""

from __future__ import annotations

from service.contract import MAX_ERROR_CHARS
from tests.api.conftest import Api
from tests.api.flow import callback, queued_job

LONG = "x\x00" + "e" * (3 * MAX_ERROR_CHARS)
STORED = "x " + "e" * (MAX_ERROR_CHARS - 2)


async def test_an_item_error_is_cleaned_and_cut_at_the_contracts_length(api: Api) -> None:
    user = api.user()
    job = await queued_job(api, user, 2)
    answer = await callback(api, job["id"], user, idempotency_key="i0", event="item",
                            item_index=0, ok=False, error=LONG)
    assert answer.status_code == 200, answer.text
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert view["items"][0]["error"] == STORED


async def test_a_failed_batchs_reason_is_cleaned_and_cut_at_the_contracts_length(
    api: Api,
) -> None:
    user = api.user()
    job = await queued_job(api, user, 1)
    answer = await callback(api, job["id"], user, idempotency_key="f", event="failed",
                            error=LONG)
    assert answer.status_code == 200, answer.text
    view = (await api.client.get(f"/jobs/{job['id']}", headers=api.auth(user))).json()
    assert (view["status"], view["reason"]) == ("failed", STORED)
