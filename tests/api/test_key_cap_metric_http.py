"""`tollgate_key_cap_refusals_total` counts each create an API key's spend cap refused
(402 `key_spend_cap_exceeded`), and nothing else: a create within the cap and a create
refused for the balance leave it alone."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_business_metrics import scrape, value
from tests.api.test_keys_http import bearer, new_key, post_job


async def test_each_cap_refusal_counts_once(embedded_api: Api) -> None:
    api = embedded_api
    user = api.user()
    await api.admin_create_user(user, plan="pro", credits=3)
    key = await new_key(api, user, spend_cap={"credits": 2, "period": "day"})
    before = value(await scrape(api), "tollgate_key_cap_refusals_total")

    assert (await post_job(api, bearer(key["secret"]), 2)).status_code == 201
    for _ in range(2):
        refused = await post_job(api, bearer(key["secret"]))
        assert refused.status_code == 402 and refused.json()["code"] == "key_spend_cap_exceeded"
    assert value(await scrape(api), "tollgate_key_cap_refusals_total") == before + 2

    short = await post_job(api, api.auth(user), 2)  # the balance (1 left), not the cap
    assert short.status_code == 402 and short.json()["code"] == "insufficient_credits"
    assert value(await scrape(api), "tollgate_key_cap_refusals_total") == before + 2
