"""The README's curl walkthrough, run as it is written against `tollgate dev` on a bare
machine: only the API URL and the two tokens it says to paste are filled in."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import ROOT
from tests.e2e.devserver import tollgate_dev


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough with curl", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_walkthrough_runs_against_tollgate_dev(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        filled = {"API": dev.url, "TOKEN": dev.printed("token"), "ADMIN": dev.printed("admin")}
        script = walkthrough_script()
        for name, value in filled.items():
            script, count = re.subn(rf"^{name}=.*$", f"{name}={value}", script, flags=re.M)
            assert count == 1, name
        # Any HTTP refusal fails the run, and so does any failed command.
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
        run = subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, env=dev.env,
                             capture_output=True, text=True, timeout=180)
        out = run.stdout
        assert run.returncode == 0, out + run.stderr + dev.log()[-3000:]
    assert '"status":"created"' in out and '"status":"queued"' in out
    assert re.search(r'"status":"done","total_items":2,"done_items":2,"failed_items":0', out)
    assert '"duplicate":false' in out and '"duplicate":true' in out
    assert '"plan":"pro"' in out and '"user_id":"bob-1"' in out
    assert '"status":"canceled"' in out and "event: job" in out
