"""The probe inside a test's own transaction with deferred checks pending (Django makes
every foreign key DEFERRABLE INITIALLY DEFERRED), and next to another session's open
transaction that holds a lock on the table: it answers exactly, leaves the caller's
transaction as it was -- its deferred checks still to run at COMMIT -- and never
waits past its lock timeout."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

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
