"""check() on more tables than PostgreSQL's lock table can hold at once.

Every read takes a lock that a transaction keeps until it ends, and the lock table is
shared and finite (max_locks_per_transaction x max_connections). check() reads in
chunks and rolls each chunk's savepoint back, which lets its locks go. This server has
a tiny lock table, so a check that kept its locks would fail with "out of shared
memory" here, and report the tables it could not read as skipped.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories

from pytest_seqdrift import Report, check
from pytest_seqdrift.db.drivers import PsycopgSession
from pytest_seqdrift.read import reader
from pytest_seqdrift.testbed import find_pg_ctl, root_safe

tiny_lock_table_proc = factories.postgresql_proc(
    executable=root_safe(find_pg_ctl()),
    postgres_options="-c max_locks_per_transaction=10 -c max_connections=10",
)
tiny_lock_table = factories.postgresql("tiny_lock_table_proc")

TABLES = 400


@pytest.fixture
def many_tables(tiny_lock_table: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn = tiny_lock_table
    conn.autocommit = True
    for first in range(0, TABLES, 50):  # creating them holds locks too
        conn.execute(
            f"DO $$ BEGIN FOR i IN {first}..{first + 49} LOOP EXECUTE format("
            "'CREATE TABLE t%s (id serial PRIMARY KEY); INSERT INTO t%s VALUES (%s)', i, i, i);"
            " END LOOP; END $$"
        )
    return conn


def checked(conn: psycopg.Connection[Any]) -> tuple[Report, int]:
    session = PsycopgSession(conn)
    report = check(session)
    assert report.skipped == []
    assert len(report.checked) == TABLES
    # t0 holds id 0, below its sequence; t1..t399 each hold their own number with the
    # sequence unused, so each collides
    assert len(report.findings) == TABLES - 1
    return report, session.statements


def test_more_tables_than_the_lock_table_holds(
    many_tables: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "CHUNK", 25)
    _, statements = checked(many_tables)
    # the transaction, the look for a remembered discovery (under a savepoint),
    # discovery, the keys and triggers (two queries under a savepoint), and two read
    # blocks (four statements each, under a savepoint): no read was retried on its own
    assert statements == 3 + 3 + 4 + 2 * 5 + 1


def test_one_chunk_for_all_runs_out_and_the_failed_reads_are_retried(
    many_tables: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: one chunk for every table runs out of locks on this server (so the
    test above tests the chunks). The read that ran out ends its chunk, whose rollback
    lets the locks go; the block carries on after it, and the reads that ran out are
    read again on their own: every table is still checked."""
    monkeypatch.setattr(reader, "CHUNK", TABLES)
    _, statements = checked(many_tables)
    assert statements > 3 + 2 * 5 + 1
