"""Scheduling metrics (docs/scheduling.md): live workers per model and the dispatch wait.

`tollgate_dispatch_wait_seconds` is the time from execute to a job's first batch in RQ; the
dispatcher runs in the flusher process, which is not scraped, so it keeps the histogram in
Redis (`SchedKeys.waits`: a count per bound's slot, summed here) and every API process reports the
same one. A scrape reads it, and the RQ worker registry, at most every SNAPSHOT_TTL_S.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.runtime import Runtime
from service.state.sched import PRIORITIES, WAIT_BUCKETS, SchedReads

SNAPSHOT_TTL_S = 5.0


class _Scheduling(Collector):
    def __init__(self, workers: dict[str, int], waits: dict[str, dict[str, str]]) -> None:
        self.workers = workers  # model -> live workers
        self.waits = waits  # model -> its queue's waits hash

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily("tollgate_workers", "Live RQ workers serving each model",
                                 labels=("model",))
        for model, count in sorted(self.workers.items()):
            live.add_metric((model,), count)
        yield live
        wait = HistogramMetricFamily(
            "tollgate_dispatch_wait_seconds",
            "Seconds from execute until the job's first batch entered RQ",
            labels=("model", "priority"))
        for model, fields in sorted(self.waits.items()):
            for priority in PRIORITIES:
                count = int(fields.get(f"{priority}:count", 0))
                buckets, under = [], 0.0
                for bound in WAIT_BUCKETS:
                    under += float(fields.get(f"{priority}:in:{bound}", 0))
                    # `<priority>:<bound>`: the cumulative counts kept before 2026-12-06
                    buckets.append((str(bound),
                                    under + float(fields.get(f"{priority}:{bound}", 0))))
                buckets.append(("+Inf", float(count)))
                wait.add_metric((model, priority), buckets,
                                float(fields.get(f"{priority}:sum", 0.0)))
        yield wait


async def scheduling_metrics(rt: Runtime) -> bytes:
    queues = {model.name: model.queue for model in rt.models}
    counts = await rt.live_workers.counts(rt.models.queues())
    sched = SchedReads(rt.core)
    waits_by_queue = {queue: await sched.waits(queue) for queue in set(queues.values())}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scheduling(
        {model: counts.get(queue, 0) for model, queue in queues.items()},
        {model: waits_by_queue[queue] for model, queue in queues.items()}))
    text: bytes = generate_latest(registry)
    return text


_snapshots: weakref.WeakKeyDictionary[object, tuple[float, bytes]] = \
    weakref.WeakKeyDictionary()


async def scheduling_metrics_snapshot(rt: Runtime) -> bytes:
    """scheduling_metrics() as of at most SNAPSHOT_TTL_S ago (one per Core)."""
    taken = _snapshots.get(rt.core)
    if taken is not None and time.monotonic() - taken[0] < SNAPSHOT_TTL_S:
        return taken[1]
    text = await scheduling_metrics(rt)
    _snapshots[rt.core] = (time.monotonic(), text)
    return text
