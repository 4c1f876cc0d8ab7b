"""Business metrics: counters the scripts and the flusher keep in Redis, summed per scrape.

Kept in Redis (per bucket, `tg:{b}:counters`, lua/includes/stats.lua) rather than in process
memory: the flusher cannot be scraped, and every API process must report the same totals.
A read covers the buckets in use in one pipeline (service/state/stats.py) and the RQ queue
lengths in one more round trip. A scrape serves a snapshot of that read at most
SNAPSHOT_TTL_S old, taken by one scrape while concurrent ones wait for it (BusinessSnapshot):
the Redis cost of scraping is at most one read per SNAPSHOT_TTL_S per process, whatever the
number of users, buckets or scrapers. Add a plain counter by naming its hash field here.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.state.queue import queue_depths
from service.state.stats import BusinessTotals, business_totals
from service.state.store import Core

# hash field -> (metric name, help)
COUNTERS: dict[str, tuple[str, str]] = {
    "flush_failures": ("tollgate_flush_failures_total",
                       "Records SQL kept refusing, set aside in the flush_failures table"),
    "holds_expired": ("tollgate_holds_expired_total",
                      "Jobs canceled because their hold expired before execute"),
    "leases_expired": ("tollgate_leases_expired_total",
                       "Running jobs failed because their worker stopped renewing the lease"),
}
# hash fields `<prefix>:<model>:<label>` -> (metric name, help, label name)
BY_MODEL: dict[str, tuple[str, str, str]] = {
    "jobs": ("tollgate_jobs_total", "Jobs that reached a terminal status", "status"),
    "items": ("tollgate_items_total",
              "Items by outcome: ok, failed, skipped (the job ended before a report)", "outcome"),
}
CREDIT_KINDS = ("charged", "refunded", "granted", "expire")  # always; `revoked` once it occurs
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")


class _Totals(Collector):
    def __init__(self, totals: BusinessTotals, depths: dict[str, int]) -> None:
        self.totals = totals
        self.depths = depths

    def collect(self) -> Iterator[Metric]:
        counters = self.totals.counters
        for field, (name, documentation) in COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=counters.get(field, 0))
        for prefix, (name, documentation, label) in BY_MODEL.items():
            family = CounterMetricFamily(name, documentation, labels=("model", label))
            for field, value in sorted(counters.items()):
                kind, _, rest = field.partition(":")
                model, _, value_label = rest.rpartition(":")
                if kind == prefix and model:
                    family.add_metric((model, value_label), value)
            yield family
        credits = CounterMetricFamily("tollgate_credits_total", "Credits by kind",
                                      labels=("kind",))
        kinds = dict.fromkeys(CREDIT_KINDS, 0)
        kinds.update({field.removeprefix("credits:"): value for field, value in counters.items()
                      if field.startswith("credits:")})
        for kind, value in kinds.items():
            credits.add_metric((kind,), value)
        yield credits
        webhooks = CounterMetricFamily("tollgate_webhook_deliveries_total",
                                       "Webhook delivery attempts by outcome", labels=("outcome",))
        outcomes = {**dict.fromkeys(WEBHOOK_OUTCOMES, 0), **self.totals.webhook_outcomes}
        for outcome, value in outcomes.items():
            webhooks.add_metric((outcome,), value)
        yield webhooks
        live = GaugeMetricFamily("tollgate_jobs_live", "Live jobs by state (reserved: created or "
                                 "uploaded, holding credits)", labels=("state",))
        for state, value in self.totals.live.items():
            live.add_metric((state,), value)
        yield live
        depth = GaugeMetricFamily("tollgate_queue_depth", "Batches waiting in each RQ queue",
                                  labels=("queue",))
        for queue, value in self.depths.items():
            depth.add_metric((queue,), value)
        yield depth
        yield GaugeMetricFamily("tollgate_flush_lag_seconds",
                                "Age of the oldest finished job due for its flush to SQL",
                                value=self.totals.flush_lag_s)


async def business_metrics(core: Core, queue_connection: Any = None,
                           queues: list[str] | None = None) -> bytes:
    """The business metrics in Prometheus' text format."""
    totals = await business_totals(core)
    depths = (await asyncio.to_thread(queue_depths, queue_connection, queues)
              if queue_connection is not None and queues else {})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Totals(totals, depths))
    text: bytes = generate_latest(registry)
    return text


SNAPSHOT_TTL_S = 5.0  # a scrape's business metrics are at most this old
_clock = time.monotonic  # replaced by tests that move time


class BusinessSnapshot:
    """The business metrics of one Core, read at most once per SNAPSHOT_TTL_S: a single
    flight, as the scrapes that find the snapshot stale wait on one lock and all but the
    first find it fresh. A failed read is not kept (the next scrape tries again)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.text = b""
        self.taken = float("-inf")  # time.monotonic() of the read

    def fresh(self) -> bool:
        return _clock() - self.taken < SNAPSHOT_TTL_S

    async def get(self, core: Core, queue_connection: Any = None,
                  queues: list[str] | None = None) -> bytes:
        if self.fresh():
            return self.text
        async with self.lock:
            if not self.fresh():
                self.text = await business_metrics(core, queue_connection, queues)
                self.taken = _clock()
            return self.text


# One snapshot per Core: one per API process (one Runtime each), one per test app.
_snapshots: weakref.WeakKeyDictionary[Core, BusinessSnapshot] = weakref.WeakKeyDictionary()


async def business_metrics_snapshot(core: Core, queue_connection: Any = None,
                                    queues: list[str] | None = None) -> bytes:
    """business_metrics() as of at most SNAPSHOT_TTL_S ago."""
    snapshot = _snapshots.get(core)
    if snapshot is None:
        snapshot = _snapshots[core] = BusinessSnapshot()
    return await snapshot.get(core, queue_connection, queues)
