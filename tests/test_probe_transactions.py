"""The probe inside a test's own transaction with deferred checks pending (Django makes
every foreign key DEFERRABLE INITIALLY DEFERRED), and next to another session's open
transaction that holds a lock on the table: it answers exactly, leaves the caller's
transaction as it was -- its deferred checks still to run at COMMIT -- and never
waits past its lock timeout."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import snapshot
from pytest_seqdrift.probe import probe

Conn = psycopg.Connection[Any]

SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY);
INSERT INTO parent VALUES (1);
CREATE TABLE child (
    id serial PRIMARY KEY,
    code text UNIQUE,  -- another unique key: the insert probe drops it, with ALTER TABLE
    parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED
);
INSERT INTO child (id, code, parent_id) VALUES (3, 'c', 1);  -- ahead of its sequence
"""


def collision(result: Any) -> tuple[str, int | None, int | None]:
    (finding,) = result.report.findings
    return finding.column.table, finding.inserts_until_collision, finding.first_collision


def test_pending_deferred_checks_do_not_stop_the_insert_probe(db: Conn) -> None:
    db.execute(SCHEMA)
    with db.transaction():
        db.execute("INSERT INTO child (code, parent_id) VALUES ('x', 1)")  # a check pending
        result = probe(db)
        # the copies collide where the arithmetic says: the probe really inserted
        assert collision(result) == ("child", 1, 3)
        assert not any(p.note for p in result.probed if p.column.table == "child")
        # the caller's transaction: open, its constraint still deferred
        db.execute("INSERT INTO child (code, parent_id) VALUES ('y', 42)")  # no error yet
        db.execute("DELETE FROM child WHERE parent_id = 42")
    assert db.execute("SELECT count(*) FROM child").fetchone() == (2,)


def test_a_deferred_check_pending_at_commit_still_runs_there(db: Conn) -> None:
    db.execute(SCHEMA)
    with db.transaction():
        db.execute("INSERT INTO child (code, parent_id) VALUES ('x', 42)")  # invalid
        result = probe(db)
        assert collision(result) == ("child", 1, 3)
        # the failing check made the insert probe fall back; the COMMIT still fails
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            db.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_a_deferred_check_that_fails_now_makes_the_probe_alter_nothing(db: Conn) -> None:
    db.execute(SCHEMA)
    with db.transaction():
        db.execute("INSERT INTO child (code, parent_id) VALUES ('x', 2)")  # parent 2 comes later
        result = probe(db)
        assert collision(result) == ("child", 1, 3)
        (child,) = [p for p in result.probed if p.column.table == "child"]
        assert child.mode == "default"
        assert child.note is not None
        assert child.note.startswith("fell back to the default probe: cannot ALTER TABLE")
        db.execute("INSERT INTO parent VALUES (2)")  # now the pending check holds
    assert db.execute("SELECT count(*) FROM child").fetchone() == (2,)


def test_a_table_another_session_holds_is_probed_without_waiting(db: Conn) -> None:
    """The test's own SQLAlchemy session, say, still in its transaction after the body:
    it holds a lock that ALTER TABLE waits for."""
    db.execute(SCHEMA)
    with psycopg.connect(db.info.dsn) as other:
        other.execute("INSERT INTO child (code, parent_id) VALUES ('o', 1)")  # open, locked
        pid = other.info.backend_pid
        result = probe(db, lock_timeout_ms=200)
        other.rollback()
    assert collision(result) == ("child", 1, 3)
    (child,) = [p for p in result.probed if p.column.table == "child"]
    assert child.mode == "default"
    assert child.note is not None
    assert child.note.startswith(
        "fell back to the default probe: the table is locked by another session "
        f"(pid {pid} (idle in transaction for "
    )
    assert "last: INSERT INTO child" in child.note


# -- a psycopg transaction (not autocommit) that inserted rows with deferred references ---

# Django's shape: every foreign key DEFERRABLE INITIALLY DEFERRED. ``account`` drifted
# (its sequence is behind its rows) and is referenced by ``entry``, through its id and
# through a unique code; ``entry`` drifted too.
DEFERRED_REFERENCES = """
CREATE TABLE account (id serial PRIMARY KEY, code text UNIQUE NOT NULL);
INSERT INTO account (id, code) VALUES (5, 'a5'), (6, 'a6');
CREATE TABLE entry (
    id serial PRIMARY KEY,
    ref text UNIQUE,
    account_id int REFERENCES account DEFERRABLE INITIALLY DEFERRED,
    account_code text REFERENCES account (code) DEFERRABLE INITIALLY DEFERRED
);
INSERT INTO entry (id, ref, account_id, account_code) VALUES (4, 'e4', 5, 'a5');
"""

PENDING = {
    # what the user's open transaction inserted: checks pending until its COMMIT
    "valid": "INSERT INTO entry (ref, account_id, account_code) VALUES ('new', 6, 'a6')",
    "invalid-id": "INSERT INTO entry (ref, account_id, account_code) VALUES ('new', 42, 'a6')",
    "invalid-code": "INSERT INTO entry (ref, account_id, account_code) VALUES ('new', 6, 'zz')",
}


def _user_transaction(db: Conn, pending: str) -> Conn:
    """A second connection, not in autocommit mode (psycopg's default, Django's inside
    a test): its INSERT opens the transaction the probe then runs in."""
    conn = psycopg.connect(db.info.dsn)
    conn.execute(PENDING[pending])
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    return conn


def _drift(result: Any) -> dict[str, tuple[int | None, int | None, int | None]]:
    return {
        f.column.table: (f.next_value, f.inserts_until_collision, f.first_collision)
        for f in result.report.findings
        if f.kind == "collision"
    }


# entry's own insert took id 1: the next is 2, the 3rd insert meets id 4; account: 1..4 pass
EXPECTED_DRIFT = {"account": (1, 4, 5), "entry": (2, 2, 4)}


@pytest.mark.parametrize("nested", [False, True], ids=["transaction", "savepoint"])
@pytest.mark.parametrize("pending", sorted(PENDING))
def test_the_probe_inside_a_transaction_with_deferred_references(
    db: Conn, pending: str, nested: bool
) -> None:
    """The probe succeeds on that very connection, inside the transaction (and inside a
    savepoint of it, as in a Django ``atomic`` block), says what PostgreSQL says; and the
    transaction goes on exactly as it would have: open and usable, its foreign keys
    still deferred, its pending checks run at its COMMIT -- which succeeds for a valid
    reference and fails for an invalid one, there and not earlier."""
    db.execute(DEFERRED_REFERENCES)
    conn = _user_transaction(db, pending)
    try:
        with conn.transaction() if nested else contextlib.nullcontext():
            result = probe(conn)
            assert _drift(result) == EXPECTED_DRIFT
            # still usable: nothing failed early, and the keys are still deferred
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            conn.execute("INSERT INTO entry (ref, account_id) VALUES ('later', 99)")
            conn.execute("DELETE FROM entry WHERE ref = 'later'")
        if pending == "valid":
            conn.commit()
            with psycopg.connect(db.info.dsn) as other:
                assert other.execute("SELECT ref FROM entry ORDER BY ref").fetchall() == [
                    ("e4",),
                    ("new",),
                ]
        else:
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("pending", sorted(PENDING))
def test_the_probe_inside_a_transaction_leaves_its_sequences_and_tables_alone(
    db: Conn, pending: str
) -> None:
    db.execute(DEFERRED_REFERENCES)
    conn = _user_transaction(db, pending)

    def seen() -> tuple[Any, ...]:
        return (
            snapshot.read_states(conn),
            conn.execute("SELECT * FROM entry ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM account ORDER BY id").fetchall(),
            conn.execute(
                "SELECT conname, condeferrable, condeferred FROM pg_constraint ORDER BY 1"
            ).fetchall(),
        )

    try:
        before = seen()
        probe(conn)
        assert seen() == before
    finally:
        conn.rollback()
        conn.close()
