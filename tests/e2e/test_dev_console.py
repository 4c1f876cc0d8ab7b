"""`tollgate dev`'s console, run as a user runs it: one line per event, no signed URL in any
line, `tollgate inspect` against the running dev (and a non-zero exit for unknown ids), a
clean stop on SIGTERM, and downloads that keep the type the processor produced."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, kill_tree

SIGNED = re.compile(r"sig=|X-Amz-Signature|X-Amz-Credential")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _tollgate(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_dev_console_inspect_types_and_sigterm(tmp_path: Path) -> None:
    env = _env()
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "service.cli.main", "dev",
                                "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert dev.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        banner = log_path.read_text()
        token = re.search(r"token:\s+(\S+)", banner)
        redis_url = re.search(r"TOLLGATE_REDIS_URL=(\S+) tollgate inspect", banner)
        assert token and redis_url, banner
        demo = _tollgate("demo", "--url", f"http://127.0.0.1:{port}", "--token", token[1],
                         "--items", "3", cwd=tmp_path, env=env)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        job_id = re.search(r"created job (\S+):", demo.stdout)
        assert job_id, demo.stdout

        # The output keeps the type the thumbnail processor uploaded it with.
        me = {"Authorization": f"Bearer {token[1]}"}
        job = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id[1]}", headers=me).json()
        result = httpx.get(job["items"][0]["result_url"])
        assert result.status_code == 200
        assert result.headers["content-type"] == "image/png"

        # inspect reads the running dev's state through the URL it printed.
        inspect_env = {**env, "TOLLGATE_REDIS_URL": redis_url[1]}
        user = _tollgate("inspect", "user", "dev-user", cwd=tmp_path, env=inspect_env)
        assert user.returncode == 0, user.stdout + user.stderr
        assert '"plan": "free"' in user.stdout
        for what, name in (("job", "nope"), ("user", "nobody")):
            unknown = _tollgate("inspect", what, name, cwd=tmp_path, env=inspect_env)
            assert unknown.returncode == 1, (what, unknown.stdout, unknown.stderr)
            assert f"no {what} {name!r} in Redis" in unknown.stderr
        bare = _tollgate("inspect", "user", "dev-user", cwd=tmp_path, env=env)
        assert bare.returncode != 0 and "the URL it prints" in bare.stderr

        time.sleep(1.5)  # a flusher pass over the finished job
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=30) == 0, log_path.read_text()
    finally:
        kill_tree(dev)
    out = log_path.read_text()
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
