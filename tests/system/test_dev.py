"""Set-up (a): `tollgate dev` as the README starts it (embedded fakeredis, SQLite, a local
folder) under the mixed workload; then killed mid-batch and started again."""

from __future__ import annotations

import pytest

from tests.system.suite import run_and_judge

pytestmark = [pytest.mark.system, pytest.mark.e2e]


async def test_dev_books_close_before_and_after_a_kill() -> None:
    await run_and_judge("dev")
