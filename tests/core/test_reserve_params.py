"""reserve stores the job's params (as given: copied from the rule or the body) on the job
hash, and the reader gives them back; on real Redis and fakeredis (the `core` fixture)."""

from __future__ import annotations

import json

from service.state.codes import Code
from service.state.records import JobRecord
from service.state.store import Core
from tests.core.job_setup import HOLD_MS, new_user


async def test_reserve_stores_the_params_on_the_job(core: Core) -> None:
    user = await new_user(core, "ann", credits=100)
    params = {"size": 64, "format": "webp", "nested": {"list": [1, "é"]}}
    job_id = core.keys.new_job_id(user)
    code, _ = await core.reserve(job_id=job_id, user_id=user, total=2, price=3,
                                 hold_ttl_ms=HOLD_MS, meta_json="[]", model="thumb",
                                 params_json=json.dumps(params))
    assert code is Code.OK
    assert json.loads((await core.job_record(job_id))["params"]) == params
    job = await core.job(job_id)
    assert job is not None and job.params == params
    assert job.history_row()["params"] == params

    bare = core.keys.new_job_id(user)
    await core.reserve(job_id=bare, user_id=user, total=1, price=3, hold_ttl_ms=HOLD_MS,
                       meta_json="[]")
    assert (await core.job_record(bare))["params"] == ""
    record = await core.job(bare)
    assert record is not None and record.params is None


def test_a_job_hash_from_before_params_reads_as_none() -> None:
    base = {"id": "j", "owner": "u", "state": "created", "total": "1"}
    for stored in ({}, {"params": ""}, {"params": "not json"}, {"params": "[1]"}):
        job = JobRecord.from_redis({**base, **stored})
        assert job is not None and job.params is None
