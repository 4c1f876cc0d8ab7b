"""Provisioning: a valid token of an unknown user creates it on the free plan.

Lazily: a request costs nothing extra for a known user; the scripts that need the user
(reserve, rule_slot_take) answer not_found for an unknown one, and the caller provisions and
retries. SQL is written first: the users row and, for a new user only, its signup ledger
entry. The Redis record is then built from SQL: the plan from `users`, the balance from the
ledger. So a user whose Redis record was lost (a restart without persistence, a failover) is
rebuilt with the balance it had, and never gets its signup credits twice. Jobs that were
live in the lost Redis, or finished and not flushed yet, left a hold in the ledger with no
release: they are refunded in full (a release entry), and every job the ledger names without
a jobs_log row gets one (`canceled`, reason `lost_with_redis`), so its owner finds it, as the
README says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import NotFound
from service.history.balances import (
    LedgerTotals,
    credit_grant_row,
    expire_row,
    insert_grant,
    ledger_totals,
    refund_open_holds,
    signup_row,
    user_grants,
    user_plan,
    write_lost_jobs,
)
from service.history.models import CreditGrant
from service.history.queries import ensure_user_row, insert_ledger
from service.jobs.alerts import restore_alerts
from service.jobs.apikeys import restore_keys
from service.runtime import Runtime
from service.state.plans import DEFAULT_PLAN, PLANS
from service.state.store import now_ms
from service.state.users import Grant, grant_id

T = TypeVar("T")

# The reason on the release of a job that Redis lost while it was live.
LOST_JOB_REASON = "lost_with_redis"


async def provision_user(rt: Runtime, user_id: str, *, plan: str = DEFAULT_PLAN,
                         credits: int | None = None) -> bool:
    """Makes sure SQL and Redis know the user; True when the user is new (its signup
    credits: `credits`, by default TOLLGATE_SIGNUP_CREDITS)."""
    credits = rt.settings.signup_credits if credits is None else credits
    async with rt.sessions() as session, session.begin():
        created = await ensure_user_row(session, user_id, plan)
        if created and credits > 0:
            signup = signup_row(user_id, credits)
            await insert_ledger(session, [signup])
            # Signup credits are a promotional grant that never expires.
            await insert_grant(session, credit_grant_row(
                grant_id(user_id, "signup"), user_id, "promotional", credits, None,
                signup["id"]))
    await restore_user(rt, user_id, signup_credits=credits if created else 0)
    return created


async def restore_user(rt: Runtime, user_id: str, *, signup_credits: int = 0) -> None:
    """Builds the user's Redis record from SQL, unless Redis has one (`signup_credits`: what
    SQL's ledger just granted a new user, for tollgate_credits_total)."""
    if await rt.core.user_exists(user_id):
        return
    async with rt.sessions() as session, session.begin():
        plan = await user_plan(session, user_id) or DEFAULT_PLAN
        await refund_open_holds(session, user_id, LOST_JOB_REASON)
        await write_lost_jobs(session, user_id, LOST_JOB_REASON)
        grants, expired = await place_grants(
            session, user_id, (await ledger_totals(session, [user_id])).get(user_id))
        totals = (await ledger_totals(session, [user_id])).get(user_id)
    available = totals.total if totals else 0
    spent = -totals.charges if totals else 0
    # Its API keys and their period spend first: no reserve runs before the user's record.
    await restore_keys(rt, user_id)
    await rt.core.restore_user(user_id, PLANS.get(plan, PLANS[DEFAULT_PLAN]),
                               available=available, spent=spent, granted=available + spent,
                               signup_credits=signup_credits, grants=grants, expired=expired)
    await restore_alerts(rt, user_id)  # settings from SQL, fired state from the balance


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _burn_down(grant: CreditGrant) -> tuple[int, bool, int, str]:
    """The order a hold draws grants (lua/includes/grants.lua)."""
    return (_ms(grant.expires_at) or 2**63, grant.kind != "promotional",
            _ms(grant.created_at) or 0, grant.id)


async def place_grants(session: AsyncSession, user_id: str, totals: LedgerTotals | None
                       ) -> tuple[list[Grant], int]:
    """The user's grants for its rebuilt Redis record: SQL knows each grant and what
    expired of it, not what each one lost to charges and removals. The balance SQL holds is
    placed into the grants a hold would draw last first (no expiry, paid, newest), up to
    what each one had left once its expiries are taken; what is placed into a grant past
    its expiry expires now (an `expire:<grant id>:rebuilt-<n>` row, n: what had expired of
    it before, so a second rebuild from the same SQL writes the same row once). What no
    grant takes stays as the base (credits from before grants). Returns the open grants
    and what expired now. Never gives a grant twice: the total is SQL's balance."""
    balance = max(totals.total if totals else 0, 0)
    now = now_ms()
    found = await user_grants(session, user_id)
    found.sort(key=lambda pair: _burn_down(pair[0]), reverse=True)
    live = [(g, x) for g, x in found if (_ms(g.expires_at) or 2**63) > now]
    past = [(g, x) for g, x in found if (_ms(g.expires_at) or 2**63) <= now]
    placed: list[Grant] = []
    expired_now = 0
    for grant, expired in [*live, *past]:
        share = min(balance, max(grant.amount - expired, 0))
        if share <= 0:
            continue
        balance -= share
        if (_ms(grant.expires_at) or 2**63) <= now:
            await insert_ledger(session, [expire_row(user_id, grant.id, share,
                                                     f"rebuilt-{expired}")])
            expired_now += share
            continue
        placed.append(Grant(grant.id, grant.kind, grant.amount, share, 0,
                            grant.amount - expired - share, expired, 0, _ms(grant.expires_at),
                            _ms(grant.created_at) or now))
    return placed, expired_now


async def rebuild_if_lost(rt: Runtime, user_id: str) -> bool:
    """For a read that found nothing (GET of a job): a user SQL knows and Redis lost is
    rebuilt now, so that its lost jobs have their rows; True when it was. A user SQL does
    not know is left alone (its first request provisions it)."""
    if await rt.core.user_exists(user_id):
        return False
    async with rt.sessions() as session:
        if await user_plan(session, user_id) is None:
            return False
    await restore_user(rt, user_id)
    return True


async def as_known_user(rt: Runtime, user_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """Runs `call`; when it finds no such user (a first request, or a Redis that lost the
    record), provisions the user and runs it once more."""
    try:
        return await call()
    except NotFound:
        await provision_user(rt, user_id)
        return await call()
