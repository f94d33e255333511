"""Where the insert probe and the arithmetic disagree, find out which is right: one row
per INSERT, as an application inserts, is the measure; and say why."""

from __future__ import annotations

from collections.abc import Callable

from pytest_seqdrift.db.session import (
    UNIQUE_VIOLATION,
    Session,
    constraint_name,
    message_detail,
    sqlstate,
)
from pytest_seqdrift.model import Finding
from pytest_seqdrift.probe.insert import _insert, _key_value, _prepared
from pytest_seqdrift.probe.report import _listed
from pytest_seqdrift.probe.table import _immediate, _Table
from pytest_seqdrift.probe.target import _CannotCopy, _decided, _Run, _Target


def _agrees(run: _Run, expected: Finding | None) -> bool:
    """The run saw what the arithmetic says, as far as it went."""
    arith = expected.inserts_until_collision if expected else None
    if run.until is not None:
        return run.until == arith
    if expected is None or arith is None:
        return True
    if arith < run.drawn:
        return False  # within its reach, and it saw none
    # the inserts stored values past the max before the arithmetic's collision: none can
    # follow, unless the sequence wraps first (a CYCLE: the probe stops past the max)
    return not run.passed or expected.after_wrap


def _disagreement(run: _Run, expected: Finding | None, judged: bool) -> str | None:
    if not judged or _agrees(run, expected):
        return None  # (not judged: the arithmetic has no answer of its own to compare with)
    arith = expected.inserts_until_collision if expected else None
    said = "no collision" if arith is None else f"a collision after {arith} inserts"
    saw = "none" if run.until is None else f"one after {run.until}"
    return f"the probe and the arithmetic disagree: the arithmetic says {said}, the probe saw {saw}"


def _settle(
    session: Session,
    target: _Target,
    expected: Finding | None,
    run: _Run,
    table: _Table,
    start_over: Callable[[], None],
) -> tuple[_Run, str, bool]:
    """The insert probe and the arithmetic disagree: find out which is right. The
    measure is one row per INSERT statement, as an application inserts (re-probed so
    where ``run`` was multi-row). Returns the run to report, which was right and why,
    and whether the probe's answer replaces the arithmetic's."""
    arith = expected.inserts_until_collision if expected else None
    try:
        if not run.one_row:
            start_over()
            run = _insert(session, target, expected, one_row=True)[0]
        if _agrees(run, expected):
            how = "collide" if arith is not None else "pass the max"
            return (
                run,
                f"the arithmetic is right: one row per INSERT, as an application inserts, the "
                f"inserts {how} where it says (a multi-row INSERT draws in another order)",
                False,
            )
        if (
            run.until is None
            and arith is not None
            and _multi_row_collides(session, target, expected, arith, start_over)
        ):
            return (
                run,
                f"the arithmetic is right for a multi-row INSERT: {arith + 1} rows in one "
                f"statement collide; one row per INSERT passes the max without a collision "
                f"({_why(run, target, table)})",
                False,
            )
    except _CannotCopy as exc:
        return run, f"re-probing to find out which is right failed: {exc}", False
    return run, f"the probe is right: {_why(run, target, table)}", True


def _in_one_statement(
    session: Session, target: _Target, run: _Run, table: _Table, start_over: Callable[[], None]
) -> tuple[_Run, str | None]:
    """One row per INSERT passed the max without a collision, on a table whose AFTER
    triggers or rules draw from the sequence in between. A multi-row INSERT takes its
    values before any of them runs: it walks the plain default's values one after the
    other. Where such an INSERT of the rows it takes to pass the max collides, the run
    stays what one row per INSERT did (an application's inserts: no finding), and the
    note says which multi-row INSERT collides, and on what."""
    column, seq = target.column, target.sequence
    first = run.first
    if (
        not column.plain_default
        or table.deciders
        or table.replaced_by
        or not table.hooks
        or first is None
    ):
        return run, None
    rows = max(0, (target.top - first) // seq.increment + 1)
    if rows < 2 or rows > target.limit:
        return run, None
    start_over()
    prepared, insert = _prepared(session, target, None)
    _immediate(session, column, prepared.deferrable)
    # rolled back to and kept where the INSERT is rejected, as in _insert
    session.run("SAVEPOINT seqdrift_batch_insert")
    try:
        session.run(insert(rows))
    except session.Error as exc:
        if session.broken:
            raise
        session.run("ROLLBACK TO SAVEPOINT seqdrift_batch_insert")
        if sqlstate(exc) != UNIQUE_VIOLATION or constraint_name(exc) not in prepared.key:
            return run, None
        value = _key_value(message_detail(exc), column.column)
        if value is None:
            return run, None
        until = (value - first) // seq.increment
        note = (
            f"one row per INSERT passes the max without a collision "
            f"({_why(run, target, table)}); but a multi-row INSERT of {rows} rows collides on "
            f"{value} after {until} rows"
        )
        return run, note
    session.run("RELEASE SAVEPOINT seqdrift_batch_insert")
    return run, None


def _multi_row_collides(
    session: Session,
    target: _Target,
    expected: Finding | None,
    arith: int,
    start_over: Callable[[], None],
) -> bool:
    """Does one multi-row INSERT of ``arith + 1`` copies collide on the key under test?"""
    start_over()
    table, insert = _prepared(session, target, expected)
    _immediate(session, target.column, table.deferrable)
    # rolled back to and kept where the INSERT is rejected, as in _insert
    session.run("SAVEPOINT seqdrift_batch_insert")
    try:
        session.run(insert(arith + 1))
    except session.Error as exc:
        if session.broken:
            raise
        session.run("ROLLBACK TO SAVEPOINT seqdrift_batch_insert")
        return sqlstate(exc) == UNIQUE_VIOLATION and constraint_name(exc) in table.key
    session.run("RELEASE SAVEPOINT seqdrift_batch_insert")
    return False


def _why(run: _Run, target: _Target, table: _Table) -> str:
    """What makes the inserts store what they stored, as far as the probe can tell."""
    if table.replaced_by and run.until is None:
        return (
            f"{_listed(table.replaced_by)} does another INSERT instead (DO INSTEAD): none collided"
        )
    decided = _decided(run.first, target)
    if decided and table.deciders:
        return (
            f"{_listed(table.deciders)} decides the value an insert stores: the first stores "
            f"{run.first}, the default yields {target.first}"
        )
    stored = ", ".join("NULL" if v is None else str(v) for v in run.stored)
    base, step = target.first, target.sequence.increment
    skips = base is not None and any(
        v is not None and v != base + i * step for i, v in enumerate(run.stored)
    )
    if table.hooks and skips:
        return (
            f"one row per INSERT, {_listed(table.hooks)} draws from "
            f"{target.sequence.qualified} too: the inserts store {stored} ..."
        )
    if decided:
        return (
            f"the inserts store other values than the default's: the first stores {run.first}, "
            f"the default yields {target.first}"
        )
    return "this is what PostgreSQL did, one row per INSERT; nothing the probe saw explains it"
