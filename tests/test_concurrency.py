"""No false positive under concurrent writes, on a real server.

Writer sessions (threads, each with its own connection, loopback) insert rows with
DEFAULT ids as fast as they can while ``check()`` runs round after round on the same
tables: the tables whose sequences are right must never show up, and the drift planted
in another table must be found, with the same numbers, every round. One of the loaded
sequences has ``CACHE 20``, drawn by every writer: its ``last_value`` runs ahead of the
ids the sessions have handed out, which must not matter.

Why it holds: on an idle connection check() reads in one REPEATABLE READ transaction
whose snapshot is taken as it opens, before any sequence is read; every id
in that snapshot was drawn before the sequence state the check compares it with. The
last test shows the ordering matters: a write slipped in between the sequence read and
the bounds read is invisible to the check, and visible to a naive read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from support.cli import dsn, seqdrift

from pytest_seqdrift import check
from pytest_seqdrift.db.drivers import PsycopgSession
from pytest_seqdrift.model import Report
from pytest_seqdrift.read import prepared

Conn = psycopg.Connection[Any]

SCHEMA = """
CREATE TABLE plain (id bigserial PRIMARY KEY, v text);
CREATE SEQUENCE cached_seq CACHE 20;
CREATE TABLE cached (id bigint PRIMARY KEY DEFAULT nextval('cached_seq'), v text);
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
-- the seed story: copied with its ids, sequence left at 1; nobody writes here
CREATE TABLE drifted (id serial PRIMARY KEY, v text);
INSERT INTO drifted (id, v) SELECT i, 'copied' FROM unnest(ARRAY[7, 9, 12, 14, 16]) AS i;
"""

WRITERS = 3
ROUNDS = 200
MAX_STATEMENTS = 50_000  # per writer: bounded in count as well as in time
DEADLINE_S = 60.0

# each writer cycles through these: single rows, several rows per statement, and a
# transaction that is rolled back (its ids become gaps)
WRITES = (
    "INSERT INTO plain (v) VALUES ('w')",
    "INSERT INTO cached (v) VALUES ('w')",
    "INSERT INTO ident (v) VALUES ('w')",
    "INSERT INTO cached (v) SELECT 'w' FROM generate_series(1, 5)",
    "INSERT INTO plain (v) SELECT 'w' FROM generate_series(1, 5)",
)


@dataclass
class Load:
    statements: list[int] = field(default_factory=lambda: [0] * WRITERS)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statements)


def _write(conninfo: str, index: int, load: Load, stop: threading.Event) -> None:
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            deadline = time.monotonic() + DEADLINE_S
            n = 0
            while not stop.is_set() and n < MAX_STATEMENTS and time.monotonic() < deadline:
                if n % 17 == 16:
                    with conn.transaction(force_rollback=True):
                        conn.execute(WRITES[n % len(WRITES)])
                else:
                    conn.execute(WRITES[n % len(WRITES)])
                n += 1
                load.statements[index] = n
    except BaseException as exc:  # pragma: no cover - reported by the test
        load.errors.append(exc)


@contextmanager
def writers(db: Conn) -> Iterator[Load]:
    """``WRITERS`` sessions inserting with DEFAULT ids until the block ends."""
    load, stop = Load(), threading.Event()
    threads = [
        threading.Thread(target=_write, args=(db.info.dsn, i, load, stop), daemon=True)
        for i in range(WRITERS)
    ]
    for t in threads:
        t.start()
    try:
        # every writer is under way before the checks start
        deadline = time.monotonic() + 10
        while min(load.statements) < 10 and time.monotonic() < deadline and not load.errors:
            time.sleep(0.01)
        assert min(load.statements) >= 10, load
        yield load
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not load.errors, load.errors


def _only_the_planted_drift(report: Report) -> None:
    __tracebackhide__ = True
    assert report.skipped == []
    assert [
        (
            f.kind,
            f.column.table,
            f.next_value,
            f.first_collision,
            f.inserts_until_collision,
            f.max_existing,
        )
        for f in report.findings
    ] == [("collision", "drifted", 1, 7, 6, 16)]
    statuses = {c.column.table: c.status for c in report.checked}
    assert statuses == {"plain": "ok", "cached": "ok", "ident": "ok", "drifted": "finding"}


def test_checks_under_concurrent_inserts_find_only_the_planted_drift(db: Conn) -> None:
    db.execute(SCHEMA)
    seen_next: set[tuple[str, int | None]] = set()
    with writers(db) as load:
        started = load.total
        for _ in range(ROUNDS):
            report = check(db)
            _only_the_planted_drift(report)
            seen_next.update(
                (c.column.table, c.next_value) for c in report.checked if c.status == "ok"
            )
        during = load.total - started
    # the load was real: the writers kept going all through the checks, and the checks
    # saw the sequences move from round to round
    assert during >= ROUNDS, during
    for table in ("plain", "cached", "ident"):
        assert len({n for t, n in seen_next if t == table}) > ROUNDS // 4, table
    # the CACHE 20 sequence did run ahead of what the sessions handed out
    ((last_value,),) = db.execute("SELECT last_value FROM cached_seq").fetchall()
    ((top,),) = db.execute("SELECT max(id) FROM cached").fetchall()
    assert last_value > top
    assert check(db).findings[0].column.table == "drifted"


def test_the_cli_under_concurrent_inserts(db: Conn) -> None:
    db.execute(SCHEMA)
    with writers(db):
        for _ in range(3):
            result = seqdrift("check", dsn(db), "--format", "json")
            assert result.returncode == 1, result.stderr
            assert result.stderr == ""
            out = json.loads(result.stdout)
            assert out["skipped"] == []
            assert [(f["table"], f["first_collision"]) for f in out["findings"]] == [("drifted", 7)]
            assert {c["table"]: c["status"] for c in out["checked"]} == {
                "cached": "ok",
                "drifted": "finding",
                "ident": "ok",
                "plain": "ok",
            }


class RacingSession(PsycopgSession):
    """check()'s own session, except that after every statement it sends another
    session inserts rows with DEFAULT ids into ``table``: a write lands between any
    two of its reads, whichever read order the engine uses."""

    def __init__(self, conn: Conn, other: Conn, table: str) -> None:
        super().__init__(conn)
        self.other, self.table, self.raced = other, table, 0

    def _race(self) -> None:
        self.other.execute(
            f"INSERT INTO {self.table} (v) SELECT 'racing' FROM generate_series(1, 20)"
        )
        self.raced += 1

    def run(self, query: Any, params: Any = None) -> Any:
        try:
            return super().run(query, params)
        finally:
            self._race()

    def query_dicts(self, query: str, params: dict[str, Any]) -> Any:
        try:
            return super().query_dicts(query, params)
        finally:
            self._race()

    def _send_batch(self, statements: Any) -> Any:
        try:
            return super()._send_batch(statements)
        finally:
            self._race()


@pytest.mark.parametrize("table", ["plain", "cached"])
def test_a_write_between_any_two_reads_is_no_finding(db: Conn, table: str) -> None:
    """The race the writers above leave to chance, made certain: between any two
    statements check() sends, another session inserts rows with DEFAULT ids. The check
    must not see a collision; a naive reader (the sequence, then the max, each in a
    statement of its own) meets the same race and does report one."""
    db.execute(SCHEMA)
    db.execute(f"INSERT INTO {table} (v) VALUES ('before')")
    seq = "plain_id_seq" if table == "plain" else "cached_seq"
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        session = RacingSession(db, other, table)
        report = check(session)
        assert session.raced >= 3
        _only_the_planted_drift(report)

        # the control: a naive reader, the same race between its two reads
        naive = RacingSession(db, other, table)
        ((last_value,),) = naive.run(f"SELECT last_value FROM {seq}")
        ((top,),) = naive.run(f"SELECT max(id) FROM {table}")
        assert top > last_value  # "the next value already exists": a false collision


def test_a_sequence_another_session_alters_is_read_all_the_same(
    db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read block reads the states by one pg_sequence_last_value() call, whose ROW
    EXCLUSIVE lock an uncommitted ALTER SEQUENCE blocks: after the lock timeout they are
    read by their own queries, which it does not block. Every column judged, the drift
    found. (These few reads would be one statement of their own, ``prepared.direct``,
    which reads each sequence as such a query does: the block is what is tested here.)"""
    monkeypatch.setattr(prepared, "DIRECT", 0)
    db.execute(
        "CREATE TABLE a (id serial PRIMARY KEY); INSERT INTO a DEFAULT VALUES;"
        "CREATE TABLE b (id serial PRIMARY KEY); INSERT INTO b (id) VALUES (1), (2);"
    )
    with psycopg.connect(dsn(db)) as migration:
        migration.execute("ALTER SEQUENCE a_id_seq INCREMENT BY 1")  # held, not committed
        start = time.perf_counter()
        report = check(db, lock_timeout_ms=300)
        took = time.perf_counter() - start
        migration.rollback()
    assert report.skipped == []
    assert {v.column.table: v.next_value for v in report.checked} == {"a": 2, "b": 1}
    assert [f.column.table for f in report.findings] == ["b"]
    assert took >= 0.3  # the call waited for the lock, and the queries answered
