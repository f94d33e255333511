"""``seqdrift fix``: move drifted sequences past their tables' ids, never backwards.

A shared sequence goes past the furthest of the tables it feeds. ``apply()`` locks those
tables (``SHARE ROW EXCLUSIVE``: no writer adds an id while it reads) before it sets the
sequences, and each ``setval`` takes ``GREATEST`` with ``last_value`` in its own
statement, so a ``nextval`` from elsewhere cannot make it move a sequence back. What
``setval`` cannot fix (overflow, exhaustion, a CYCLE wrap) is printed as commented SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from psycopg import sql

from pytest_seqdrift import checker, drift, fixsql
from pytest_seqdrift.db.adapters import session_for
from pytest_seqdrift.db.session import error_line
from pytest_seqdrift.errors import CannotFix, ReadFailure
from pytest_seqdrift.model import (
    Bounds,
    Column,
    Finding,
    PgSequence,
    Report,
    SequenceState,
    Skipped,
)
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.read.reader import read_bounds, read_sequence_states
from pytest_seqdrift.render import describe_finding, summary, what_happens


@dataclass(frozen=True)
class SequenceFix:
    """One ``setval``: the sequence, where it stood, and where it goes."""

    sequence: PgSequence
    columns: tuple[Column, ...]  # the columns that collide
    tops: tuple[tuple[Column, int], ...]  # every column it feeds, with its max existing value
    before: SequenceState
    target: int  # setval(sequence, target): the next value becomes target + increment
    sql: str

    @property
    def old_next(self) -> int | None:
        return drift.next_value(self.sequence, self.before)

    @property
    def new_next(self) -> int | None:
        return drift.next_value(self.sequence, SequenceState(self.target, True))


@dataclass
class FixPlan:
    """What ``fix`` does to a database, read from it."""

    report: Report  # the check the plan starts from
    fixes: list[SequenceFix] = field(default_factory=list)
    advice: list[Finding] = field(default_factory=list)  # not fixable by setval: commented
    unread: list[Skipped] = field(default_factory=list)  # feeds an affected sequence, unread


@dataclass(frozen=True)
class Change:
    fix: SequenceFix
    after: SequenceState

    @property
    def new_next(self) -> int | None:
        return drift.next_value(self.fix.sequence, self.after)


@dataclass
class Applied:
    plan: FixPlan
    changes: list[Change]
    after: Report  # the check made once the transaction committed


def review(
    conn: Any,
    options: CheckOptions,
    *,
    margin: int = 0,
) -> FixPlan:
    """Check, then plan the fix, reading only (``seqdrift fix`` without ``--apply``)."""
    report = checker.run(conn, options)
    session = session_for(conn)
    with session.read_only(
        lock_timeout_ms=options.lock_timeout_ms, statement_timeout_ms=options.statement_timeout_ms
    ):
        return plan(conn, report, margin=margin)


def _clears(report: Report) -> dict[int, list[Column]]:
    """The sequences that collide somewhere, each with every column it feeds that the
    arithmetic can judge (a plain default, an integer or numeric type, a unique key)."""
    colliding = {f.sequence.oid for f in report.findings if f.kind == "collision"}
    fed: dict[int, list[Column]] = {oid: [] for oid in colliding}
    for c in report.checked:
        if c.sequence.oid in fed and c.status in ("ok", "finding") and c.column.unique:
            fed[c.sequence.oid].append(c.column)
    return fed


def plan(conn: Any, report: Report, *, margin: int = 0) -> FixPlan:
    """Read the state of every sequence that collides and the bounds of every column it
    feeds, inside the connection's current transaction, and decide each ``setval``."""
    if margin < 0:
        raise ValueError(f"margin must be 0 or more, not {margin!r}")
    session = session_for(conn)
    result = FixPlan(report)
    sequences = {f.sequence.oid: f.sequence for f in report.findings}
    fed = _clears(report)
    affected = {sequences[oid].qualified for oid in fed}
    result.unread = [s for s in report.skipped if s.sequence in affected]
    result.advice = [
        f
        for f in report.findings
        if f.kind != "collision" or f.after_wrap or f.fix_sql.startswith("--")
    ]
    wanted = sorted((sequences[oid] for oid in fed), key=lambda s: (s.schema, s.name))
    states = read_sequence_states(session, wanted)
    columns: list[tuple[PgSequence, SequenceState, Column]] = []
    for seq in wanted:
        state = states[seq.oid]
        if isinstance(state, ReadFailure):
            raise CannotFix(f"cannot read sequence {seq.qualified}: {state.message}")
        columns += [(seq, state, c) for c in fed[seq.oid]]
    answers = read_bounds(session, [(c, drift.search(c, seq, state)) for seq, state, c in columns])
    bounds: dict[int, list[tuple[Column, SequenceState, Bounds]]] = {s.oid: [] for s in wanted}
    for (seq, state, c), answer in zip(columns, answers, strict=True):
        if isinstance(answer, ReadFailure):
            raise CannotFix(f"cannot read {c.qualified_table}: {answer.message}")
        bounds[seq.oid].append((c, state, answer))
    for seq in wanted:
        fix = _fix_for(seq, bounds[seq.oid], margin)
        if fix is not None:
            result.fixes.append(fix)
    return result


def _fix_for(
    seq: PgSequence, read: list[tuple[Column, SequenceState, Bounds]], margin: int
) -> SequenceFix | None:
    """The furthest target over every column the sequence feeds, when one of them
    collides and the target lies ahead of the sequence's next value."""
    if not read:
        return None
    state = read[0][1]
    colliding: list[Column] = []
    targets: list[int] = []
    tops: list[tuple[Column, int]] = []
    for column, _, b in read:
        if b.top is None:
            continue
        tops.append((column, b.top))
        hit = drift.first_collision(column, seq, state, b)
        if hit is not None and not hit.after_wrap:
            colliding.append(column)
        target = fixsql.collision_target(column, seq, b, margin=margin)
        if target is not None:
            targets.append(target)
    if not colliding or not targets:
        return None
    target = max(targets, key=lambda v: drift.forward(seq, v))
    now = drift.next_value(seq, state)
    after = drift.next_value(seq, SequenceState(target, True))
    if now is None or after is None or drift.forward(seq, after) <= drift.forward(seq, now):
        return None  # never backwards, and no needless setval
    return SequenceFix(
        sequence=seq,
        columns=tuple(colliding),
        tops=tuple(tops),
        before=state,
        target=target,
        sql=fixsql.setval_at_least(seq, target),
    )


def describe_fix(fix: SequenceFix, *, new_next: int | None = None) -> str:
    """``public.t_id_seq: next value 1 -> 17 (public.t.id: max 16)``."""
    after = fix.new_next if new_next is None else new_next
    tops = ", ".join(f"{c.label}: max {top}" for c, top in fix.tops)
    return f"{fix.sequence.qualified}: next value {fix.old_next} -> {after} ({tops})"


def script(fix_plan: FixPlan, *, source: str = "", margin: int = 0) -> str:
    """The plan as SQL for ``psql -f``: one transaction of ``setval`` statements, each
    commented with what it changes; the advice that is not run, commented out."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = f" from {source}" if source else ""
    lines = [fixsql.comment(f"seqdrift fix: sequence state read at {now}{where}")]
    report = fix_plan.report
    if not fix_plan.fixes and not fix_plan.advice and not fix_plan.unread:
        lines.append(fixsql.comment(f"nothing to fix: {summary(report)}"))
        return "\n".join(lines + _unjudged(report))
    lines += [
        "-- Each setval reads last_value in the same statement: it only ever moves a",
        "-- sequence forward, also when this script runs later. Review it, then run:",
        "--   psql -v ON_ERROR_STOP=1 -f this-file.sql",
        "-- or let `seqdrift fix --apply` do it with each table locked while it reads.",
    ]
    if margin:
        lines.append(
            fixsql.comment(f"Headroom: {margin} ids past each table's max (--margin {margin}).")
        )
    lines += ["", "BEGIN;"]
    for fix in fix_plan.fixes:
        lines.append("")
        for f in report.findings:
            if f.kind == "collision" and f.sequence.oid == fix.sequence.oid:
                lines.append(fixsql.comment(f"{f.column.label}: {describe_finding(f)}"))
        lines.append(fixsql.comment(describe_fix(fix)))
        lines.append(fix.sql)  # names inside quotes: a line break there is SQL's own
    for f in fix_plan.advice:
        lines.append("")
        label = f"{f.column.label} (sequence {f.sequence.qualified})"
        lines.append(fixsql.comment(f"{label}: {what_happens(f)}"))
        # the advice is commented SQL already; comment it as one text, every line of it
        lines += [fixsql.comment(line.removeprefix("-- ")) for line in f.fix_sql.split("\n")]
    for s in fix_plan.unread:
        lines.append("")
        lines.append(
            fixsql.comment(
                f"not considered: {s.schema}.{s.table}.{s.column} also draws from "
                f"{s.sequence}, but it could not be read: {s.reason}"
            )
        )
    lines += _unjudged(report)
    lines += ["", "COMMIT;"]
    return "\n".join(lines)


def _unjudged(report: Report) -> list[str]:
    """The columns the check could not judge: nothing here fixes them, and the script
    says so rather than leave them out in silence."""
    lines = []
    for c in report.checked:
        if c.status == "unchecked":
            lines += [
                "",
                fixsql.comment(f"not judged, so not fixed here: {c.column.label}: {c.note}"),
            ]
    return lines


def _table_lock(column: Column) -> sql.Composed:
    """A partitioned table with its partitions; any other table on its own (its rows are
    the ones the check reads)."""
    only = sql.SQL("") if column.partitioned else sql.SQL("ONLY ")
    return sql.SQL("LOCK TABLE {}{} IN SHARE ROW EXCLUSIVE MODE").format(
        only, sql.Identifier(column.schema, column.table)
    )


def _tables(report: Report, sequences: Iterable[int]) -> list[Column]:
    """One column per table fed by the sequences, in a stable order (schema, table) so
    that two runs lock in the same order."""
    wanted = set(sequences)
    by_table: dict[int, Column] = {}
    for c in report.checked:
        if c.sequence.oid in wanted:
            by_table.setdefault(c.column.table_oid, c.column)
    return sorted(by_table.values(), key=lambda c: (c.schema, c.table))


@contextmanager
def _write_transaction(
    conn: Any, *, lock_timeout_ms: int, statement_timeout_ms: int | None
) -> Iterator[None]:
    session = session_for(conn)
    if session.in_transaction:
        raise CannotFix("fix --apply runs its own transaction: the connection is inside one")
    autocommit = conn.autocommit
    conn.autocommit = True
    session.run("BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE")
    try:
        session.run("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"])
        if statement_timeout_ms is not None:
            session.run(
                "SELECT set_config('statement_timeout', %s, true)",
                [f"{int(statement_timeout_ms)}ms"],
            )
        yield
    except BaseException:
        if not (conn.closed or conn.broken):
            session.run("ROLLBACK")
        raise
    else:
        session.run("COMMIT")
    finally:
        if not conn.closed:
            conn.autocommit = autocommit


def apply(
    conn: Any,
    options: CheckOptions,
    *,
    margin: int = 0,
) -> Applied:
    """Fix every collision that a ``setval`` can fix, in one transaction, then check
    again. ``conn`` is an idle psycopg 3 connection.

    Raises ``CannotCheck`` when the database cannot be checked, ``CannotFix`` when a
    table stays locked past the lock timeout or a privilege is missing (then nothing has
    been changed).
    """
    before = checker.run(conn, options)
    fed = _clears(before)
    if not fed:
        return Applied(plan(conn, before, margin=margin), [], before)
    session = session_for(conn)
    changes: list[Change] = []
    with _write_transaction(
        conn,
        lock_timeout_ms=options.lock_timeout_ms,
        statement_timeout_ms=options.statement_timeout_ms,
    ):
        for column in _tables(before, fed):
            try:
                session.run(_table_lock(column))
            except session.Error as exc:
                raise CannotFix(
                    f"cannot lock {column.qualified_table} (waited up to {options.lock_timeout_ms} ms): "
                    f"{error_line(exc)}; nothing was changed"
                ) from exc
        fix_plan = plan(conn, before, margin=margin)
        denied = session.run(
            "SELECT o::regclass::text FROM unnest(%s::oid[]) AS o "
            "WHERE NOT has_sequence_privilege(o, 'UPDATE') ORDER BY 1",
            [[f.sequence.oid for f in fix_plan.fixes]],
        )
        if denied:
            names = ", ".join(str(r[0]) for r in denied)
            raise CannotFix(
                f"permission denied: setval needs UPDATE on {names}; nothing was changed"
            )
        for fix in fix_plan.fixes:
            try:
                ((value,),) = session.run(fix.sql)
            except session.Error as exc:
                raise CannotFix(f"cannot set {fix.sequence.qualified}: {error_line(exc)}") from exc
            changes.append(Change(fix, SequenceState(int(value), True)))
    after = checker.run(conn, options)
    return Applied(fix_plan, changes, after)
