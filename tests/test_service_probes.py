"""tests/conftest.py looks for PostgreSQL where TOLLGATE_TEST_POSTGRES points (issue 18,
item 2): it probed 127.0.0.1:5432 whatever the DSN said, so a server elsewhere was skipped
as missing and a DSN elsewhere ran against whatever listened on 5432."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, postgres_address, postgres_unreachable


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (what the probe looks for)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("dsn", "address"), [
    ("postgresql://postgres@127.0.0.1:5432/test", ("127.0.0.1", 5432)),
    ("postgresql://tg:pw@db.internal:6543/tollgate", ("db.internal", 6543)),
    ("postgresql://u@[::1]:5433/x", ("::1", 5433)),
    ("postgresql://u@pg/x", ("pg", 5432)),
    ("host=10.0.0.7 port=7000 dbname=test user=postgres", ("10.0.0.7", 7000)),
    ("postgresql://h1:6001,h2:6002/x", ("h1", 6001)),
    ("postgresql:///test?host=/var/run/postgresql&port=5434", ("/var/run/postgresql", 5434)),
])
def test_the_probe_reads_host_and_port_from_the_dsn(dsn: str, address: tuple[str, int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    assert postgres_address(dsn) == address


def test_what_the_dsn_leaves_out_comes_from_libpq_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "pg.example")
    monkeypatch.setenv("PGPORT", "6000")
    assert postgres_address("postgresql:///test") == ("pg.example", 6000)
    assert postgres_address("postgresql://db/test") == ("db", 6000)


def test_the_probe_knocks_on_the_dsn_port_not_5432(listener: int) -> None:
    assert postgres_unreachable(f"postgresql://postgres@127.0.0.1:{listener}/test") is None
    closed = free_port()  # bound then released: nothing listens there
    why = postgres_unreachable(f"postgresql://postgres@127.0.0.1:{closed}/test")
    assert why == f"nothing listens on 127.0.0.1:{closed}"


def test_a_socket_folder_host_is_probed_as_a_unix_socket(tmp_path: Path) -> None:
    dsn = f"postgresql:///test?host={tmp_path}&port=5999"
    assert postgres_unreachable(dsn) == f"no socket {tmp_path}/.s.PGSQL.5999"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / ".s.PGSQL.5999"))
        assert postgres_unreachable(dsn) is None
