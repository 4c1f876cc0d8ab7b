"""The README's run command on a bare machine: `tollgate dev` on the embedded defaults,
then `tollgate demo` against it finishes a real job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, kill_tree


def test_dev_brings_up_the_embedded_system_and_demo_finishes_a_job(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
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
        assert "embedded fakeredis" in banner and "local folder" in banner
        token = re.search(r"token:\s+(\S+)", banner)
        assert token, banner
        demo = subprocess.run(
            [sys.executable, "-m", "service.cli.main", "demo", "--url", f"http://127.0.0.1:{port}",
             "--token", token[1]],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "done, 8 done, 0 failed of 8" in demo.stdout, demo.stdout
        assert "charged 8, refunded 0" in demo.stdout
        assert (tmp_path / "tollgate.db").exists() and (tmp_path / "tollgate-data").is_dir()
    finally:
        kill_tree(dev)
