"""The insert probe: copy an existing row with the column left to its default until
past the highest existing value, and let the key under test collide. Triggers, defaults
and constraints take part as in production. A multi-row INSERT that collides is
replayed in halving chunks to find which insert did."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from psycopg import sql

from pytest_seqdrift.db.session import (
    SEQUENCE_LIMIT_EXCEEDED,
    UNIQUE_VIOLATION,
    Session,
    constraint_name,
    error_line,
    message_detail,
    sqlstate,
)
from pytest_seqdrift.model import Finding, SequenceState
from pytest_seqdrift.probe.sequences import _ran_out, _read_state, _set_state
from pytest_seqdrift.probe.table import _immediate, _prepare_table, _Table
from pytest_seqdrift.probe.target import (
    _as_int,
    _CannotCopy,
    _counted,
    _decided,
    _Run,
    _Target,
    _Unreproducible,
)
from pytest_seqdrift.read import block


def _insert(
    session: Session, target: _Target, expected: Finding | None, one_row: bool | None = None
) -> tuple[_Run, _Table]:
    """Copy a row with the column left to its default until past the max: in multi-row
    INSERTs, or (``one_row``; by default where the table has INSERT triggers or rules)
    one row per INSERT statement."""
    table, insert = _prepared(session, target, expected)
    if one_row is None:
        # as an application inserts: a multi-row INSERT runs AFTER triggers, statement
        # triggers and rules once all its rows are in, and draws values in another order
        one_row = bool(table.deciders or table.hooks)
    drawn, first, stored = 0, None, []
    sizes = target.batches()
    if sizes:
        _immediate(session, target.column, table.deferrable)
    while sizes:
        n = sizes.pop(0)
        if one_row:
            values, failure = _one_by_one(session, target, table, insert, n)
            if failure is not None:
                state, constraint, detail, message = failure
                if first is None and values:
                    first = _as_int(values[0])
                if state == SEQUENCE_LIMIT_EXCEEDED:  # none is left after these
                    return _Run(None, None, drawn + len(values), True, first, (), True), table
                _reject(state, constraint, message or "", table)
                until = drawn + len(values)
                value = _key_value(detail, target.column.column)
                if value is None and not (table.deciders or table.hooks):
                    value = _plain_value(session, target)
                stored += [_as_int(v) for v in values] + [value]
                first = value if drawn + len(values) == 0 else first
                return _Run(until, value, until + 1, True, first, tuple(stored[:3]), True), table
        else:
            start = _read_state(session, target.sequence)
            # not session.savepoint(): where the batch is rejected, its savepoint is
            # rolled back to and kept, and the replay (_locate) runs in it
            session.run("SAVEPOINT seqdrift_batch_insert")
            try:
                values = [row[0] for row in session.run(insert(n))]
            except session.Error as exc:
                if session.broken:
                    raise
                session.run("ROLLBACK TO SAVEPOINT seqdrift_batch_insert")
                _reject(sqlstate(exc), constraint_name(exc), error_line(exc), table)
                hint = None
                if expected is not None and expected.inserts_until_collision is not None:
                    hint = expected.inserts_until_collision - drawn
                until, value, collided, located = _locate(session, target, start, insert, n, hint)
                first = located if first is None else first
                if not collided:  # the sequence ran out after ``until`` values: none is left
                    return _Run(None, None, drawn + until, True, first), table
                return _Run(drawn + until, value, drawn + until + 1, True, first), table
            session.run("RELEASE SAVEPOINT seqdrift_batch_insert")
        if first is None and values:
            first = _as_int(values[0])
        stored += [_as_int(v) for v in values[: 3 - len(stored)]]
        drawn += len(values)
        if any(target.passes(v) for v in values):
            return _Run(None, None, drawn, True, first, tuple(stored), one_row), table
        if target.distance is not None and _decided(first, target):
            # the inserts do not store the default's values: its distance says nothing
            target = replace(target, distance=None)
            sizes = target.batches(drawn)
    return _Run(None, None, drawn, target.passed_after(drawn), first, tuple(stored), one_row), table


def _reject(state: str | None, constraint: str | None, message: str, table: _Table) -> None:
    """A failed insert that is not the key under test colliding, nor the sequence
    running out: the table cannot be probed by copying its rows."""
    if state not in (UNIQUE_VIOLATION, SEQUENCE_LIMIT_EXCEEDED):
        raise _CannotCopy(f"a copied row is rejected: {message}")
    if state == UNIQUE_VIOLATION and constraint not in table.key:
        raise _CannotCopy(f"a copied row violates {constraint}, not the key under test")


def _prepared(
    session: Session, target: _Target, expected: Finding | None
) -> tuple[_Table, Callable[[int], sql.Composed]]:
    """The table made ready (``_prepare_table``), and the INSERT of ``n`` copies of one
    of its rows with the column left to its default."""
    column = target.column
    table = _prepare_table(session, column)
    col = sql.Identifier(column.column)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.copyable)
    # copy the row that holds the colliding value where there is one: under a composite
    # key such as (id, region) it carries the rest of the key that makes the copy collide.
    # Values go in as literals, never as parameters (why: db/drivers.py, _execute)
    source: sql.Composable = sql.SQL("TRUE")
    if expected is not None and expected.first_collision is not None:
        source = sql.SQL("{} = {}").format(col, sql.Literal(expected.first_collision))
    pick = sql.SQL("SELECT {cols} FROM {rel} WHERE {source}{counted} LIMIT 1").format(
        cols=cols, rel=block.relation(column), source=source, counted=_counted(column, "AND")
    )
    if not session.run(sql.SQL("SELECT EXISTS ({})").format(pick))[0][0]:
        raise _CannotCopy("the table has no row to copy")

    # an INSTEAD rule refuses RETURNING: the value an insert stores is not known there
    returning = sql.SQL("") if table.replaced_by else sql.SQL(" RETURNING {}").format(col)

    # a column with no default, its sequence OWNED BY it: the application draws the
    # value itself, and so does the copy
    into, values = cols, cols
    if column.source == "owned":
        into = sql.SQL("{}, {}").format(cols, col)
        values = sql.SQL("{}, nextval({}::regclass)").format(
            cols, sql.Literal(target.sequence.qualified)
        )

    def insert(copies: int) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {table} ({into}) SELECT {values} FROM ({pick}) AS r "
            "CROSS JOIN generate_series(1, {copies}){returning}"
        ).format(
            table=sql.Identifier(column.schema, column.table),
            into=into,
            values=values,
            pick=pick,
            copies=sql.Literal(copies),
            returning=returning,
        )

    return table, insert


# One row per INSERT statement, ``seqdrift.count`` times, in one round trip: each
# EXECUTE is a statement of its own, so that AFTER triggers, statement triggers and
# rules run after each row, as they do for an application's one-row INSERTs. Like
# block.READ_BLOCK it takes its work and gives its answers through transaction-local
# settings. It stops past the highest existing value, and at the first error, which it
# answers with (SQLSTATE, constraint, detail, message); the rows of a failed run are
# rolled back with its block (the probe ends there).
_ONE_BY_ONE_WORK = (
    "SELECT set_config('seqdrift.insert', %s, true), set_config('seqdrift.count', %s, true), "
    "set_config('seqdrift.top', %s, true), set_config('seqdrift.up', %s, true), "
    "set_config('seqdrift.returning', %s, true)"
)
_ONE_BY_ONE = r"""
DO $seqdrift$
DECLARE
    statement text := current_setting('seqdrift.insert');
    n int := current_setting('seqdrift.count')::int;
    top numeric := current_setting('seqdrift.top')::numeric;
    up boolean := current_setting('seqdrift.up')::boolean;
    has_returning boolean := current_setting('seqdrift.returning')::boolean;
    v text;
    stored text[] := '{}';
    failure text[];
    c text;
    d text;
BEGIN
    BEGIN
        FOR i IN 1 .. n LOOP
            IF has_returning THEN
                EXECUTE statement INTO v;
            ELSE
                EXECUTE statement;
            END IF;
            stored := stored || v;
            EXIT WHEN v ~ '^[-+]?[0-9]+$' AND CASE WHEN up THEN v::numeric > top
                                                   ELSE v::numeric < top END;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS c = CONSTRAINT_NAME, d = PG_EXCEPTION_DETAIL;
        failure := ARRAY[SQLSTATE, nullif(c, ''), nullif(d, ''), SQLERRM];
    END;
    PERFORM set_config('seqdrift.stored', stored::text, true),
            set_config('seqdrift.failure', coalesce(failure::text, ''), true);
END
$seqdrift$
"""
_ONE_BY_ONE_ANSWER = (
    "SELECT current_setting('seqdrift.stored')::text[], "
    "nullif(current_setting('seqdrift.failure'), '')::text[]"
)


def _one_by_one(
    session: Session,
    target: _Target,
    table: _Table,
    insert: Callable[[int], sql.Composed],
    n: int,
) -> tuple[list[Any], list[str | None] | None]:
    """Up to ``n`` one-row INSERTs: the values they stored (text; NULL where not known),
    and the error that stopped them, if any: (SQLSTATE, constraint, detail, message)."""
    up = "on" if target.sequence.increment > 0 else "off"
    returning = "off" if table.replaced_by else "on"
    work = [insert(1).as_string(None), str(n), str(target.top), up, returning]
    session.run(_ONE_BY_ONE_WORK, work)
    try:
        session.run(_ONE_BY_ONE)
    except session.Error as exc:
        if session.broken:
            raise
        raise _CannotCopy(f"one row per INSERT takes a PL/pgSQL block: {error_line(exc)}") from exc
    ((stored, failure),) = session.run(_ONE_BY_ONE_ANSWER)
    return list(stored), failure


# the key in a unique violation's detail: "Key (id, region)=(3, eu) already exists."
_KEY_IN_DETAIL = re.compile(r"\((?P<names>.*)\)=\((?P<values>.*)\)")


def _key_value(detail: str | None, column: str) -> int | None:
    """The column's value in a unique violation's detail (in any language: the key is
    written the same way), where the detail names it among the key's columns."""
    found = _KEY_IN_DETAIL.search(detail or "")
    if not found:
        return None
    names, values = found["names"].split(", "), found["values"].split(", ")
    if len(names) != len(values):
        names, values = names[:1], values[:1]  # a comma in a value: the first stands
    quoted = '"' + column.replace('"', '""') + '"'
    for name, value in zip(names, values, strict=True):
        if name in (column, quoted):
            return _as_int(value)
    return None


def _plain_value(session: Session, target: _Target) -> int | None:
    """For a plain default on a table that no trigger or rule rewrites, the value that
    collided is the sequence's last value, whatever the detail says."""
    return _read_state(session, target.sequence).last_value if target.column.plain_default else None


def _locate(
    session: Session,
    target: _Target,
    start: SequenceState,
    insert: Callable[[int], sql.Composed],
    n: int,
    hint: int | None = None,
) -> tuple[int, int | None, bool, int | None]:
    """A batch of ``n`` copies collided, or its sequence ran out: replay it from the same
    sequence state, to find which insert collides and with what value (``collided``), or
    after how many inserts the sequence runs out (not ``collided``); and the value the
    first insert stored (or tried to).

    The replay keeps the rows of every chunk that goes in and halves the chunk that
    fails, until one row fails on its own: a few statements per collision, whatever the
    distance. ``hint``, the arithmetic's count of inserts that succeed, is tried first
    (that many rows, then one): where the arithmetic is right, two inserts find the
    collision. Where no chunk fails, the multi-row INSERT drew its values in another
    order than smaller ones do: ``_Unreproducible``."""
    seq = target.sequence
    _set_state(session, seq, start)
    state: SequenceState | None = start  # the sequence's state before the next chunk
    done, bound = 0, n  # ``done`` inserts went in; the one that fails is before ``bound``
    first: int | None = None
    guided = [] if hint is None or not 0 <= hint < n else [hint, 1] if hint else [1]
    while done < bound:
        k = min(guided.pop(0) if guided else max(1, (bound - done) // 2), bound - done)
        if k > 1 and state is None:
            state = _read_state(session, seq)
        # rolled back to and kept where the chunk fails as expected (the replay goes on
        # in it); any other error is left to the column's savepoint
        session.run("SAVEPOINT seqdrift_one_insert")
        try:
            rows = session.run(insert(k))
        except session.Error as exc:
            if sqlstate(exc) not in (UNIQUE_VIOLATION, SEQUENCE_LIMIT_EXCEEDED):
                raise
            session.run("ROLLBACK TO SAVEPOINT seqdrift_one_insert")
            if k > 1 and state is not None:  # the failing insert is in this chunk: halve it
                _set_state(session, seq, state)
                bound = done + k
                guided = []
                continue
            if _ran_out(exc):
                return done, None, False, first
            value = _key_value(message_detail(exc), target.column.column)
            if value is None:
                value = _plain_value(session, target)
            return done, value, True, value if done == 0 else first
        session.run("RELEASE SAVEPOINT seqdrift_one_insert")
        if first is None and rows:
            first = _as_int(rows[0][0])
        done += k
        state = None
    raise _Unreproducible(
        "a multi-row INSERT collided, the same rows in smaller INSERTs do not (a trigger or "
        "rule draws values in another order)"
    )
