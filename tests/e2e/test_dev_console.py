"""`tollgate dev`'s console, run as a user runs it: one line per event, no signed URL in any
line, `tollgate inspect` against the running dev (and a non-zero exit for unknown ids), a
clean stop on SIGTERM, and downloads that keep the type the processor produced."""

from __future__ import annotations

import collections
import re
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.devserver import tollgate, tollgate_dev

SIGNED = re.compile(r"sig=|X-Amz-Signature|X-Amz-Credential")


def test_dev_console_inspect_types_and_sigterm(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        token, env = dev.printed("token"), dev.env
        redis_url = re.search(r"TOLLGATE_REDIS_URL=(\S+) tollgate inspect", dev.log())
        assert redis_url, dev.log()
        demo = tollgate("demo", "--url", dev.url, "--token", token, "--items", "3",
                        cwd=tmp_path, env=env)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        job_id = re.search(r"created job (\S+):", demo.stdout)
        assert job_id, demo.stdout

        # The output keeps the type the thumbnail processor uploaded it with.
        me = {"Authorization": f"Bearer {token}"}
        job = httpx.get(f"{dev.url}/jobs/{job_id[1]}", headers=me).json()
        result = httpx.get(job["items"][0]["result_url"])
        assert result.status_code == 200
        assert result.headers["content-type"] == "image/png"

        # inspect reads the running dev's state through the URL it printed.
        inspect_env = {**env, "TOLLGATE_REDIS_URL": redis_url[1]}
        user = tollgate("inspect", "user", "dev-user", cwd=tmp_path, env=inspect_env)
        assert user.returncode == 0, user.stdout + user.stderr
        assert '"plan": "free"' in user.stdout
        for what, name in (("job", "nope"), ("user", "nobody")):
            unknown = tollgate("inspect", what, name, cwd=tmp_path, env=inspect_env)
            assert unknown.returncode == 1, (what, unknown.stdout, unknown.stderr)
            assert f"no {what} {name!r} in Redis" in unknown.stderr
        bare = tollgate("inspect", "user", "dev-user", cwd=tmp_path, env=env)
        assert bare.returncode != 0 and "the URL it prints" in bare.stderr

        time.sleep(1.5)  # a flusher pass over the finished job
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.proc.wait(timeout=30) == 0, dev.log()
        out = dev.log()
    lines = out.splitlines()
    assert lines[-1] == "tollgate dev: stopped", out[-2000:]
    assert "flusher: stopped" in out
    assert not SIGNED.search(out), [line for line in lines if SIGNED.search(line)]
    # One line per event: the RQ lines of the job's batch, and the flusher's pass, once each.
    # (a pass's summary once, not as a log line and a print of the same text)
    events = [re.split(r"Worker \S+: |flusher pass: |flusher: ", line)[-1] for line in lines
              if "Job OK" in line or "ledger entries flushed" in line or "Listening on" in line]
    assert events and all(count == 1 for count in collections.Counter(events).values()), events
    assert sum("Job OK" in line for line in lines) == 1, out
