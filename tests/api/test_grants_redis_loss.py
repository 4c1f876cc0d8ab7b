"""A Redis that lost a user loses its grants too: the rebuild from SQL (credit_grants and
the ledger) places the balance SQL holds back into the grants, the ones a hold draws last
first, and never gives a grant twice. FLUSHALL runs on a redis-server of the test's own.
A grant's expiry comes by tollgate's clock, moved past it (`clock`), not by a wait."""

from __future__ import annotations

from service.cli.audit import run_audit
from service.runtime import open_runtime
from tests.api.conftest import SECRET, Api, Clock
from tests.api.flow import create_job, me
from tests.api.history import flush_everything
from tests.api.test_grants_http import grant, grants_of, in_seconds, ledger_rows
from tests.api.test_redis_loss import flushall, own_api  # noqa: F401
from tests.persistence.conftest import database_url  # noqa: F401


async def test_grants_come_back_from_sql_once(own_api: Api, clock: Clock) -> None:  # noqa: F811
    api, user = own_api, "gia"
    await api.admin_create_user(user, credits=3)  # signup: a promotional grant, no expiry
    soon = in_seconds(2)
    await grant(api, user, 5, kind="promotional", expires_at=soon)
    later = in_seconds(3600)
    await grant(api, user, 10, kind="promotional", expires_at=later)
    await grant(api, user, 10, kind="paid")
    job = await create_job(api, user, 9)  # 5 from the grant expiring soon, 4 from `later`
    canceled = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200
    live = await create_job(api, user, 7)  # 5 + 2: lost with Redis, released by the rebuild
    clock.move_past(soon)
    await flush_everything(api)  # `soon` expired: all 5 of it held by the live job
    before = await grants_of(api, user)
    assert [(g["amount"], g["remaining"]) for g in before] == [(10, 8), (3, 3), (10, 10)]
    assert (await me(api, user))["credits"]["available"] == 21

    await flushall(api)

    # Rebuilt: the live job's hold came back, 2 to `later` and 5 to `soon`, which expired
    # meanwhile: those 5 expire now.
    credits = (await me(api, user))["credits"]
    assert (credits["available"], credits["reserved"]) == (23, 0)
    after = await grants_of(api, user)
    assert {g["id"]: g["remaining"] for g in after} == {
        before[0]["id"]: 10, before[1]["id"]: 3, before[2]["id"]: 10}
    rt = await open_runtime(api.settings, SECRET)
    try:
        report = await run_audit(rt.core, rt.sessions, [user])
        assert report.differences == []
        rows = await ledger_rows(rt, user)
        assert sum(r.amount for r in rows) == 23
        [expired] = [r for r in rows if r.kind == "expire"]
        assert (expired.id.endswith(":rebuilt-0"), expired.amount) == (True, -5)
        assert any(r.id == f"release:{live['id']}" for r in rows)

        # A second loss rebuilds the same, and nothing was granted twice.
        await flushall(api)
        assert (await me(api, user))["credits"]["available"] == 23
        assert {g["id"]: g["remaining"] for g in await grants_of(api, user)} == {
            before[0]["id"]: 10, before[1]["id"]: 3, before[2]["id"]: 10}
        await flush_everything(api)
        assert (await run_audit(rt.core, rt.sessions, [user])).differences == []
    finally:
        await rt.close()


async def test_a_grant_that_expired_while_redis_was_gone_expires_at_the_rebuild(
        own_api: Api, clock: Clock) -> None:  # noqa: F811
    api, user = own_api, "gus"
    await api.admin_create_user(user, credits=0)
    soon = in_seconds(2)
    await grant(api, user, 6, kind="promotional", expires_at=soon)
    await grant(api, user, 4, kind="paid")
    await flush_everything(api)
    await flushall(api)  # before the flusher expired anything
    clock.move_past(soon)
    credits = (await me(api, user))["credits"]
    assert credits["available"] == 4 and credits["granted"] == 4
    [paid] = await grants_of(api, user)
    assert (paid["kind"], paid["remaining"]) == ("paid", 4)
    rt = await open_runtime(api.settings, SECRET)
    try:
        expired = [(r.id.rsplit(":", 1)[-1], r.amount) for r in await ledger_rows(rt, user)
                   if r.kind == "expire"]
        assert expired == [("rebuilt-0", -6)]
        counted = await rt.core.client.hget(rt.core.keys.user(user).bucket.counters,
                                            "credits:expire")
        assert int(counted or 0) == 6  # tollgate_credits_total{kind="expire"}
        assert (await run_audit(rt.core, rt.sessions, [user])).differences == []
    finally:
        await rt.close()
