"""The default probe, and what both modes read: evaluate the column's default (or its
identity sequence) and look each value up in the column; the highest existing value;
the default's next value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.model import Column, PgSequence
from pytest_seqdrift.probe.sequences import _ran_out, _read_state, _set_state
from pytest_seqdrift.probe.target import _as_int, _counted, _NotProbed, _numeric, _Run, _Target
from pytest_seqdrift.read import block


def _top(session: Session, column: Column, seq: PgSequence) -> int | None:
    """The highest existing value (lowest, for a negative increment); for a column that
    holds no numbers (text, say), the highest of its values that are integers. None: no
    value at all."""
    agg = sql.SQL("max" if seq.increment > 0 else "min")
    col = sql.Identifier(column.column)
    where = _counted(column)
    if _numeric(column):
        ((top,),) = session.run(
            sql.SQL("SELECT {}({}) FROM {}{}").format(agg, col, block.relation(column), where)
        )
        return None if top is None else int(top)
    ((top, values),) = session.run(
        sql.SQL(
            "SELECT {agg}(v::numeric) FILTER (WHERE v ~ '^[-+]?[0-9]+$'), count(v) "
            "FROM (SELECT {col}::text AS v FROM {rel}{where}) AS r"
        ).format(agg=agg, col=col, rel=block.relation(column), where=where)
    )
    if top is None and values:
        raise _NotProbed(
            f"none of its {values} values is an integer: the probe cannot tell when the "
            "default has passed them"
        )
    return None if top is None else int(top)


def _default(target: _Target) -> sql.Composable:
    """The column's default expression, as the server itself deparsed it, or for an
    identity column the identity sequence's nextval."""
    if target.column.source == "default" and target.column.default_expr:
        return sql.SQL(target.column.default_expr)
    return sql.SQL("nextval({}::regclass)").format(sql.Literal(target.sequence.qualified))


def _peek(session: Session, target: _Target) -> int | None:
    """The value the column's default yields next, leaving its sequence where it was.
    None: the default yields NULL (or no integer), or its sequence has run out."""
    start = _read_state(session, target.sequence)
    values, _ = _values(session, target, _values_query(target), 1)
    _set_state(session, target.sequence, start)
    return _as_int(values[0]) if values else None


def _values_query(target: _Target) -> Callable[[int], sql.Composed]:
    """``n`` values of the column's default (or its identity sequence), in order."""

    k, j = target.column.draws

    def query(n: int) -> sql.Composed:
        if k > 1:  # each insert draws k values, in column order: this column gets the j-th
            return sql.SQL(
                "SELECT v FROM (SELECT g, ({expr}) AS v FROM generate_series(1, {n}) AS g) "
                "AS d WHERE (g - 1) % {k} = {j} ORDER BY g"
            ).format(
                expr=_default(target), n=sql.Literal(n * k), k=sql.Literal(k), j=sql.Literal(j)
            )
        return sql.SQL(
            "SELECT v FROM (SELECT g, ({expr}) AS v FROM generate_series(1, {n}) AS g) AS d "
            "ORDER BY g"
        ).format(expr=_default(target), n=sql.Literal(n))

    return query


def _values(
    session: Session, target: _Target, query: Callable[[int], sql.Composed], n: int
) -> tuple[list[Any], bool]:
    """``n`` values of the default (NULLs left out); fewer, and True, where its sequence
    runs out first. The failed batch drew values that are lost: the sequence is put back
    and the values before the end are drawn again, one at a time."""
    start = _read_state(session, target.sequence)
    # one savepoint for the batch and its replay: rolled back to and kept where the
    # sequence runs out, released at the end; any other error is left to the column's
    session.run("SAVEPOINT seqdrift_draw")
    ran_out = False
    try:
        rows = session.run(query(n))
    except session.Error as exc:
        if not _ran_out(exc):
            raise
        session.run("ROLLBACK TO SAVEPOINT seqdrift_draw")
        _set_state(session, target.sequence, start)
        rows = []
        for _ in range(n):
            try:
                rows += session.run(query(1))
            except session.Error as again:
                if not _ran_out(again):
                    raise
                session.run("ROLLBACK TO SAVEPOINT seqdrift_draw")
                ran_out = True
                break
    session.run("RELEASE SAVEPOINT seqdrift_draw")
    return [v for (v,) in rows if v is not None], ran_out


def _draw(session: Session, target: _Target) -> _Run:
    """Evaluate the column's default (or its identity sequence) and look each value up
    (a column that holds no numbers, by its text)."""
    column = target.column
    values_query = _values_query(target)
    col = sql.Identifier(column.column)
    rel = block.relation(column)
    numeric = _numeric(column)

    def hits_query(values: list[Any]) -> sql.Composed:
        counted = _counted(column, "AND")
        if numeric:
            return sql.SQL("SELECT {col} FROM {rel} WHERE {col} = ANY ({values}){counted}").format(
                col=col, rel=rel, values=sql.Literal(values), counted=counted
            )
        return sql.SQL(
            "SELECT {col}::text FROM {rel} WHERE {col}::text = ANY ({values}::text[]){counted}"
        ).format(col=col, rel=rel, values=sql.Literal([str(v) for v in values]), counted=counted)

    def key(value: Any) -> Any:
        return _as_int(value) if numeric else str(value)

    drawn = 0
    for n in target.batches():
        values, ran_out = _values(session, target, values_query, n)
        existing = {key(v) for (v,) in session.run(hits_query(values))} if values else set()
        for i, v in enumerate(values):
            if key(v) in existing:
                return _Run(drawn + i, _as_int(v), drawn + i + 1, True)
        drawn += len(values)
        if ran_out or any(target.passes(v) for v in values):
            return _Run(None, None, drawn, True)
    return _Run(None, None, drawn, target.passed_after(drawn))
