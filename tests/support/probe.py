"""What the probe's tests share: the database's contents, sequences and structure
before and after a probe, and what the probe and the arithmetic said of one table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from pytest_seqdrift import snapshot
from pytest_seqdrift.model import Checked, Finding, Report, SequenceState
from pytest_seqdrift.probe import Mode, Probed, ProbeReport
from pytest_seqdrift.snapshot import SequenceKey

Conn = psycopg.Connection[Any]
States = dict[SequenceKey, SequenceState]

MODES: tuple[Mode, ...] = ("insert", "default")

SEED_STORY = """
    CREATE TABLE t (id serial PRIMARY KEY, v int);
    INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);
"""

# -- what the database holds -------------------------------------------------------------

_USER_TABLES = """
SELECT n.nspname::text, c.relname::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2
"""

_INDEXES = """
SELECT schemaname::text, tablename::text, indexname::text, indexdef,
       to_regclass(quote_ident(schemaname) || '.' || quote_ident(indexname))::oid::int8
FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3
"""

_CONSTRAINTS = """
SELECT oid::int8, conrelid::regclass::text, conname::text, contype::text, conindid::int8,
       pg_get_constraintdef(oid)
FROM pg_constraint
WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
ORDER BY 2, 3
"""


def contents(db: Conn) -> dict[str, list[str]]:
    """Every row of every user table (partitions included), as text, in order."""
    tables = [(str(s), str(t)) for s, t in db.execute(_USER_TABLES).fetchall()]
    return {
        f"{schema}.{table}": [
            str(r)
            for (r,) in db.execute(
                sql.SQL("SELECT r::text FROM {} AS r ORDER BY 1").format(
                    sql.Identifier(schema, table)
                )
            ).fetchall()
        ]
        for schema, table in tables
    }


def structure(db: Conn) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every index (pg_indexes) and constraint (pg_constraint), with their oids."""
    return (
        [tuple(r) for r in db.execute(_INDEXES).fetchall()],
        [tuple(r) for r in db.execute(_CONSTRAINTS).fetchall()],
    )


def states(db: Conn) -> States:
    return snapshot.read_states(db)


@contextmanager
def unchanged(db: Conn, *, tables: bool = True) -> Iterator[States]:
    """Assert that sequences (and, by default, rows, indexes and constraints) are
    exactly as they were once the block is over."""
    __tracebackhide__ = True
    before_states, before_rows, before_structure = states(db), contents(db), structure(db)
    yield before_states
    assert states(db) == before_states
    if tables:
        assert contents(db) == before_rows
        assert structure(db) == before_structure


# -- what the probe and the arithmetic said ----------------------------------------------


def probed_for(result: ProbeReport, table: str) -> Probed:
    __tracebackhide__ = True
    found = [p for p in result.probed if p.column.table == table]
    assert len(found) == 1, result.probed
    return found[0]


def collision_for(report: Report, table: str) -> Finding | None:
    __tracebackhide__ = True
    found = [f for f in report.findings if f.kind == "collision" and f.column.table == table]
    assert len(found) <= 1, report.findings
    return found[0] if found else None


def checked_for(report: Report, table: str) -> Checked:
    __tracebackhide__ = True
    found = [c for c in report.checked if c.column.table == table]
    assert len(found) == 1, report.checked
    return found[0]


def saw(p: Probed) -> tuple[int | None, int | None]:
    return p.inserts_until_collision, p.value


def numbers(f: Finding | None) -> tuple[int | None, ...] | None:
    if f is None:
        return None
    return (f.next_value, f.first_collision, f.inserts_until_collision, f.max_existing)
