"""check() and the connection it is given: transactions, settings and round trips."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from pytest_seqdrift import CannotCheck, check
from pytest_seqdrift.connections import PsycopgSession

SEED = """
CREATE TABLE billing (id serial PRIMARY KEY);
INSERT INTO billing (id) VALUES (7), (9), (12), (14), (16);
"""


def test_idle_connection_is_left_idle_with_its_autocommit(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    db.autocommit = False
    db.commit()
    report = check(db)
    assert [f.first_collision for f in report.findings] == [7]
    assert db.info.transaction_status == TransactionStatus.IDLE
    assert db.autocommit is False


def test_runs_read_only_in_its_own_transaction(db: psycopg.Connection[Any]) -> None:
    """The check's own transaction is READ ONLY: prove it from inside, through the
    same session machinery check() uses."""
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=500):
        assert session.run("SHOW transaction_read_only") == [("on",)]
        assert session.run("SHOW transaction_isolation") == [("repeatable read",)]
        assert session.run("SHOW lock_timeout") == [("500ms",)]
    assert db.execute("SHOW lock_timeout").fetchone() == ("0",)


def test_users_transaction_is_untouched_and_its_rows_are_seen(db: psycopg.Connection[Any]) -> None:
    db.autocommit = False
    db.execute(SEED)  # uncommitted: the check must see it, and must not end it
    db.execute("SET LOCAL lock_timeout = '7s'")
    report = check(db)
    assert [f.first_collision for f in report.findings] == [7]
    assert db.info.transaction_status == TransactionStatus.INTRANS
    assert db.execute("SHOW lock_timeout").fetchone() == ("7s",)
    db.rollback()
    assert check(db).findings == []


def test_failed_transaction_is_a_clear_error(db: psycopg.Connection[Any]) -> None:
    db.autocommit = False
    with pytest.raises(psycopg.errors.DivisionByZero):
        db.execute("SELECT 1 / 0")
    with pytest.raises(CannotCheck, match="failed transaction"):
        check(db)
    assert db.info.transaction_status == TransactionStatus.INERROR


def test_not_a_connection_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot check a builtins.str"):
        check("postgresql://localhost/db")


@pytest.mark.parametrize("threshold", [0.0, 1.5, -1])
def test_threshold_is_validated(db: psycopg.Connection[Any], threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        check(db, threshold=threshold)


def test_round_trips_do_not_grow_with_the_number_of_tables(db: psycopg.Connection[Any]) -> None:
    def trips(n: int) -> int:
        for i in range(n):
            db.execute(f"CREATE TABLE IF NOT EXISTS t{i} (id serial PRIMARY KEY)")
            db.execute(f"INSERT INTO t{i} (id) VALUES (5) ON CONFLICT DO NOTHING")
        session = PsycopgSession(db)
        report = check(session)
        assert len(report.findings) == n
        return session.round_trips

    assert trips(2) == trips(40)


def test_one_statement_reads_agree_with_the_per_table_reads(db: psycopg.Connection[Any]) -> None:
    """The server-side batch (query_to_xml) and the per-table fallback answer alike."""
    from pytest_seqdrift import catalog, drift

    db.execute(
        '''
        CREATE SCHEMA "Odd ""Schema""";
        CREATE TABLE "Odd ""Schema"""."T ""1""" ("Id" serial PRIMARY KEY);
        INSERT INTO "Odd ""Schema"""."T ""1""" ("Id") VALUES (3), (-4), (9);
        CREATE SEQUENCE neg INCREMENT -3 MINVALUE -100 MAXVALUE -1 START -1;
        CREATE TABLE n (id int PRIMARY KEY DEFAULT nextval('neg'));
        INSERT INTO n VALUES (-7), (-10), (-50);
        CREATE SEQUENCE five INCREMENT 5 MAXVALUE 60;
        CREATE TABLE f (id numeric PRIMARY KEY DEFAULT nextval('five'));
        INSERT INTO f VALUES (11), (12.5), (56);
        CREATE TABLE p (id bigserial, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
        CREATE TABLE p1 PARTITION OF p FOR VALUES IN ('a');
        CREATE TABLE p2 PARTITION OF p FOR VALUES IN ('b');
        INSERT INTO p VALUES (4, 'a'), (2, 'b'), (-9223372036854775808, 'b');
        CREATE SEQUENCE cyc MAXVALUE 10 CYCLE;
        SELECT setval('cyc', 9);
        CREATE TABLE c (id smallint PRIMARY KEY DEFAULT nextval('cyc'));
        INSERT INTO c VALUES (2), (5);
        '''
    )
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=1000):
        rows = session.query_dicts(catalog.DISCOVERY, catalog.discovery_params(None))
        columns, sequences = catalog.parse_discovery(rows)
        states = catalog.parse_all_states(
            session.run(catalog.ALL_STATES, catalog.all_states_params(sequences.values()))
        )
        for seq in sequences.values():
            assert states[seq.oid] == catalog.parse_state(session.run(catalog.state_query(seq)))
        items = [
            (c, drift.plan(c, sequences[c.sequence_oid], states[c.sequence_oid])) for c in columns
        ]
        at_once = catalog.parse_all_bounds(
            session.run(catalog.ALL_BOUNDS, catalog.all_bounds_params(items)), len(items)
        )
        one_by_one = [
            catalog.parse_bounds(session.run(*catalog.bounds_query(c, p))) for c, p in items
        ]
    assert len(items) == 5
    assert at_once == one_by_one
    assert any(b.after_wrap is not None for b in at_once)
    assert any(b.last_on_grid is not None for b in at_once)


@pytest.mark.parametrize(
    ("number", "text"), [(150018, "15.18"), (110000, "11.0"), (90624, "9.6.24"), (100023, "10.23")]
)
def test_server_versions_read_as_people_write_them(number: int, text: str) -> None:
    from pytest_seqdrift.connections import version_text

    assert version_text(number) == text
