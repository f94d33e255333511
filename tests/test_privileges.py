"""What a role cannot read is skipped with the reason, at the API level, and never
taken for a sequence that was never used.

``pg_sequences.last_value`` is NULL both for a sequence never used and for one the role
may not read: the check must tell them apart. (The command line's side of privileges is
in test_cli_check.py.)"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from support.cli import login_role

from pytest_seqdrift import check

Conn = psycopg.Connection[Any]

SCHEMA = """
-- never used, and id 1 is taken: the very next insert collides
CREATE TABLE unused_open (id serial PRIMARY KEY);
INSERT INTO unused_open (id) VALUES (1);
CREATE TABLE unused_hidden (id serial PRIMARY KEY);
INSERT INTO unused_hidden (id) VALUES (1);
-- used, then readable through USAGE only (nextval / currval), not SELECT
CREATE TABLE usage_only (id serial PRIMARY KEY);
INSERT INTO usage_only DEFAULT VALUES;
-- the table itself unreadable
CREATE TABLE secret (id serial PRIMARY KEY);
INSERT INTO secret (id) VALUES (5);
-- readable, used, fine
CREATE TABLE fine (id serial PRIMARY KEY);
INSERT INTO fine DEFAULT VALUES;
"""


def test_unreadable_is_skipped_never_taken_for_never_used(db: Conn) -> None:
    db.execute(SCHEMA)
    with login_role(db) as role:
        ident = sql.Identifier(role)
        for grant in (
            "GRANT SELECT ON unused_open, unused_open_id_seq, unused_hidden, usage_only, fine, "
            "fine_id_seq TO {}",
            "GRANT USAGE ON SEQUENCE usage_only_id_seq TO {}",
            "GRANT SELECT ON SEQUENCE secret_id_seq TO {}",
        ):
            db.execute(sql.SQL(grant).format(ident))
        with psycopg.connect(db.info.dsn, user=role, autocommit=True) as conn:
            # the ambiguity: NULL for the sequence never used and for the hidden one alike
            nulls: dict[str, int | None] = dict(
                conn.execute(
                    "SELECT sequencename::text, last_value FROM pg_sequences "
                    "WHERE sequencename IN ('unused_open_id_seq', 'unused_hidden_id_seq')"
                ).fetchall()
            )
            assert nulls == {"unused_open_id_seq": None, "unused_hidden_id_seq": None}
            report = check(conn)

    findings = {f.column.table: f for f in report.findings}
    assert list(findings) == ["unused_open"]  # never used, readable: judged
    f = findings["unused_open"]
    assert (f.next_value, f.first_collision, f.inserts_until_collision) == (1, 1, 0)
    assert {c.column.table: c.status for c in report.checked} == {
        "fine": "ok",
        "unused_open": "finding",
    }
    assert {s.table: s.reason for s in report.skipped} == {
        "unused_hidden": "permission denied: cannot SELECT from sequence public.unused_hidden_id_seq",
        "usage_only": "permission denied: cannot SELECT from sequence public.usage_only_id_seq",
        "secret": "permission denied: cannot SELECT column id",
    }
    for s in report.skipped:
        assert (s.schema, s.column, s.sequence) == ("public", "id", f"public.{s.table}_id_seq")

    # the owner sees the two drifts the role could not: skipping hid them, nothing else did
    owner = check(db)
    assert sorted(f.column.table for f in owner.findings) == [
        "secret",
        "unused_hidden",
        "unused_open",
    ]
    assert owner.skipped == []
