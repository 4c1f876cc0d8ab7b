"""Reserve, and what a user would build instead: the same operation (check credits and
concurrency, hold the credits, take a slot, create the job record) done

  (a) by tollgate's Lua script through `Core.reserve`,
  (b) with redis-py WATCH/MULTI optimistic transactions on the same keys (retries counted),
  (c) in PostgreSQL, one transaction with SELECT ... FOR UPDATE on the user's row, with
      synchronous_commit off (the baseline: durability closest to a Redis without fsync
      per write) and on (the PostgreSQL default),

all under contention (`--tasks` concurrent callers on `--users` users), in one process and
run. Every user can afford exactly `affordable` jobs: half of them run out of credits, half
out of concurrency slots, and every user gets 25 % more attempts than that. Afterwards each
variant is checked: successes == affordable for every user, granted == available +
reserved, reserved == successes x cost, active jobs == successes <= the limit.

Each variant's attempts run in `--rounds` slices taking turns with the other variants; a
row's ratio is the median of its per-round ratios to the baseline. Every caller has a
connection of its own in every variant. Besides ops/s each row carries the CPU time per
attempt of this client process and of the server: Redis (INFO cpu) or the connections'
PostgreSQL backends (/proc; the WAL writer is not counted), and `server_cpu_ratio`, the
baseline's server CPU per attempt over the row's: the ratio once the server, not a client,
is what runs out. On a small machine client and server share the CPUs, so ops/s follows
their sum.

    python bench/reserve_alternatives.py [--quick] [--postgres-dsn DSN] [--rounds 5]

The PostgreSQL variants run in a fresh database created (and dropped) on the server of
`--postgres-dsn`; the Redis variants under a fresh key prefix, deleted after.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/reserve_alternatives.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql
from redis.asyncio import Redis
from redis.exceptions import WatchError

from bench.common import (
    DEFAULT_POSTGRES_DSN,
    Baseline,
    Result,
    Row,
    Timing,
    base_parser,
    closed_loop,
    event_loop_name,
    fresh_prefix,
    machine_info,
    median,
    process_cpu_seconds,
    report,
    run,
)
from bench.redis_side import (
    ServerCounters,
    add_private_redis_option,
    connect,
    delete_prefix,
    redis_facts,
)
from bench.stack import private_redis
from service.errors import ConcurrencyLimit, InsufficientCredits
from service.state.keys import JobKeys, KeySpace
from service.state.plans import Plan
from service.state.store import Core, now_ms

NAME = "reserve_alternatives"
TOTAL, PRICE = 2, 5
COST = TOTAL * PRICE
HOLD_MS = 900_000
META = '[{"input": "in/0"}, {"input": "in/1"}]'
LUA_TARGET = 5.0

# Outcomes, as the Lua script names them.
OK, NO_CREDITS, NO_SLOT = "ok", "insufficient_credits", "concurrency_limit"


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    credits: int
    max_active: int

    @property
    def affordable(self) -> int:
        return min(self.credits // COST, self.max_active)


def accounts(tag: str, users: int, affordable: int) -> list[Account]:
    """Even users run out of credits first, odd users out of concurrency slots."""
    return [
        Account(f"{tag}{i}", affordable * COST, affordable * 2) if i % 2 == 0
        else Account(f"{tag}{i}", affordable * 2 * COST, affordable)
        for i in range(users)
    ]


Reserve = Callable[[Account, str], Awaitable[str]]


@dataclass(slots=True)
class Variant:
    """One way to reserve, with its users and its attempts: round-robin over the users, 25 %
    more per user than it can afford. The attempts run in slices, one per round, so the
    variants take turns and a slow spell of a shared machine hits them alike."""

    label: str
    reserve: Reserve
    people: list[Account]
    keys: KeySpace
    attempts: list[tuple[Account, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    rounds: list[Timing] = field(default_factory=list)
    server_cpu_seconds: float | None = 0.0  # Redis, or the PostgreSQL backends
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        per_user = math.ceil(max(a.affordable for a in self.people) * 1.25)
        self.attempts = [(account, self.keys.new_job_id(account.user_id))
                         for _ in range(per_user) for account in self.people]

    async def run_round(self, index: int, of: int, tasks: int) -> Timing:
        low = len(self.attempts) * index // of
        high = len(self.attempts) * (index + 1) // of

        async def attempt(i: int) -> None:
            account, job_id = self.attempts[low + i]
            self.outcomes[await self.reserve(account, job_id)] += 1

        timing = await closed_loop(attempt, tasks=tasks, limit=high - low)
        self.rounds.append(timing)
        return timing

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.rounds)

    @property
    def ops_per_s(self) -> float:
        return self.calls / sum(t.seconds for t in self.rounds)

    def summary(self) -> dict[str, Any]:
        latencies = Timing(self.calls, 1.0, [ms for t in self.rounds for ms in t.latencies_ms])
        server = self.server_cpu_seconds
        return {
            "attempts": self.calls,
            "successes": self.outcomes[OK],
            "refused_credits": self.outcomes[NO_CREDITS],
            "refused_slots": self.outcomes[NO_SLOT],
            "seconds": round(sum(t.seconds for t in self.rounds), 3),
            "p50_ms": round(latencies.percentile_ms(0.5), 3),
            "p99_ms": round(latencies.percentile_ms(0.99), 3),
            "client_cpu_us_per_call": round(
                sum(t.cpu_seconds for t in self.rounds) * 1e6 / self.calls, 1),
            "server_cpu_us_per_call": None if server is None else round(
                server * 1e6 / self.calls, 1),
            "verified": True,
            **self.extra,
        }


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"overspend check failed: {what}")


# --- (a) Lua --------------------------------------------------------------------------------

async def provision_redis(core: Core, people: list[Account]) -> None:
    for account in people:
        plan = Plan("bench", rule_slots=20, concurrency=account.max_active)
        await core.ensure_user(account.user_id, plan, account.credits)


def lua_reserve(core: Core) -> Reserve:
    async def reserve(account: Account, job_id: str) -> str:
        try:
            await core.reserve(job_id=job_id, user_id=account.user_id, total=TOTAL,
                               price=PRICE, hold_ttl_ms=HOLD_MS, meta_json=META)
        except InsufficientCredits:
            return NO_CREDITS
        except ConcurrencyLimit:
            return NO_SLOT
        return OK

    return reserve


# --- (b) WATCH/MULTI ------------------------------------------------------------------------

def watch_reserve(client: Redis, keys: KeySpace, retries: Counter[str]) -> Reserve:
    """The optimistic transaction a careful redis-py user writes: WATCH what the decision
    reads, read, decide, queue the writes in MULTI, EXEC; start over when a watched key
    changed in between (WatchError). Same keys and same writes as reserve.lua."""

    async def reserve(account: Account, job_id: str) -> str:
        user = keys.user(account.user_id)
        job = JobKeys(user.bucket, job_id)
        async with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(user.base, user.active, job.base)
                    if await pipe.exists(job.base):
                        return "already"
                    available, max_active = (
                        int(value or 0)
                        for value in await pipe.hmget(user.base, "available", "max_active")
                    )
                    if available < COST:
                        return NO_CREDITS
                    if await pipe.scard(user.active) >= max_active:
                        return NO_SLOT
                    now = now_ms()
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hincrby(user.base, "available", -COST)
                    pipe.hincrby(user.base, "reserved", COST)
                    pipe.sadd(user.active, job_id)
                    pipe.zadd(user.jobs, {job_id: now})
                    pipe.hset(job.base, mapping={
                        "id": job_id, "owner": account.user_id, "state": "created",
                        "total": TOTAL, "done": 0, "failed": 0, "price": PRICE, "cost": COST,
                        "charged": 0, "refunded": 0, "created_at": now, "updated_at": now,
                        "rule_id": "",
                    })
                    pipe.set(job.meta, META)
                    pipe.zadd(user.bucket.holds, {job_id: now + HOLD_MS})
                    pipe.rpush(user.bucket.ledger, json.dumps({
                        "id": f"hold:{job_id}", "user_id": account.user_id, "kind": "hold",
                        "amount": -COST, "job_id": job_id, "at": now}))
                    await pipe.execute()
                    return OK
                except WatchError:
                    retries[account.user_id] += 1

    return reserve


async def verify_redis(client: Redis, keys: KeySpace, people: list[Account],
                       outcome: Variant) -> None:
    for account in people:
        user = keys.user(account.user_id)
        record = await client.hgetall(user.base)
        available, reserved = int(record["available"]), int(record["reserved"])
        granted, spent = int(record["granted"]), int(record["spent"])
        active = await client.scard(user.active)
        jobs = await client.zcard(user.jobs)
        who = f"{outcome.label} {account.user_id}"
        expect(granted == available + reserved + spent, f"{who}: granted != available+reserved")
        expect(available >= 0, f"{who}: available < 0")
        expect(reserved == account.affordable * COST, f"{who}: reserved {reserved}")
        expect(active == jobs == account.affordable <= account.max_active,
               f"{who}: {active} active, {jobs} jobs, affordable {account.affordable}")
    expect(outcome.outcomes[OK] == sum(a.affordable for a in people),
           f"{outcome.label}: {outcome.outcomes[OK]} successes")


# --- (c) PostgreSQL -------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE users (
    id text PRIMARY KEY, plan text NOT NULL,
    available bigint NOT NULL, reserved bigint NOT NULL, spent bigint NOT NULL,
    granted bigint NOT NULL, active int NOT NULL, max_active int NOT NULL
);
CREATE TABLE jobs (
    id text PRIMARY KEY, owner text NOT NULL, state text NOT NULL,
    total int NOT NULL, done int NOT NULL, failed int NOT NULL, price bigint NOT NULL,
    cost bigint NOT NULL, charged bigint NOT NULL, refunded bigint NOT NULL,
    created_at bigint NOT NULL, updated_at bigint NOT NULL, rule_id text NOT NULL,
    meta jsonb NOT NULL, hold_deadline bigint
);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at);
CREATE INDEX jobs_hold_deadline ON jobs (hold_deadline) WHERE hold_deadline IS NOT NULL;
"""


class Postgres:
    """A database of its own on the given server, created and dropped by the benchmark."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"tgbench_{uuid.uuid4().hex[:12]}"
        self.dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=self.name)

    async def create(self) -> str:
        async with await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True) as c:
            await c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            version = await (await c.execute("SHOW server_version")).fetchone()
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(SCHEMA)
        return str(version[0]) if version else "unknown"

    async def drop(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True) as c:
            await c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                            .format(sql.Identifier(self.name)))

    async def provision(self, people: list[Account]) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO users VALUES (%s, 'bench', %s, 0, 0, %s, 0, %s)",
                [(a.user_id, a.credits, a.credits, a.max_active) for a in people],
            )

    async def connections(self, count: int) -> list[Any]:
        return [await psycopg.AsyncConnection.connect(self.dsn) for _ in range(count)]

    async def backend_pids(self, conns: list[Any]) -> list[int]:
        pids = []
        for conn in conns:
            row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            await conn.commit()
            pids.append(int(row[0]))
        return pids

    async def set_synchronous_commit(self, conns: list[Any], on: bool) -> None:
        for conn in conns:
            await conn.execute("SET synchronous_commit = on" if on else
                               "SET synchronous_commit = off")
            await conn.commit()

    async def verify(self, people: list[Account], outcome: Variant) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            rows = await (await conn.execute(
                "SELECT u.id, u.available, u.reserved, u.spent, u.granted, u.active,"
                " (SELECT count(*) FROM jobs j WHERE j.owner = u.id) FROM users u"
            )).fetchall()
        by_id = {row[0]: row[1:] for row in rows}
        for account in people:
            available, reserved, spent, granted, active, jobs = by_id[account.user_id]
            who = f"{outcome.label} {account.user_id}"
            expect(granted == available + reserved + spent, f"{who}: granted != sum")
            expect(available >= 0, f"{who}: available < 0")
            expect(reserved == account.affordable * COST, f"{who}: reserved {reserved}")
            expect(active == jobs == account.affordable <= account.max_active,
                   f"{who}: {active} active, {jobs} jobs, affordable {account.affordable}")
        expect(outcome.outcomes[OK] == sum(a.affordable for a in people),
               f"{outcome.label}: {outcome.outcomes[OK]} successes")


def postgres_reserve(conns: list[Any]) -> Reserve:
    """What a user writes with a SQL database: lock the user's row, check, write, commit.
    Each task takes a connection of its own (as many connections as tasks)."""
    free = list(conns)

    async def reserve(account: Account, job_id: str) -> str:
        conn = free.pop()
        try:
            async with conn.transaction():
                if await (await conn.execute(
                        "SELECT 1 FROM jobs WHERE id = %s", (job_id,))).fetchone():
                    return "already"
                row = await (await conn.execute(
                    "SELECT available, active, max_active FROM users WHERE id = %s FOR UPDATE",
                    (account.user_id,),
                )).fetchone()
                available, active, max_active = row
                if available < COST:
                    return NO_CREDITS
                if active >= max_active:
                    return NO_SLOT
                now = now_ms()
                await conn.execute(
                    "UPDATE users SET available = available - %s, reserved = reserved + %s,"
                    " active = active + 1 WHERE id = %s",
                    (COST, COST, account.user_id),
                )
                await conn.execute(
                    "INSERT INTO jobs VALUES (%s, %s, 'created', %s, 0, 0, %s, %s, 0, 0,"
                    " %s, %s, '', %s, %s)",
                    (job_id, account.user_id, TOTAL, PRICE, COST, now, now, META,
                     now + HOLD_MS),
                )
                return OK
        finally:
            free.append(conn)

    return reserve


# --- the run --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sizes:
    """Affordable jobs per user for each variant, chosen so that each takes a similar time."""

    lua: int
    watch: int
    pg_off: int
    pg_on: int


async def main_async(args: Any) -> Result:
    quick: bool = args.quick
    scale = 0.1 if quick else 1.0
    sizes = Sizes(*(max(4, int(n * scale)) for n in (800, 100, 250, 150)))
    rounds: int = args.rounds or (1 if quick else 5)
    tasks: int = args.tasks
    prefix = args.prefix or fresh_prefix()
    keys = KeySpace(prefix, 64)
    client = connect(args.redis_url, tasks)
    core = Core(client, keys)
    database = Postgres(args.postgres_dsn)
    conns: list[Any] = []
    retries: Counter[str] = Counter()
    foreign_calls = 0
    try:
        facts = await redis_facts(client)
        pg_version = await database.create()
        lua = Variant("Lua script (Core.reserve)", lua_reserve(core),
                      accounts("lua", args.users, sizes.lua), keys)
        watch = Variant("WATCH/MULTI (redis-py)", watch_reserve(client, keys, retries),
                        accounts("watch", args.users, sizes.watch), keys)
        # One set of connections serves both PostgreSQL variants: each round sets
        # synchronous_commit before its slice.
        conns = await database.connections(tasks)
        pg_off = Variant("PostgreSQL FOR UPDATE, synchronous_commit=off", postgres_reserve(conns),
                         accounts("pgoff", args.users, sizes.pg_off), keys)
        pg_on = Variant("PostgreSQL FOR UPDATE, synchronous_commit=on", postgres_reserve(conns),
                        accounts("pgon", args.users, sizes.pg_on), keys)
        for variant in (lua, watch):
            await provision_redis(core, variant.people)
        await database.provision(pg_off.people + pg_on.people)
        await core.ping()

        backends = await database.backend_pids(conns)

        for index in range(rounds):
            for variant in (lua, watch):
                before = await ServerCounters.read(client)
                timing = await variant.run_round(index, rounds, tasks)
                after = await ServerCounters.read(client)
                variant.server_cpu_seconds = (variant.server_cpu_seconds or 0.0) + (
                    after.cpu_seconds - before.cpu_seconds)
                foreign_calls += max(after.script_calls - before.script_calls
                                     - (timing.calls if variant is lua else 0), 0)
            for variant, synchronous in ((pg_off, False), (pg_on, True)):
                await database.set_synchronous_commit(conns, synchronous)
                cpu_before = process_cpu_seconds(backends)
                await variant.run_round(index, rounds, tasks)
                cpu_after = process_cpu_seconds(backends)
                if cpu_before is None or cpu_after is None or variant.server_cpu_seconds is None:
                    variant.server_cpu_seconds = None
                else:
                    variant.server_cpu_seconds += cpu_after - cpu_before

        for variant in (lua, watch):
            await verify_redis(client, keys, variant.people, variant)
        for variant in (pg_off, pg_on):
            await database.verify(variant.people, variant)
    finally:
        for conn in conns:
            await conn.close()
        await delete_prefix(client, prefix)
        await client.aclose()
        await database.drop()

    lua.extra["foreign_script_calls"] = foreign_calls
    watch.extra["retries"] = sum(retries.values())
    watch.extra["retries_per_attempt"] = round(sum(retries.values()) / watch.calls, 2)

    def ratio(variant: Variant, to: Variant) -> tuple[float, list[float]]:
        per_round = [a.ops_per_s / b.ops_per_s
                     for a, b in zip(variant.rounds, to.rounds, strict=True)]
        return median(per_round), [round(r, 3) for r in per_round]

    rows = []
    for variant, target in ((lua, LUA_TARGET), (watch, None), (pg_on, None)):
        value, per_round = ratio(variant, pg_off)
        rows.append(Row(variant.label, variant.ops_per_s, value, target,
                        {**variant.summary(), "round_ratios": per_round}))
    for row in rows:
        server = row.extra["server_cpu_us_per_call"]
        base_server = pg_off.summary()["server_cpu_us_per_call"]
        row.extra["server_cpu_ratio"] = (round(base_server / server, 3)
                                         if server and base_server else None)
    rows[0].extra["x_watch_multi"] = round(ratio(lua, watch)[0], 2)
    return Result(
        name=NAME,
        title=(f"Reserve under contention: {tasks} concurrent callers on {args.users} users, "
               f"{rounds} rounds, ratio to PostgreSQL (synchronous_commit=off)"),
        machine=machine_info(**facts, postgres_server=pg_version, psycopg=psycopg.__version__,
                             event_loop=event_loop_name()),
        params={"users": args.users, "tasks": tasks, "rounds": rounds, "cost": COST,
                "affordable_per_user": asdict(sizes), "attempts_per_user": "1.25 x affordable"},
        baseline=Baseline(pg_off.label, pg_off.ops_per_s, pg_off.summary()),
        rows=rows,
        quick=quick,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--postgres-dsn", default=DEFAULT_POSTGRES_DSN,
                        help="any database on the server; the benchmark makes its own")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=32,
                        help="concurrent callers, each with a connection of its own, in every "
                             "variant (Redis pool and PostgreSQL connections alike)")
    parser.add_argument("--rounds", type=int, default=0, help="default 5 (1 with --quick)")
    add_private_redis_option(parser)
    args = parser.parse_args(argv)
    if args.private_redis:
        with private_redis() as url:
            args.redis_url = url
            result = run(main_async(args))
    else:
        result = run(main_async(args))
    report(result, args.out, [
        ("attempts", "attempts"), ("successes", "ok"), ("refused_credits", "no credits"),
        ("refused_slots", "no slot"), ("retries", "WATCH retries"),
        ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
        ("client_cpu_us_per_call", "client CPU µs/op"),
        ("server_cpu_us_per_call", "server CPU µs/op"), ("server_cpu_ratio", "server-CPU ratio"),
        ("x_watch_multi", "x WATCH/MULTI"),
        ("verified", "no overspend"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
