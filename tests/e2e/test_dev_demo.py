"""The README's run command on a bare machine: `tollgate dev` on the embedded defaults,
then `tollgate demo` against it finishes a real job."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.devserver import tollgate, tollgate_dev


def test_dev_brings_up_the_embedded_system_and_demo_finishes_a_job(tmp_path: Path) -> None:
    with tollgate_dev(tmp_path) as dev:
        assert "embedded fakeredis" in dev.log() and "local folder" in dev.log()
        demo = tollgate("demo", "--url", dev.url, "--token", dev.printed("token"),
                        cwd=tmp_path, env=dev.env)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "done, 8 done, 0 failed of 8" in demo.stdout, demo.stdout
        assert "charged 8, refunded 0" in demo.stdout
        assert (tmp_path / "tollgate.db").exists() and (tmp_path / "tollgate-data").is_dir()
