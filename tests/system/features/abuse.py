"""Abuse beside the normal users (issue 23): slow bodies and idle connections, a stream
flood, and a free user looping create and cancel, all from one address (127.0.0.2), while a
normal user's GET /me is timed.

It runs for the main phase only (from `start` until a second before the phase's
TOLLGATE_SYSTEM_SECONDS end), so the books of both phases see every job it made final:
- a free user creates and cancels jobs at its rate limit (`work.create`, so the books hold
  them to the same account as every other job: canceled, charged 0);
- another free user holds a job (kind "hold") and opens STREAMS event streams on it at
  once, again each time the hold runs out: 10 are served, the rest are 429
  too_many_streams;
- SLOW_BODIES connections declare `Content-Length: 100000` and send one byte (half on the
  worker callback with a bad token, half on POST /jobs with a pro user's token), and IDLE
  connections send nothing; each is opened again when the server closes it.
Meanwhile a normal (pro) user at 127.0.0.1 sends GET /me every 100 ms on a keep-alive
connection. The check: its p95 stays under P95_MS and every answer is a 200; the normal
users' jobs finish (the common books).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

if TYPE_CHECKING:
    from tests.system.books import Report
    from tests.system.stacks import System
    from tests.system.workload import Workload

ABUSER = "127.0.0.2"
P95_MS = 250.0
SLOW_BODIES = 60
IDLE = 40
STREAMS = 14
SAMPLE_EVERY_S = 0.1
LOOP_EVERY_S = 2.5
QUIET_S = 2.0
JOB_ID = "01jabcdefghjkmnpqrstvwxyz0-3"


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from ABUSER, made without a name lookup: asyncio resolves even numeric
    addresses in the default thread pool, which the workload's token calls share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((ABUSER, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


@dataclass
class Abuse:
    share: float = 0.0  # takes no turn of the normal clients
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    samples: list[tuple[float, bool]] = field(default_factory=list)  # (ms, answered 200)
    seen: Counter[str] = field(default_factory=Counter)
    ends_at: float = 0.0
    quiet: int = 0  # the first samples, taken before the abuse began

    async def start(self, work: Workload) -> None:
        # One FEATURE serves every set-up of a session: each starts afresh.
        self.tasks, self.samples, self.seen, self.quiet = [], [], Counter(), 0
        stamp = os.urandom(3).hex()
        users = {"normal": ("pro", f"sys-normal-{stamp}"),
                 "looper": ("free", f"sys-looper-{stamp}"),
                 "streamer": ("free", f"sys-streamer-{stamp}"),
                 "slow": ("pro", f"sys-slow-{stamp}")}
        for plan, user in users.values():
            await work.call("POST /admin/users", "POST", work.api("/admin/users"),
                            user="sys-admin", admin=True, expect={201},
                            json={"id": user, "plan": plan, "credits": 10_000})
        url = urlsplit(work.stack.api_url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        for _, user in users.values():  # made now (a `tollgate token` each), then cached
            await asyncio.to_thread(work.stack.token, user)
        slow_token = await asyncio.to_thread(work.stack.token, users["slow"][1])
        # The main phase begins when every feature has started: it lasts this long.
        seconds = float(os.environ.get("TOLLGATE_SYSTEM_SECONDS", "60"))
        self.ends_at = time.monotonic() + QUIET_S + max(5.0, seconds - 1.0)
        self.tasks = [asyncio.create_task(self._sample(work, users["normal"][1]))]
        await asyncio.sleep(QUIET_S)  # the samples before the abuse: the figure to compare
        self.quiet = len(self.samples)
        self.tasks += [
            asyncio.create_task(self._loop(work, users["looper"][1])),
            asyncio.create_task(self._streams(work, users["streamer"][1])),
            *(asyncio.create_task(self._slow(host, port, n, slow_token))
              for n in range(SLOW_BODIES + IDLE)),
        ]

    async def act(self, work: Workload, user: str) -> None:
        return None

    # --- the normal user -----------------------------------------------------------------

    async def _sample(self, work: Workload, user: str) -> None:
        """In a thread of its own (a blocking client), so that the workload's event loop in
        this process does not add its own delays to the times."""
        token = await asyncio.to_thread(work.stack.token, user)
        headers = {"Authorization": f"Bearer {token}"}

        def sample() -> None:
            with httpx.Client(timeout=5.0) as http:
                while time.monotonic() < self.ends_at:
                    began = time.perf_counter()
                    try:
                        ok = http.get(work.api("/me"), headers=headers).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    self.samples.append(((time.perf_counter() - began) * 1000, ok))
                    time.sleep(SAMPLE_EVERY_S)

        await asyncio.to_thread(sample)  # one pool thread, until ends_at

    # --- the abusers ---------------------------------------------------------------------

    async def _loop(self, work: Workload, user: str) -> None:
        """Create and cancel at the free plan's write limit (60 a minute: a cycle is a
        create, sometimes its retry, and a cancel), paced just under it so that the
        workload's retried create is not refused (the books would call that 429
        unexpected)."""
        while time.monotonic() < self.ends_at:
            began = time.monotonic()
            made = await work.create(user, "cancel")
            if made is None:  # 429: the rate limit (or the plan's one job) said wait
                self.seen["loop refused"] += 1
                await asyncio.sleep(1.0)
                continue
            record = made[0]
            self.seen["loop created"] += 1
            await work.call("POST cancel", "POST", work.api(f"/jobs/{record.id}/cancel"),
                            user=user, expect={200}, refusals=frozenset({409, 429}),
                            job=record)
            await work.wait_final(record, 15.0)
            await asyncio.sleep(max(0.0, LOOP_EVERY_S - (time.monotonic() - began)))

    async def _streams(self, work: Workload, user: str) -> None:
        """A held job and STREAMS streams on it, again when the hold runs out."""
        token = await asyncio.to_thread(work.stack.token, user)
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.AsyncHTTPTransport(local_address=ABUSER)
        async with httpx.AsyncClient(transport=transport, timeout=30.0,
                                     limits=httpx.Limits(max_connections=STREAMS)) as http:

            async def one(job_id: str) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    async with http.stream("GET", work.api(f"/jobs/{job_id}/events"),
                                           headers=headers) as answer:
                        self.seen[f"stream {answer.status_code}"] += 1
                        async for _ in answer.aiter_bytes():
                            if time.monotonic() > self.ends_at:
                                return

            while time.monotonic() < self.ends_at:
                made = await work.create(user, "hold")
                if made is None:
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.gather(*(one(made[0].id) for _ in range(STREAMS)))
                await work.wait_final(made[0], 15.0)

    async def _slow(self, host: str, port: int, n: int, token: str) -> None:
        """One connection slot held all along: idle, or a body that never comes."""
        if n >= SLOW_BODIES:
            head = b""
        elif n % 2:
            head = (f"POST /jobs/{JOB_ID}/callback HTTP/1.1\r\nHost: t\r\n"
                    "Authorization: Bearer nope\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100000\r\n\r\n{").encode()
        else:
            head = ("POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n{{"
                    ).encode()
        while time.monotonic() < self.ends_at:
            try:
                reader, writer = await _connect(host, port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                if head:
                    writer.write(head)
                    await writer.drain()
                left = self.ends_at - time.monotonic()
                answer = await asyncio.wait_for(reader.read(4096), max(0.1, left))
                status = answer[9:12].decode(errors="replace") if answer else "closed"
                self.seen[f"slow {'idle' if not head else 'body'} {status}"] += 1
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(0.5)  # then the slot is taken again

    # --- the books -------------------------------------------------------------------------

    async def check(self, system: System, work: Workload, report: Report) -> None:
        for task in self.tasks:  # ended on their own at ends_at; any straggler now
            if not task.done():
                task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        crashed = [f"{type(r).__name__}: {r}" for r in results
                   if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if work.phase != "main":
            return  # the abuse ran in the main phase; its figures are there
        before = sorted(ms for ms, _ in self.samples[:self.quiet])
        latencies = sorted(ms for ms, _ in self.samples[self.quiet:])
        p95 = _p(latencies, 0.95)
        failed = sum(1 for _, ok in self.samples if not ok)
        report.figures["abuse"] = {
            "GET /me before": {"n": len(before), "p50_ms": round(_p(before, 0.5), 1),
                               "p95_ms": round(_p(before, 0.95), 1)},
            "GET /me under abuse": {"n": len(latencies), "p50_ms": round(_p(latencies, 0.5), 1),
                                    "p95_ms": round(p95, 1), "failed": failed},
            **dict(sorted(self.seen.items()))}
        problems = [*crashed]
        if p95 >= P95_MS:
            problems.append(f"a normal user's GET /me p95 was {p95:.0f} ms under abuse "
                            f"(limit {P95_MS:g} ms; {len(latencies)} samples)")
        if failed:
            problems.append(f"{failed} of a normal user's GET /me were not a 200 under abuse")
        if not latencies:
            problems.append("no GET /me sample was taken")
        if not self.seen["stream 429"]:
            problems.append(f"the stream flood ({STREAMS} at once) met no 429 "
                            f"too_many_streams: {dict(self.seen)}")
        report.check("a normal user is served beside the abuse (slow bodies, a stream "
                     "flood, a create and cancel loop)", problems)


def _p(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("inf")


FEATURE = Abuse()
