"""The README's rule-preset curl session ("Params and rule presets"), run as written against
`tollgate dev`: each command's output is the one the README shows under it."""

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
from tests.e2e.test_readme_walkthrough import walkthrough_script


def session_script() -> str:
    section = (ROOT / "README.md").read_text().split("### Params and rule presets", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_rule_session_runs_against_tollgate_dev(tmp_path: Path) -> None:
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
        token = re.search(r"token:\s+(\S+)", log_path.read_text())
        assert token, log_path.read_text()
        # The walkthrough's variables and `get`: its lines up to the first request.
        prelude = walkthrough_script().split("\ncurl ", 1)[0]
        prelude = re.sub(r"^API=.*$", f"API=http://127.0.0.1:{port}", prelude, flags=re.M)
        prelude = re.sub(r"^TOKEN=.*$", f"TOKEN={token[1]}", prelude, flags=re.M)
        script = session_script()
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + prelude + "\n" + script],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr + log_path.read_text()[-3000:]
    finally:
        kill_tree(dev)
    out = run.stdout
    # Every output line the README shows (its `# ` comments after the first command).
    shown = [line[2:].split("   (")[0].strip() for line in script.splitlines()
             if line.startswith("# ")]
    flat = out.replace("\n", "")
    for line in shown:
        for part in re.split(r'"01m\.\.\."|"\.\.\."', line.strip()):
            assert part.strip() in flat, (part, out)
    assert "done thumbnail {'size': 64, 'format': 'webp'} True" in out
    assert "WEBP (64, 48)" in out
