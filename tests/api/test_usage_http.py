"""GET /me/usage and GET /admin/usage (docs/billing.md, "Usage statement"): the figures of
flushed jobs by the UTC day they finished, by model and by key, as JSON and as CSV; the
same on every Redis set-up (standalone with PostgreSQL, fakeredis and a Cluster on SQLite),
since the statement reads SQL only."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from service.history.models import JobLog, LedgerEntry
from service.runtime import Runtime
from tests.api.conftest import Api
from tests.api.flow import create_job, queued_job, report_item
from tests.api.history import flush_everything

TODAY = datetime.now(UTC).date()


async def finished_job(api: Api, user: str, n: int, failed: tuple[int, ...] = ()) -> str:
    job = await queued_job(api, user, n)
    for index in range(n):
        await report_item(api, job["id"], user, index, ok=index not in failed)
    return str(job["id"])


async def move_to(rt: Runtime, job_id: str, at: datetime) -> None:
    """As if the job had finished at `at`: its row and its ledger rows (written at the same
    instant by finish_job.lua) move together."""
    async with rt.sessions() as session, session.begin():
        await session.execute(update(JobLog).where(JobLog.id == job_id).values(finished_at=at))
        await session.execute(update(LedgerEntry).where(LedgerEntry.job_id == job_id)
                              .values(at=at))


async def ledger_charges_by_day(rt: Runtime, user: str) -> dict[str, int]:
    """The oracle: the user's `charge` rows in the credit ledger, summed by UTC day."""
    async with rt.sessions() as session:
        rows = (await session.execute(select(LedgerEntry.at, LedgerEntry.amount).where(
            LedgerEntry.user_id == user, LedgerEntry.kind == "charge"))).all()
    days: dict[str, int] = defaultdict(int)
    for at, amount in rows:
        days[at.astimezone(UTC).date().isoformat()] -= int(amount)
    return dict(days)


async def usage(api: Api, user: str, first: date, last: date, group_by: str = "day",
                **headers: str) -> Any:
    response = await api.client.get("/me/usage", params={
        "from": first.isoformat(), "to": last.isoformat(), "group_by": group_by},
        headers={**api.auth(user), **headers})
    assert response.status_code == 200, response.text
    return response


async def test_charged_per_day_equals_the_ledger_and_csv_holds_the_same_rows(
        any_api: Api, rt: Runtime) -> None:
    api, user = any_api, any_api.user()
    await api.admin_create_user(user, plan="pro", credits=100)
    jobs = [await finished_job(api, user, 3),  # charged 3
            await finished_job(api, user, 4, failed=(1, 2)),  # charged 2, refunded 2
            await finished_job(api, user, 2, failed=(0, 1)),  # charged 0, refunded 2
            await finished_job(api, user, 5, failed=(4,))]  # charged 4, refunded 1
    unflushed = await create_job(api, user, 1)  # held, not finished: not in any statement
    await flush_everything(api)
    # Spread over three UTC days, two of them on either side of a midnight.
    midnight = datetime.combine(TODAY - timedelta(days=1), datetime.min.time(), UTC)
    await move_to(rt, jobs[0], midnight - timedelta(microseconds=1))  # day -2, last instant
    await move_to(rt, jobs[1], midnight)  # day -1, first instant
    await move_to(rt, jobs[2], midnight + timedelta(hours=5))

    first, last = TODAY - timedelta(days=3), TODAY
    statement = (await usage(api, user, first, last)).json()
    oracle = await ledger_charges_by_day(rt, user)
    assert {item["period"]: item["charged"] for item in statement["items"]} == oracle
    assert statement["items"] == [
        {"period": (TODAY - timedelta(days=2)).isoformat(), "jobs": 1, "items": 3,
         "charged": 3, "refunded": 0},
        {"period": (TODAY - timedelta(days=1)).isoformat(), "jobs": 2, "items": 6,
         "charged": 2, "refunded": 4},
        {"period": TODAY.isoformat(), "jobs": 1, "items": 5, "charged": 4, "refunded": 1}]
    assert statement["totals"] == {"jobs": 4, "items": 14, "charged": 9, "refunded": 5}
    assert unflushed["id"] not in jobs
    # The days given are included, and only they.
    yesterday = TODAY - timedelta(days=1)
    assert [item["period"] for item in (await usage(api, user, yesterday, yesterday)).json()[
        "items"]] == [yesterday.isoformat()]

    by_model = (await usage(api, user, first, last, "model")).json()
    assert by_model["items"] == [{"model": "thumbnail", "jobs": 4, "items": 14, "charged": 9,
                                  "refunded": 5}]
    by_key = (await usage(api, user, first, last, "key")).json()
    assert by_key["items"] == [{"key_id": None, "jobs": 4, "items": 14, "charged": 9,
                                "refunded": 5}]  # JWT calls: no key

    answer = await usage(api, user, first, last, Accept="text/csv")
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    lines = list(csv.reader(io.StringIO(answer.text)))
    assert lines[0] == ["period", "jobs", "items", "charged", "refunded"]
    assert lines[1:] == [[item["period"], str(item["jobs"]), str(item["items"]),
                          str(item["charged"]), str(item["refunded"])]
                         for item in statement["items"]]
    assert answer.text.endswith("\r\n")
    keys = list(csv.reader(io.StringIO(
        (await usage(api, user, first, last, "key", Accept="text/csv")).text)))
    assert keys == [["key_id", "jobs", "items", "charged", "refunded"], ["", "4", "14", "9", "5"]]


async def test_a_user_sees_only_their_own_jobs_and_an_admin_sees_every_user(
        any_api: Api) -> None:
    api = any_api
    alice, bob = api.user(), api.user()
    for user in (alice, bob):
        await api.admin_create_user(user, plan="pro", credits=50)
    await finished_job(api, alice, 2)
    await finished_job(api, bob, 3, failed=(0,))
    await flush_everything(api)
    span = {"from": TODAY.isoformat(), "to": TODAY.isoformat()}

    mine = (await usage(api, alice, TODAY, TODAY)).json()
    assert mine["totals"] == {"jobs": 1, "items": 2, "charged": 2, "refunded": 0}
    admin = api.auth("root", admin=True)
    one = await api.client.get("/admin/usage", params={**span, "user_id": bob}, headers=admin)
    assert one.status_code == 200, one.text
    assert one.json()["totals"] == {"jobs": 1, "items": 3, "charged": 2, "refunded": 1}
    # Across users: other tests' users may share this database, so compare with both.
    every = await api.client.get("/admin/usage", params={**span, "group_by": "model"},
                                 headers=admin)
    assert every.status_code == 200, every.text
    assert every.json()["totals"]["jobs"] >= 2
    assert every.json()["totals"]["charged"] >= 4
    nobody = await api.client.get("/admin/usage", params={**span, "user_id": "nobody"},
                                  headers=admin)
    assert nobody.json() == {"items": [], "totals": {"jobs": 0, "items": 0, "charged": 0,
                                                      "refunded": 0}}
    refused = await api.client.get("/admin/usage", params=span, headers=api.auth(alice))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    anonymous = await api.client.get("/me/usage", params=span)
    assert anonymous.status_code == 401


async def test_bad_ranges_and_groupings_are_422_with_a_code(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    await api.admin_create_user(user)

    async def status(**params: str) -> tuple[int, str | None]:
        response = await api.client.get("/me/usage", params=params, headers=api.auth(user))
        return response.status_code, response.json().get("code")

    year = {"from": "2024-01-01", "to": "2024-12-31"}  # 366 days (a leap year)
    assert await status(**year) == (200, None)
    assert await status(**{**year, "to": "2025-01-01"}) == (422, "validation_error")
    assert await status(**{"from": "2026-03-02", "to": "2026-03-01"}) == (
        422, "validation_error")
    assert await status(**year, group_by="week") == (422, "validation_error")
    for bad in ("2026-02-30", "2026-13-01", "0000-01-01", "2026-3-1", "20260301", "",
                "2026-03-01T00:00", "2026-03-01\n",
                "\u0662\u0660\u0662\u0666-03-01"):  # Arabic-Indic digits
        assert await status(**{"from": bad, "to": "2026-03-31"}) == (
            422, "validation_error"), bad
    assert await status(to="2026-03-01") == (422, "validation_error")  # no from
    assert await status(**{"from": "2026-03-01"}) == (422, "validation_error")  # no to
    # The edges of the calendar are no 500.
    assert await status(**{"from": "9999-12-01", "to": "9999-12-31"}) == (200, None)
    assert await status(**{"from": "0001-01-01", "to": "0001-12-31"}) == (200, None)
    detail = await api.client.get("/me/usage", params={"from": "2026-01-01", "to": "2027-06-01"},
                                  headers=api.auth(user))
    assert "366" in detail.json()["detail"]


async def test_both_clients_read_the_statement_and_its_csv(embedded_api: Api) -> None:
    from service.client import AsyncTollgate, Tollgate, ValidationFailed

    api, user = embedded_api, embedded_api.user()
    await api.admin_create_user(user, plan="pro", credits=20)
    await finished_job(api, user, 3, failed=(2,))
    await flush_everything(api)
    raw = (await usage(api, user, TODAY, TODAY, "model")).json()
    async with AsyncTollgate(api.url, api.token(user)) as client:
        assert await client.usage(TODAY, TODAY.isoformat(), group_by="model") == raw
        assert (await client.usage_csv(TODAY, TODAY)).splitlines() == [
            "period,jobs,items,charged,refunded", f"{TODAY.isoformat()},1,3,2,1"]
        try:
            await client.usage(TODAY, TODAY - timedelta(days=1))
        except ValidationFailed as refused:
            assert refused.status == 422
        else:
            raise AssertionError("from after to was accepted")
    with Tollgate(api.url, api.token(user)) as blocking:  # the server runs in its own thread
        assert blocking.usage(TODAY, TODAY, group_by="model") == raw
