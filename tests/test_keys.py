"""Which expression keys are judged like a key on the id: PostgreSQL's own deparsed
texts of one-to-one and many-to-one expressions, classified, and each verdict proven
by a real INSERT of an id the table already holds (or of one that maps onto it)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors

from pytest_seqdrift import check
from pytest_seqdrift.read.keys import _injective

Conn = psycopg.Connection[Any]

# one-to-one on integers: a second row with the same id fails, and no other id does
ONE_TO_ONE = [
    "(id::text)",
    "(id::varchar)",
    "(id::numeric)",
    "(id::bigint)",
    "((id + 7))",
    "((id - 7))",
    "((7 + id))",
    "((id * 3))",
    "((-3 * id))",
    "((- id))",
    "(((id * 2) + 1))",
    "(((id::bigint) * 2)::text)",
]
# many-to-one: distinct ids share a value
MANY_TO_ONE = [
    "((id % 1000))",
    "((id / 10))",
    "(abs(id))",
    "((id * 0))",
    "(md5(id::text))",
    "((id::real))",
    "(left(id::text, 1))",
]


@pytest.mark.parametrize("expr", ONE_TO_ONE + MANY_TO_ONE)
def test_the_deparsed_expression_is_classified_as_postgresql_enforces_it(
    db: Conn, expr: str
) -> None:
    db.execute(f"CREATE TABLE t (id int); CREATE UNIQUE INDEX t_k ON t ({expr})")
    ((text,),) = db.execute("SELECT pg_get_indexdef('t_k'::regclass, 1, false)").fetchall()
    assert _injective(text, "id") == (expr in ONE_TO_ONE), text
    # the truth, for the many-to-one ones: two different ids collide
    if expr not in ONE_TO_ONE:
        pair = {
            "((id % 1000))": (5, 1005),
            "((id / 10))": (11, 12),
            "(abs(id))": (4, -4),
            "((id * 0))": (1, 2),
            "(md5(id::text))": None,
            "((id::real))": (16777217, 16777216),
            "(left(id::text, 1))": (3, 31),
        }[expr]
        if pair is not None:
            with db.transaction(force_rollback=True):
                db.execute("INSERT INTO t VALUES (%s)", [pair[0]])
                with pytest.raises(errors.UniqueViolation), db.transaction():
                    db.execute("INSERT INTO t VALUES (%s)", [pair[1]])


@pytest.mark.parametrize("expr", ONE_TO_ONE)
def test_a_one_to_one_expression_key_collides_where_a_key_on_the_id_would(
    db: Conn, expr: str
) -> None:
    db.execute(
        f"""CREATE TABLE t (id serial, v int); CREATE UNIQUE INDEX t_k ON t ({expr});
            INSERT INTO t (id) VALUES (3), (4), (9)"""
    )
    (f,) = check(db).findings
    assert (f.first_collision, f.inserts_until_collision) == (3, 2)
    with db.transaction(force_rollback=True):
        for _ in range(2):
            db.execute("INSERT INTO t (v) VALUES (0)")
        with pytest.raises(errors.UniqueViolation), db.transaction():
            db.execute("INSERT INTO t (v) VALUES (0)")


@pytest.mark.parametrize("expr", [e for e in MANY_TO_ONE if e != "(md5(id::text))"])
def test_a_many_to_one_expression_key_is_unchecked_and_named(db: Conn, expr: str) -> None:
    db.execute(
        f"""CREATE TABLE t (id serial, v int); CREATE UNIQUE INDEX t_k ON t ({expr});
            INSERT INTO t (id) VALUES (3)"""
    )
    report = check(db)
    assert report.findings == []
    (verdict,) = report.checked
    assert verdict.status == "unchecked"
    assert verdict.note is not None
    assert "t_k" in verdict.note


def test_a_key_that_reads_another_column_too_is_not_taken_for_a_key_on_the_id(db: Conn) -> None:
    """``(id + tag)`` maps (1, 2) and (2, 1) onto one value: many-to-one in the id."""
    db.execute(
        """CREATE TABLE t (id serial, tag int, g int GENERATED ALWAYS AS (id + tag) STORED UNIQUE);
           INSERT INTO t (id, tag) VALUES (3, 1)"""
    )
    (verdict,) = check(db).checked
    assert verdict.status == "unchecked"
    assert verdict.note is not None
    assert "t_g_key" in verdict.note
