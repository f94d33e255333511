"""The truth oracle of tests/test_shapes.py, and the comparisons with ``check()`` and
``probe()``.

The oracle knows nothing of seqdrift: it runs the application's own INSERT, one at a
time, each in a savepoint, inside a transaction that is rolled back, and counts how many
go in before PostgreSQL refuses one with a unique or exclusion violation. Every
sequence of the database is read before and put back exactly afterwards (``nextval``
is not rolled back with the transaction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import errors, sql

from pytest_seqdrift.model import Checked, Finding, Report
from pytest_seqdrift.probe import ProbeReport

Conn = psycopg.Connection[Any]
States = dict[str, tuple[int, bool]]
Where = tuple[str, str, str]  # schema, table, column

# how check() must judge a shape:
#   exact    the arithmetic must be exact
#   decided  a trigger or rule decides what is stored: "unchecked", the note names it
#   loose    exact, or "unchecked" with a note naming ``names`` -- never "ok" when the
#            oracle finds a collision, never a wrong number
Judged = Literal["exact", "decided", "loose"]


# -- every sequence of the database ------------------------------------------------------

_SEQUENCES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' ORDER BY 1
"""


def sequence_states(db: Conn) -> States:
    """Every sequence's (last_value, is_called), read from the sequence itself."""
    names = [str(r[0]) for r in db.execute(_SEQUENCES)]
    if not names:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::text, last_value, is_called FROM {}").format(
            sql.Literal(name),
            sql.SQL(name),  # quoted by quote_ident above
        )
        for name in names
    )
    return {str(n): (int(lv), bool(ic)) for n, lv, ic in db.execute(query)}


def put_back(db: Conn, states: States) -> None:
    for name, (last_value, is_called) in states.items():
        db.execute("SELECT setval(%s::regclass, %s, %s)", [name, last_value, is_called])


# -- the oracle --------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """What PostgreSQL said of ``limit`` inserts."""

    inserts: int | None  # inserts that went in before the first refused one; None: none was
    value: int | None  # the value the refused insert gave the column
    first: int | None  # the value the column got from the very first insert
    limit: int
    passed_max: bool  # a value above the column's highest existing one went in first

    @property
    def collides(self) -> bool:
        return self.inserts is not None

    def __str__(self) -> str:
        if self.inserts is None:
            return f"no collision within {self.limit} inserts (the first gets {self.first})"
        return (
            f"collision after {self.inserts} inserts, on {self.value} (the first gets {self.first})"
        )


_DETAIL = re.compile(r"^Key \((?P<cols>.*?)\)=\((?P<vals>.*?)\) (?:already exists|conflicts)")


def truth(
    db: Conn,
    *,
    table: str,
    column: str,
    insert: str,
    schema: str = "public",
    limit: int = 200,
    prepare: Seq[str] = (),
) -> Truth:
    """Run ``insert`` (the application's INSERT, taking the column's value the way the
    application does) up to ``limit`` times, each in a savepoint, in a transaction that
    is rolled back; ``prepare`` runs first in the same transaction. Every sequence is
    put back afterwards, and checked to be back."""
    __tracebackhide__ = True
    col = sql.Identifier(column)
    rel = sql.Identifier(schema, table)
    (top,) = one(db, sql.SQL("SELECT max({}) FROM {}").format(col, rel))
    returning = sql.SQL("{} RETURNING {}").format(sql.SQL(insert), col)
    before = sequence_states(db)
    values: list[int | None] = []
    failure: psycopg.Error | None = None
    value: int | None = None
    try:
        with db.transaction(force_rollback=True):
            for statement in prepare:
                db.execute(statement)
            db.execute("SAVEPOINT truth_start")
            for _ in range(limit):
                db.execute("SAVEPOINT truth_one")
                try:
                    row = one(db, returning)
                except (errors.UniqueViolation, errors.ExclusionViolation) as exc:
                    db.execute("ROLLBACK TO SAVEPOINT truth_one")
                    failure = exc
                    break
                db.execute("RELEASE SAVEPOINT truth_one")
                values.append(None if row[0] is None else int(row[0]))
            if failure is not None:
                value = _key_value(db, failure, schema, table, column)
                if value is None:
                    value = _replayed(db, before, failure, returning, len(values))
    finally:
        put_back(db, before)
    assert sequence_states(db) == before, "the oracle did not put the sequences back"
    inserted = [v for v in values if v is not None]
    first = values[0] if values else value
    return Truth(
        inserts=None if failure is None else len(values),
        value=value,
        first=first,
        limit=limit,
        passed_max=top is not None and any(v > top for v in inserted),
    )


def one(db: Conn, query: sql.Composed | str) -> tuple[Any, ...]:
    row = db.execute(query).fetchone()
    assert row is not None
    return tuple(row)


_OURS = """
SELECT format('%%I.%%I', %s::text, %s::text)::regclass
       IN (SELECT relid FROM pg_partition_tree(format('%%I.%%I', %s::text, %s::text)::regclass))
"""


def _key_value(db: Conn, exc: psycopg.Error, schema: str, table: str, column: str) -> int | None:
    """The refused value, from "Key (id)=(7) already exists." -- only where the key's
    first part is the column itself, on the table or one of its partitions."""
    diag = exc.diag
    found = _DETAIL.match(diag.message_detail or "")
    if found is None or diag.table_name is None or diag.schema_name is None:
        return None
    if found.group("cols").split(", ")[0] != column:
        return None
    row = db.execute(_OURS, [diag.schema_name, diag.table_name, schema, table]).fetchone()
    assert row is not None
    (ours,) = row
    if not ours:
        return None
    first = found.group("vals").split(", ")[0]
    return int(first) if re.fullmatch(r"-?\d+", first) else None


def _replayed(
    db: Conn, before: States, exc: psycopg.Error, returning: sql.Composed, done: int
) -> int | None:
    """The value the refused insert gave the column, where the error does not spell it
    (a key on an expression or a generated column): back to the start, the violated
    constraint (or unique index) dropped, the same inserts again from the same sequence
    states; the last one now goes in and returns it."""
    diag = exc.diag
    if diag.constraint_name is None or diag.table_name is None or diag.schema_name is None:
        return None
    db.execute("ROLLBACK TO SAVEPOINT truth_start")
    put_back(db, before)
    name = sql.Identifier(diag.constraint_name)
    try:
        with db.transaction():
            db.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} CASCADE").format(
                    sql.Identifier(diag.schema_name, diag.table_name), name
                )
            )
    except errors.UndefinedObject:
        with db.transaction():
            db.execute(
                sql.SQL("DROP INDEX {} CASCADE").format(
                    sql.Identifier(diag.schema_name, diag.constraint_name)
                )
            )
    last: tuple[Any, ...] = ()
    try:
        with db.transaction():
            for _ in range(done + 1):
                last = one(db, returning)
    except psycopg.Error:
        return None
    return None if last[0] is None else int(last[0])


# -- what check() and probe() say, against the truth -------------------------------------


def where_of(column: Any) -> Where:
    return column.schema, column.table, column.column


def collisions(report: Report, where: Where) -> list[Finding]:
    return [f for f in report.findings if f.kind == "collision" and where_of(f.column) == where]


def verdicts(report: Report, where: Where) -> list[Checked]:
    return [c for c in report.checked if where_of(c.column) == where]


def said(report: Report, where: Where) -> str:
    """What the report says of the column, on one line."""
    parts = [f"{c.status} ({c.note})" if c.note else c.status for c in verdicts(report, where)]
    parts += [
        f"skipped ({s.reason})" for s in report.skipped if (s.schema, s.table, s.column) == where
    ]
    parts += [
        f"collision: next {f.next_value}, first {f.first_collision}, "
        f"after {f.inserts_until_collision} inserts"
        for f in collisions(report, where)
    ]
    return "; ".join(parts) or "not listed"


def check_problems(
    report: Report,
    where: Where,
    t: Truth,
    *,
    judged: Judged = "exact",
    names: str | None = None,
    statuses: Seq[str] = ("ok",),
) -> list[str]:
    """Where check()'s report disagrees with the truth about the column, in words."""
    entries, found = verdicts(report, where), collisions(report, where)
    label = ".".join(where)
    if not entries:
        return [f"check(): {label} is not listed ({said(report, where)})"]
    problems: list[str] = []

    def unchecked_naming(lead: str = "") -> None:
        for c in entries:
            if c.status != "unchecked" or not c.note or (names and names not in c.note):
                what = f"'unchecked', with a note naming {names}" if names else "'unchecked'"
                problems.append(f"check(): {lead}{label} is {c.status} ({c.note}), not {what}")

    if judged == "decided":
        unchecked_naming()
        if found:
            problems.append(f"check(): a collision where {names} decides what is stored")
        return problems
    if found:
        if not t.collides:
            problems.append(f"check(): a collision the oracle never saw ({said(report, where)})")
        elif len(found) > 1:
            problems.append(f"check(): {len(found)} collisions for one column")
        else:
            f = found[0]
            got = (f.next_value, f.first_collision, f.inserts_until_collision)
            if got != (t.first, t.value, t.inserts):
                problems.append(
                    f"check(): next {got[0]}, first collision {got[1]} after {got[2]} inserts; "
                    f"the oracle: next {t.first}, first collision {t.value} after {t.inserts}"
                )
            problems += [
                f"check(): {label} is {c.status}, not 'finding'"
                for c in entries
                if c.status != "finding"
            ]
        return problems
    if t.collides:
        if judged == "loose":
            unchecked_naming("no collision, and ")
        else:
            problems.append(f"check(): no collision, {said(report, where)}")
        return problems
    allowed = [*statuses, *(("unchecked",) if judged == "loose" else ())]
    problems += [
        f"check(): {label} is {c.status} ({c.note}), not one of {allowed}"
        for c in entries
        if c.status not in allowed
    ]
    return problems


def probe_saw(result: ProbeReport, where: Where) -> list[tuple[int, int | None]]:
    """Every (inserts until collision, value) the probe's result gives for the column."""
    saw = [
        (f.inserts_until_collision, f.first_collision)
        for f in collisions(result.report, where)
        if f.inserts_until_collision is not None
    ]
    saw += [
        (p.inserts_until_collision, p.value)
        for p in result.probed
        if where_of(p.column) == where and p.inserts_until_collision is not None
    ]
    return saw


def probe_problems(result: ProbeReport, where: Where, t: Truth, *, must_find: bool) -> list[str]:
    """Where the probe disagrees with the truth: it must see the oracle's collision
    (where ``must_find``), and nothing else."""
    saw = probe_saw(result, where)
    problems: list[str] = []
    if t.collides and must_find and not saw:
        problems.append(f"probe(): no collision ({said(result.report, where)})")
    wrong = sorted(
        {(k, v) for k, v in saw if not t.collides or k != t.inserts or v not in (None, t.value)}
    )
    if wrong:
        problems.append(
            "probe(): " + ", ".join(f"a collision after {k} inserts on {v}" for k, v in wrong)
        )
    return problems
