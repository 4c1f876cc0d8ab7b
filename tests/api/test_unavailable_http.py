"""Redis trouble over HTTP: a Cluster's transient errors and a full pool are a 503 the client
retries, like a standalone outage; a queue position that cannot be read leaves the job's view
standing, with `queue_position` null. On the embedded fakeredis, a standalone Redis and a
Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions

from service.state.reads import StateReads
from service.state.sched import SchedState
from tests.api.conftest import Api
from tests.api.flow import queued_job

TRANSIENT = [
    exceptions.MaxConnectionsError("Too many connections"),
    exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
    exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"),
    exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7001. Connection refused."),
    exceptions.RedisClusterUnreachableError("Redis Cluster cannot be connected."),
    exceptions.SlotNotCoveredError("Slot 5 is not covered by the cluster."),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda error: type(error).__name__)
async def test_a_transient_redis_error_is_503_unavailable_with_retry_after(
    any_api: Api, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, user = any_api, any_api.user()
    job_id = (await queued_job(api, user, 1))["id"]

    async def fails(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(StateReads, "job_snapshot", fails)
    response = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "unavailable"
    assert int(response.headers["Retry-After"]) >= 1

    monkeypatch.undo()  # the store is back: the same call answers
    assert (await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))).status_code == 200


async def test_a_queued_jobs_view_stands_when_its_queue_position_cannot_be_read(
    any_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, user = any_api, any_api.user()
    job_id = (await queued_job(api, user, 1))["id"]
    read = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert read.json()["queue_position"] == 0

    async def node_away(*_: Any) -> int | None:
        raise exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7002.")

    monkeypatch.setattr(SchedState, "position", node_away)
    read = await api.client.get(f"/jobs/{job_id}", headers=api.auth(user))
    assert read.status_code == 200, read.text
    assert (read.json()["status"], read.json()["queue_position"]) == ("queued", None)
    again = await api.client.post(f"/jobs/{job_id}/execute", headers=api.auth(user))
    assert again.status_code == 202, again.text
    assert (again.json()["status"], again.json()["queue_position"]) == ("queued", None)
    listed = await api.client.get("/jobs", headers=api.auth(user))
    assert listed.status_code == 200, listed.text
    assert [(j["id"], j["queue_position"]) for j in listed.json()["items"]] == [(job_id, None)]
