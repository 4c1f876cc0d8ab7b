"""The README's curl walkthrough, run as it is written against `tollgate dev` on a bare
machine: only the API URL and the two tokens it says to paste are filled in."""

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


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough with curl", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_walkthrough_runs_against_tollgate_dev(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "service.cli.main", "dev",
                                "--port", str(port)], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert dev.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        banner = log_path.read_text()
        token, admin = re.search(r"token:\s+(\S+)", banner), re.search(r"admin:\s+(\S+)", banner)
        assert token and admin, banner
        script = walkthrough_script()
        filled = {"API": f"http://127.0.0.1:{port}", "TOKEN": token[1], "ADMIN": admin[1]}
        for name, value in filled.items():
            script, count = re.subn(rf"^{name}=.*$", f"{name}={value}", script, flags=re.M)
            assert count == 1, name
        # Any HTTP refusal fails the run, and so does any failed command.
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        run = subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=180)
        out = run.stdout
        assert run.returncode == 0, out + run.stderr + log_path.read_text()[-3000:]
    finally:
        kill_tree(dev)
    assert '"status":"created"' in out and '"status":"queued"' in out
    assert re.search(r'"status":"done","total_items":2,"done_items":2,"failed_items":0', out)
    assert '"duplicate":false' in out and '"duplicate":true' in out
    assert '"plan":"pro"' in out and '"user_id":"bob-1"' in out
    assert '"status":"canceled"' in out and "event: job" in out
