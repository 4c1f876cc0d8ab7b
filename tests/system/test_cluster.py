"""Set-up (c): a 3-primary Redis Cluster for the state, a standalone Redis for the queue,
PostgreSQL, 2 API processes, 2 workers, 2 flushers under the mixed workload; then a
worker, an API process and a flusher killed, and one primary restarted empty."""

from __future__ import annotations

import pytest

from tests.system.suite import needs_services, run_and_judge

pytestmark = [pytest.mark.system, pytest.mark.e2e, pytest.mark.cluster, pytest.mark.postgres]


async def test_cluster_books_close_before_and_after_faults() -> None:
    needs_services(postgres=True)
    await run_and_judge("cluster")
