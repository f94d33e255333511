"""``seqdrift fix``: move drifted sequences past their tables' ids, never backwards.

A shared sequence goes past the furthest of the tables it feeds. ``apply()`` locks those
tables (``SHARE ROW EXCLUSIVE``: no writer adds an id while it reads) before it sets the
sequences, and each ``setval`` takes ``GREATEST`` with ``last_value`` in its own
statement, so a ``nextval`` from elsewhere cannot make it move a sequence back. What
``setval`` cannot fix (overflow, exhaustion, a CYCLE wrap) is printed as commented SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from psycopg import sql

from pytest_seqdrift import checker, cutover, drift, fixsql
from pytest_seqdrift.db.adapters import session_for
from pytest_seqdrift.db.session import error_line
from pytest_seqdrift.errors import CannotFix, ReadFailure
from pytest_seqdrift.model import (
    Bounds,
    Column,
    Compared,
    Cutover,
    Finding,
    PgSequence,
    Report,
    SequenceState,
    Skipped,
    amended,
)
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.read.reader import read_bounds, read_sequence_states
from pytest_seqdrift.render import (
    cutover_summary,
    describe_compared,
    describe_finding,
    summary,
    what_happens,
)


@dataclass(frozen=True)
class SequenceFix:
    """One ``setval``: the sequence, where it stood, and where it goes."""

    sequence: PgSequence
    columns: tuple[Column, ...]  # the columns that collide
    tops: tuple[tuple[Column, int], ...]  # every column it feeds, with its max existing value
    before: SequenceState
    target: int  # setval(sequence, target): the next value becomes target + increment
    sql: str
    source_next: int | None = None  # --source: the source's next value it goes past

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
    cutover: Cutover | None = None  # --source: the comparison the plan also starts from
    beyond_reach: list[Compared] = field(default_factory=list)  # behind, past its own limit
    # --source: behind, but a table it feeds could not be read: not moved (apply refuses)
    blocked: list[tuple[Compared, Skipped]] = field(default_factory=list)


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
    after_cutover: Cutover | None = None  # --source: the comparison made then


def review(
    conn: Any,
    options: CheckOptions,
    *,
    margin: int = 0,
    source: Any = None,
    schema_map: Mapping[str, str] | None = None,
) -> FixPlan:
    """Check, then plan the fix, reading only (``seqdrift fix`` without ``--apply``).
    With ``source``, the plan also moves every sequence behind the source's (see
    ``cutover.compare``)."""
    cut = None
    if source is not None:
        cut = cutover.compare(conn, source, options, schema_map=schema_map)
        report = cut.report
    else:
        report = checker.run(conn, options)
    session = session_for(conn)
    with session.read_only(
        lock_timeout_ms=options.lock_timeout_ms, statement_timeout_ms=options.statement_timeout_ms
    ):
        fix_plan = plan(conn, report, margin=margin, also=_moved(cut, margin))
    if cut is not None:
        with_source(fix_plan, cut, margin=margin)
    return fix_plan


def _moved(cut: Cutover | None, margin: int) -> list[PgSequence]:
    """The target sequences ``--source`` moves, whose tables the fix reads too."""
    if cut is None:
        return []
    return [m.sequence for m in source_moves(cut, margin)]


@dataclass(frozen=True)
class SourceMove:
    """A target sequence the fix moves towards the source: ``target`` is the value to
    ``setval`` (None: its limit lies before the source's next value, ``beyond``)."""

    compared: Compared
    sequence: PgSequence  # the target's
    state: SequenceState  # the target's, as the comparison read it
    target: int | None
    beyond: int


def source_moves(cut: Cutover, margin: int = 0) -> list[SourceMove]:
    """Every target sequence behind the source's next value, and with ``margin`` every
    one that lies less than ``margin`` values ahead of it: each goes to at least the
    source's next value plus the margin (as far as its range allows)."""
    moves = []
    for c in cut.compared:
        seq, state, beyond = c.target, c.target_state, c.source_beyond
        if seq is None or state is None or beyond is None or c.status not in ("behind", "ok"):
            continue
        if c.status == "ok" and (not margin or c.next_value is None or c.source_next_value is None):
            continue
        value = cutover.source_target(seq, beyond, margin)
        if c.status == "ok":  # level with the source: moved only to make the margin
            after = None if value is None else drift.next_value(seq, SequenceState(value, True))
            now = c.next_value
            if after is None or now is None or drift.forward(seq, after) <= drift.forward(seq, now):
                continue
        moves.append(SourceMove(c, seq, state, value, beyond))
    return moves


def with_source(fix_plan: FixPlan, cut: Cutover, *, margin: int = 0) -> None:
    """Move every sequence behind the source's to at least the source's next value
    (plus ``margin``): a sequence that collides too goes to the further of the two. A
    sequence feeding a table that could not be read is not moved (``blocked``): its
    table's max is unknown."""
    fix_plan.cutover = cut
    by_oid = {f.sequence.oid: i for i, f in enumerate(fix_plan.fixes)}
    unread: dict[str, Skipped] = {}
    for skipped in fix_plan.report.skipped:
        unread.setdefault(skipped.sequence, skipped)
    for move in source_moves(cut, margin):
        c, seq, value, beyond = move.compared, move.sequence, move.target, move.beyond
        if value is None:
            fix_plan.beyond_reach.append(c)
            continue
        if seq.qualified in unread:
            fix_plan.blocked.append((c, unread[seq.qualified]))
            continue
        i = by_oid.get(seq.oid)
        if i is not None:
            old = fix_plan.fixes[i]
            if drift.forward(seq, old.target) >= drift.forward(seq, value):
                fix_plan.fixes[i] = amended(old, source_next=beyond)
                continue
            columns, tops, before = old.columns, old.tops, old.before
        else:
            columns, tops, before = (), (), move.state
        new = SequenceFix(
            sequence=seq,
            columns=columns,
            tops=tops,
            before=before,
            target=value,
            sql=fixsql.setval_at_least(seq, value),
            source_next=beyond,
        )
        if i is None:
            by_oid[seq.oid] = len(fix_plan.fixes)
            fix_plan.fixes.append(new)
        else:
            fix_plan.fixes[i] = new
    fix_plan.fixes.sort(key=lambda f: (f.sequence.schema, f.sequence.name))


def _clears(report: Report, also: Iterable[int] = ()) -> dict[int, list[Column]]:
    """The sequences that collide somewhere (and those in ``also``), each with every
    column it feeds that the arithmetic can judge (a plain default, an integer or
    numeric type, a unique key)."""
    colliding = {f.sequence.oid for f in report.findings if f.kind == "collision"}
    fed: dict[int, list[Column]] = {oid: [] for oid in {*colliding, *also}}
    for c in report.checked:
        if c.sequence.oid in fed and c.status in ("ok", "finding") and c.column.unique:
            fed[c.sequence.oid].append(c.column)
    return fed


def plan(conn: Any, report: Report, *, margin: int = 0, also: Iterable[PgSequence] = ()) -> FixPlan:
    """Read the state of every sequence that collides (and of those in ``also``, which
    ``--source`` moves) and the bounds of every column it feeds, inside the connection's
    current transaction, and decide each ``setval``."""
    if margin < 0:
        raise ValueError(f"margin must be 0 or more, not {margin!r}")
    session = session_for(conn)
    result = FixPlan(report)
    sequences = {f.sequence.oid: f.sequence for f in report.findings}
    sequences.update((s.oid, s) for s in also)
    fed = _clears(report, sequences.keys() - {f.sequence.oid for f in report.findings})
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
    why = [f"{c.label}: max {top}" for c, top in fix.tops]
    if fix.source_next is not None:
        why.insert(0, f"the source's next value {fix.source_next}")
    return f"{fix.sequence.qualified}: next value {fix.old_next} -> {after} ({', '.join(why)})"


def script(fix_plan: FixPlan, *, source: str = "", margin: int = 0) -> str:
    """The plan as SQL for ``psql -f``: one transaction of ``setval`` statements, each
    commented with what it changes; the advice that is not run, commented out."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = f" from {source}" if source else ""
    lines = [fixsql.comment(f"seqdrift fix: sequence state read at {now}{where}")]
    report = fix_plan.report
    cut = fix_plan.cutover
    if cut is not None:
        lines.append(fixsql.comment(f"compared with the source, {cut.source}"))
        for sub in cut.subscriptions:
            if sub.enabled:
                lines.append(
                    fixsql.comment(
                        f"WARNING: subscription {sub.name} is still enabled on this database: "
                        "writes may still arrive after this script ran"
                    )
                )
    if not (
        fix_plan.fixes
        or fix_plan.advice
        or fix_plan.unread
        or fix_plan.beyond_reach
        or fix_plan.blocked
    ):
        what = summary(report) if cut is None else f"{summary(report)}; {cutover_summary(cut)}"
        lines.append(fixsql.comment(f"nothing to fix: {what}"))
        return "\n".join(lines + _unjudged(report) + _missing(fix_plan))
    lines += [
        "-- Each setval reads last_value in the same statement: it only ever moves a",
        "-- sequence forward, also when this script runs later. Review it, then run:",
        "--   psql -v ON_ERROR_STOP=1 -f this-file.sql",
        "-- or let `seqdrift fix --apply` do it with each table locked while it reads.",
    ]
    if margin:
        lines.append(
            fixsql.comment(
                f"Headroom: {margin} ids past each table's max"
                f"{' and the source' if cut is not None else ''} (--margin {margin})."
            )
        )
    lines += ["", "BEGIN;"]
    for fix in fix_plan.fixes:
        lines.append("")
        for f in report.findings:
            if f.kind == "collision" and f.sequence.oid == fix.sequence.oid:
                lines.append(fixsql.comment(f"{f.column.label}: {describe_finding(f)}"))
        for c in cut.compared if cut is not None else ():
            if c.target is None or c.target.oid != fix.sequence.oid:
                continue
            if c.status == "behind":
                lines.append(fixsql.comment(f"behind the source: {describe_compared(c)}"))
            elif c.status == "ok" and fix.source_next is not None:
                lines.append(fixsql.comment(f"less than --margin ahead: {describe_compared(c)}"))
        lines.append(fixsql.comment(describe_fix(fix)))
        lines.append(fix.sql)  # names inside quotes: a line break there is SQL's own
    for f in fix_plan.advice:
        lines.append("")
        label = f"{f.column.label} (sequence {f.sequence.qualified})"
        lines.append(fixsql.comment(f"{label}: {what_happens(f)}"))
        # the advice is commented SQL already; comment it as one text, every line of it
        lines += [fixsql.comment(line.removeprefix("-- ")) for line in f.fix_sql.split("\n")]
    for c, skipped in fix_plan.blocked:
        lines.append("")
        lines.append(
            fixsql.comment(
                f"behind the source, not moved: {describe_compared(c)}; but "
                f"{skipped.schema}.{skipped.table} could not be read ({skipped.reason}), "
                "and its max is needed: run seqdrift fix again when it can be read"
            )
        )
    for s in fix_plan.unread:
        if any(c.sequence == s.sequence for c, _ in fix_plan.blocked):  # said above
            continue
        lines.append("")
        lines.append(
            fixsql.comment(
                f"not considered: {s.schema}.{s.table}.{s.column} also draws from "
                f"{s.sequence}, but it could not be read: {s.reason}"
            )
        )
    for c in fix_plan.beyond_reach:
        lines.append("")
        lines.append(
            fixsql.comment(
                f"behind the source, not fixable here (its limit lies before the source's "
                f"next value): {describe_compared(c)}"
            )
        )
        if c.fix_sql.startswith("--"):
            lines.append(c.fix_sql)
    lines += _unjudged(report) + _missing(fix_plan)
    lines += ["", "COMMIT;"]
    return "\n".join(lines)


def _missing(fix_plan: FixPlan) -> list[str]:
    """Sequences on one side only, or not compared: no setval here, and the script says
    so."""
    cut = fix_plan.cutover
    lines: list[str] = []
    for c in cut.compared if cut is not None else ():
        if c.status in ("missing on target", "missing on source", "skipped"):
            lines += ["", fixsql.comment(f"not fixed here: {describe_compared(c)}")]
    return lines


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
    source: Any = None,
    schema_map: Mapping[str, str] | None = None,
    despite_subscriptions: bool = False,
) -> Applied:
    """Fix every collision that a ``setval`` can fix, in one transaction, then check
    again. ``conn`` is an idle psycopg 3 connection. With ``source`` (a connection to
    the database the target was copied from), every sequence behind the source's moves
    to at least its next value too; an enabled subscription on the target stops it
    (writes may still arrive) unless ``despite_subscriptions``.

    Raises ``CannotCheck`` when the database cannot be checked, ``CannotFix`` when a
    table stays locked past the lock timeout, a privilege is missing or a subscription
    is enabled (then nothing has been changed).
    """
    cut = None
    if source is not None:
        cut = cutover.compare(conn, source, options, schema_map=schema_map)
        before = cut.report
        enabled = [s.name for s in cut.subscriptions if s.enabled]
        unknown = [u for u in cut.unread if "subscriptions" in u]
        if unknown and not despite_subscriptions:
            raise CannotFix(
                f"{unknown[0]}: a subscription may still be enabled on the target; pass "
                "--despite-subscriptions to fix anyway; nothing was changed"
            )
        if enabled and not despite_subscriptions:
            names = ", ".join(enabled)
            raise CannotFix(
                f"subscription {names} is still enabled on the target: writes may still "
                f"arrive and move ids past any fix; ALTER SUBSCRIPTION {enabled[0]} DISABLE "
                "(or drop it) first, or pass --despite-subscriptions; nothing was changed"
            )
    else:
        before = checker.run(conn, options)
    moved = _moved(cut, margin)
    fed = _clears(before, [s.oid for s in moved])
    if not fed:
        fix_plan = plan(conn, before, margin=margin)
        if cut is not None:
            with_source(fix_plan, cut, margin=margin)
        return Applied(fix_plan, [], before, cut)
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
        fix_plan = plan(conn, before, margin=margin, also=moved)
        if cut is not None:
            with_source(fix_plan, cut, margin=margin)
        for c, skipped in fix_plan.blocked:
            raise CannotFix(
                f"cannot read {skipped.schema}.{skipped.table}, which {c.sequence} feeds: "
                f"{skipped.reason}; its max is needed to move it past the source's; "
                "nothing was changed"
            )
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
    if cut is None:
        return Applied(fix_plan, changes, checker.run(conn, options))
    again = cutover.compare(conn, source, options, schema_map=schema_map)
    return Applied(fix_plan, changes, again.report, again)
