"""Faults on a real server: a backend killed mid-check or mid-probe, locks held by a
migration, statement timeouts, and a connection handed over in the middle of the user's
own transaction (or a failed one).

What each guarantees:

* ``seqdrift check`` whose server connection dies exits 2 with one line on stderr;
* the plugin fails the test whose database went away (or stayed locked) with the reason,
  and the run goes on to the next test;
* the probe never waits behind a migration's lock for longer than its lock timeout;
* ``assert_sequences_consistent`` inside the user's transaction works under a savepoint:
  it sees the user's uncommitted rows and leaves the transaction open, its rows and
  settings as they were; on a failed transaction it says so and touches nothing.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from support.cli import SEQDRIFT, clean_env, dsn, one_line, seqdrift, sequence_states
from support.plugin import QUIET

from pytest_seqdrift import CannotCheck, check
from pytest_seqdrift.probe import probe

Conn = psycopg.Connection[Any]


TWO_TABLES = """
CREATE TABLE busy (id serial PRIMARY KEY, v int);
CREATE TABLE idle (id serial PRIMARY KEY, v int);
INSERT INTO busy (id) VALUES (3);
INSERT INTO idle (id, v) VALUES (4, 0);
"""


def waiting_pid(db: Conn, application: str, deadline_s: float = 20) -> int:
    """The backend of ``application`` once it waits for a lock."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            [application],
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)
    raise AssertionError(f"{application} never waited for the lock")


@contextmanager
def watchdog(db: Conn, pid: int, seconds: float) -> Iterator[None]:
    """Cancel backend ``pid``'s statement should the block still run after ``seconds``:
    a hang becomes a failure instead of a stuck test run."""
    done = threading.Event()

    def bite() -> None:
        if not done.wait(seconds):
            with psycopg.connect(db.info.dsn, autocommit=True) as other:
                other.execute("SELECT pg_cancel_backend(%s)", [pid])

    thread = threading.Thread(target=bite, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        yield
    finally:
        done.set()
        thread.join()
    assert time.monotonic() - started < seconds, "it waited behind the lock"


# --- the server goes away mid-check -------------------------------------------------------


def test_cli_exits_two_with_one_line_when_its_backend_is_killed(db: Conn) -> None:
    db.execute(TWO_TABLES)
    with psycopg.connect(db.info.dsn) as migration:
        migration.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        # no lock timeout: the check waits for the lock until its backend is killed
        proc = subprocess.Popen(
            [SEQDRIFT, "check", dsn(db, application_name="seqdrift-killed"), "--lock-timeout", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            pid = waiting_pid(db, "seqdrift-killed")
            db.execute("SELECT pg_terminate_backend(%s)", [pid])
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, stderr
    assert stdout == ""
    line = one_line(stderr)
    assert line.startswith("seqdrift: cannot check: "), line
    assert "server closed the connection" in line or "terminating connection" in line, line


def test_the_plugin_fails_the_test_whose_database_went_away_and_goes_on(
    pytester: pytest.Pytester,
) -> None:
    """tests/examples/faults/test_killed.py: two tests whose backend is terminated while the plugin
    waits for a migration's lock (once in the check, once in the probe's inserts), a
    table locked all through the probe, a sequence a migration is altering; the tests
    after them run and are judged as usual."""
    pytester.copy_example("faults")
    started = time.monotonic()
    result = pytester.runpytest(*QUIET, "--seqdrift", "-p", "no:randomly")
    assert time.monotonic() - started < 60
    result.assert_outcomes(passed=1, failed=5)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_killed_while_checked _*",
            "pytest-seqdrift: could not check the database: *server closed the connection*",
            "*_ test_killed_while_probed _*",
            "pytest-seqdrift: could not check the database: "
            "terminating connection due to administrator command",
        ]
    )
    # after the kills: the next tests were probed, drift found as usual
    result.stdout.fnmatch_lines(
        [
            "*_ test_the_run_goes_on _*",
            "sequence drift in 1 column:",
            "*next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
        ]
    )
    # a table locked by a migration all through the probe: skipped, the rest probed
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_locked_table_is_left_alone _*",
            "  public.profile_billingaddress.id  (sequence public.profile_billingaddress_id_seq)",
            "checked 1 column in 1 table: 1 collision; 1 skipped",
        ]
    )
    # a sequence locked by a migration: the probe cannot draw from it and gives up on
    # that column in time (a note); the arithmetic's verdict stands
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_sequence_altered_by_a_migration _*",
            "sequence drift in 1 column:",
            "*next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
        ]
    )
    assert "Traceback" not in out
    assert "PytestUnhandledThreadExceptionWarning" not in out


# --- locks: the probe never waits longer than its lock timeout ---------------------------


def test_the_probe_skips_a_table_a_migration_holds(db: Conn) -> None:
    db.execute(TWO_TABLES)
    before = sequence_states(db)
    with psycopg.connect(db.info.dsn) as migration:
        migration.execute("ALTER TABLE busy ADD COLUMN note text")  # ACCESS EXCLUSIVE
        with watchdog(db, db.info.backend_pid, 15):
            result = probe(db, lock_timeout_ms=200)
        migration.rollback()
    assert [f.column.table for f in result.report.findings] == ["idle"]
    ((skipped),) = result.report.skipped
    assert (skipped.table, skipped.column) == ("busy", "id")
    assert "lock timeout" in skipped.reason
    assert [p.column.table for p in result.probed] == ["idle"]
    assert sequence_states(db) == before
    assert db.info.transaction_status == TransactionStatus.IDLE


def test_the_probe_gives_up_in_time_on_a_sequence_a_migration_alters(db: Conn) -> None:
    """ALTER SEQUENCE holds a lock that nextval waits for: the probe cannot draw from
    that sequence; it must say so within its lock timeout (that column's note: the
    other columns are probed), and leave every sequence as it was."""
    db.execute(TWO_TABLES)
    before = sequence_states(db)
    with psycopg.connect(db.info.dsn) as migration:
        migration.execute("ALTER SEQUENCE busy_id_seq RESTART 100")
        with watchdog(db, db.info.backend_pid, 15):
            result = probe(db, lock_timeout_ms=200)
        migration.rollback()
    (busy,) = [p for p in result.probed if p.column.table == "busy"]
    assert busy.note == (
        "could not be probed: canceling statement due to lock timeout; "
        "the arithmetic's verdict stands"
    )
    (idle,) = [p for p in result.probed if p.column.table == "idle"]
    assert (idle.note, idle.inserts_until_collision, idle.value) == (None, 3, 4)
    assert sequence_states(db) == before
    assert db.info.transaction_status == TransactionStatus.IDLE
    assert check(db).findings  # the connection is still good


# --- statement_timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["api", "cli"])
def test_statement_timeout_skips_that_table_and_checks_the_rest(db: Conn, how: str) -> None:
    db.execute(TWO_TABLES)
    with psycopg.connect(db.info.dsn) as migration:
        migration.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        if how == "api":
            report = check(db, lock_timeout_ms=60_000, statement_timeout_ms=200)
            findings = [f.column.table for f in report.findings]
            skipped = [(s.table, s.reason) for s in report.skipped]
            assert [c.column.table for c in report.checked] == ["idle"]
        else:
            result = seqdrift(
                "check", dsn(db), "--format", "json", "--lock-timeout", "0",
                "--statement-timeout", "200ms",
            )  # fmt: skip
            assert result.returncode == 1, result.stderr
            out = json.loads(result.stdout)
            findings = [f["table"] for f in out["findings"]]
            skipped = [(s["table"], s["reason"]) for s in out["skipped"]]
    assert time.monotonic() - started < 15
    assert findings == ["idle"]
    assert skipped == [("busy", "canceling statement due to statement timeout")]
    if how == "api":  # the user's own setting is back
        assert db.execute("SHOW statement_timeout").fetchone() == ("0",)


# --- the fixture and the user's transaction -------------------------------------------------

SEED = """
CREATE TABLE billing (id serial PRIMARY KEY, street text);
INSERT INTO billing (id, street) VALUES (7, 'a'), (9, 'b'), (16, 'c');
"""


def test_fixture_inside_the_users_transaction_leaves_it_open_and_untouched(
    db: Conn, assert_sequences_consistent: Callable[..., Any]
) -> None:
    """The check runs under a savepoint of the user's transaction: the user's
    uncommitted rows are what it judges, and afterwards the transaction is still open,
    its rows, its settings and its own savepoints as they were, and it can go on."""
    from pytest_seqdrift.fixtures import SequenceDriftError

    db.autocommit = False
    db.execute(SEED)  # uncommitted
    db.execute("SET LOCAL statement_timeout = '9s'")
    db.execute("SAVEPOINT users_own")
    db.execute("INSERT INTO billing (id, street) VALUES (20, 'd')")
    backend = db.info.backend_pid
    (xid,) = db.execute("SELECT txid_current()").fetchone() or (None,)

    with pytest.raises(
        SequenceDriftError, match=r"the 7th collides with existing id 7 \(max id 20\)"
    ):
        assert_sequences_consistent(db)

    assert db.info.transaction_status == TransactionStatus.INTRANS
    assert db.execute("SELECT txid_current()").fetchone() == (xid,)  # the same transaction
    assert db.info.backend_pid == backend
    assert db.execute("SHOW statement_timeout").fetchone() == ("9s",)
    assert db.execute("SELECT array_agg(id ORDER BY id) FROM billing").fetchone() == (
        [7, 9, 16, 20],
    )
    db.execute("ROLLBACK TO SAVEPOINT users_own")  # the user's savepoint is still there
    db.execute("SELECT setval('billing_id_seq', 16)")
    assert_sequences_consistent(db)  # clean now, still inside the same transaction
    assert db.execute("SELECT txid_current()").fetchone() == (xid,)
    db.rollback()
    # nothing was committed behind the user's back
    assert db.execute("SELECT to_regclass('billing')").fetchone() == (None,)
    db.rollback()


def test_fixture_on_a_failed_transaction_says_so_and_leaves_it_failed(
    db: Conn, assert_sequences_consistent: Callable[..., Any]
) -> None:
    db.execute(SEED)
    db.autocommit = False
    db.execute("INSERT INTO billing (id, street) VALUES (30, 'x')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO billing (id, street) VALUES (7, 'again')")
    with pytest.raises(CannotCheck, match="failed transaction: roll it back before checking"):
        assert_sequences_consistent(db)
    assert db.info.transaction_status == TransactionStatus.INERROR  # still failed
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        db.execute("SELECT 1")
    db.rollback()
    # the failed transaction's row never landed, and the check works again
    assert db.execute("SELECT max(id) FROM billing").fetchone() == (16,)
    db.rollback()
    db.autocommit = True
    assert check(db).findings
