"""Every example runs (issue 18): each `bash`, `sh` and `python` block of README.md and
docs/*.md, run against one `tollgate dev`, each page in a fresh shell of its own in an empty
folder, with only TG_URL, TG_TOKEN and TG_ADMIN set (the quickstart documents them); a
block's `output` block, where one is shown, is compared with what it printed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.examples import blocks, matches, page_script, pages, split_output
from tests.e2e.conftest import kill_tree
from tests.e2e.devserver import Dev, tollgate, tollgate_dev

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with tollgate_dev(tmp_path_factory.mktemp("docs-dev")) as running:
        yield running


def page_env(dev: Dev, user: str, folder: Path) -> dict[str, str]:
    """A reader's shell: the venv's commands first on PATH, no TOLLGATE_* setting, and the
    three variables; the page's own user, so pages do not share credits or rule slots."""
    secret = dev.printed("secret").removeprefix("TOLLGATE_JWT_SECRET=")
    token = tollgate("token", user, cwd=folder,
                     env={**dev.env, "TOLLGATE_JWT_SECRET": secret}).stdout.strip()
    assert token, user
    return dev.reader_env(token)


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_example_of_the_page_runs(page: Path, dev: Dev, tmp_path: Path) -> None:
    runnable = [block for block in blocks(page) if not block.skip]
    if not runnable:
        pytest.skip(f"{page.name}: no block to run")
    env = page_env(dev, f"docs-{page.stem.lower()}", tmp_path)
    # Its own session: whatever a page starts in the background (models.md's second dev)
    # goes with it, whatever happened.
    shell = subprocess.Popen(["bash", "-c", page_script(runnable)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=240)
    finally:
        kill_tree(shell)
    run = subprocess.CompletedProcess(shell.args, shell.returncode,
                                      stdout.decode(errors="replace"),
                                      stderr.decode(errors="replace"))
    outputs = split_output(run.stdout, len(runnable))
    for block, printed in zip(runnable, outputs, strict=True):
        assert printed is not None, f"{block.where} never ran:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, (
        f"{page.name} stopped (exit {run.returncode}) in the block that printed last:\n"
        f"{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-3000:]}")
    for block, printed in zip(runnable, outputs, strict=True):
        if block.output is not None:
            assert printed is not None and matches(block.output, printed), (
                f"{block.where}: printed\n{printed}\n--- the page shows ---\n{block.output}")
