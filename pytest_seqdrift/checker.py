"""``check()``: read a database's sequence-backed columns and judge each one.

Statements per check are constant, whatever the number of tables: the transaction and
its lock timeout, discovery (one query), one PL/pgSQL block that reads every sequence's
state and every column's max (block.READ_BLOCK; reads the connection was given before
go to one statement prepared for them, read/prepared.py), a second block for the
columns whose max reaches their sequence's next value (none, in a database without
drift), and row counts for the few columns whose verdict depends on them (usually
none). Where the block cannot run, the same reads go as statements of their own,
pipelined; a table that cannot be read (a lock held past the lock timeout, a
privilege) is reported on its own either way, and the rest still checked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any

from pytest_seqdrift import drift
from pytest_seqdrift.db.adapters import in_thread, open_session
from pytest_seqdrift.db.session import Session, Then
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.model import (
    Bounds,
    Checked,
    Column,
    Finding,
    PgSequence,
    Report,
    SequenceState,
    Skipped,
)
from pytest_seqdrift.options import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_THRESHOLD, CheckOptions
from pytest_seqdrift.read import block, inserts, reader


def check(
    conn: Any,
    *,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    statement_timeout_ms: int | None = None,
    max_scan_rows: int | None = None,
    jobs: int = 1,
) -> Report:
    """Check every sequence-backed column the connection can see; never writes.

    ``conn`` is a psycopg 3 or psycopg2 connection, a SQLAlchemy ``Engine`` or
    ``Connection``, or a Django connection; anything else (SQLite, MySQL) raises
    ``NotSupported``, a ``CannotCheck`` and ``TypeError``.

    ``schemas`` limits the check to those schemas; ``exclude_tables`` takes fnmatch
    patterns matched against ``table`` and ``schema.table``; ``threshold`` is the share
    of a column's range that, once used, counts as overflow or exhaustion.

    A column that no index leads with is read by scanning its table, and its verdict
    says so; with ``max_scan_rows``, such a column in a table the planner estimates at
    more rows than that is skipped instead, with the reason.

    ``jobs``: read on this many connections at once (the first read of every column and
    sequence is split between them; all share one snapshot). Only for a psycopg 3
    connection that is not inside a transaction; otherwise, and for small databases,
    the check reads on the one connection it was given.

    Raises ``CannotCheck`` when the database cannot be checked at all. A column that
    cannot be read (privileges, a lock held past the lock timeout) is listed in
    ``Report.skipped`` with the reason, and the rest is still checked.
    """
    options = CheckOptions.of(
        schemas=schemas,
        exclude_tables=exclude_tables,
        threshold=threshold,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
        max_scan_rows=max_scan_rows,
    )
    return run(conn, options, jobs=jobs)


async def acheck(
    conn: Any,
    *,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    statement_timeout_ms: int | None = None,
    max_scan_rows: int | None = None,
) -> Report:
    """``check()`` for an async project: ``conn`` is an asyncpg connection or pool, a
    psycopg 3 ``AsyncConnection``, or a SQLAlchemy ``AsyncEngine``, ``AsyncConnection``
    or ``AsyncSession`` (asyncpg or psycopg dialect). The same statements, the same
    transaction rules: inside the caller's transaction it reads in a savepoint (and sees
    the caller's uncommitted rows), on an idle connection in a read-only transaction of
    its own. It runs on the caller's event loop and connection; the arithmetic runs in a
    worker thread meanwhile, so the loop is never blocked."""
    options = CheckOptions.of(
        schemas=schemas,
        exclude_tables=exclude_tables,
        threshold=threshold,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
        max_scan_rows=max_scan_rows,
    )
    return await in_thread(conn, functools.partial(run, options=options))


def run(conn: Any, options: CheckOptions, *, jobs: int = 1) -> Report:
    """``check()`` with its options as one value (what the fix, the probe, the CLI and
    the plugin call)."""
    return discover_and_run(conn, options, jobs=jobs)[0]


Discovered = tuple[list[Column], dict[int, PgSequence]]


def discover_and_run(
    conn: Any,
    options: CheckOptions,
    *,
    jobs: int = 1,
    on_discovered: Callable[[Session, Discovered], None] | None = None,
) -> tuple[Report, Discovered]:
    """``run``, and what its discovery found (for ``rerun`` to start from).
    ``on_discovered`` is called once discovery is done, before any table or sequence is
    read, inside the check's transaction (``probe.since`` marks the database there)."""
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, not {jobs!r}")
    report = Report()
    with (
        open_session(conn) as session,
        session.read_only(
            lock_timeout_ms=options.lock_timeout_ms,
            statement_timeout_ms=options.statement_timeout_ms,
            share=jobs > 1,
        ) as snapshot,
    ):
        columns, sequences = reader.discover(session, options.schemas, options.exclude_tables)
        if on_discovered is not None:
            on_discovered(session, (columns, sequences))
        _judge_columns(session, columns, sequences, options, report, snapshot, jobs)
    _finish(report)
    return report, (columns, sequences)


def rerun(
    conn: Any,
    options: CheckOptions,
    discovered: Discovered,
    columns: Iterable[Column],
    *,
    then: Then | None = None,
) -> tuple[Report, dict[int, SequenceState | ReadFailure]]:
    """The check of only ``columns`` (some of ``discovered``'s, whose discovery is taken
    as it stands: the catalog has not changed since). Their verdicts, findings and
    skips, nothing of any other column; and the state of each sequence it judged them
    with, by OID. ``then``: reads to run as the check ends (``Session.read_only``); its
    savepoint travels with its first read."""
    report = Report()
    _, sequences = discovered
    with (
        open_session(conn) as session,
        session.read_only(
            lock_timeout_ms=options.lock_timeout_ms,
            statement_timeout_ms=options.statement_timeout_ms,
            lazy=True,
            then=then,
        ) as snapshot,
    ):
        states = _judge_columns(session, list(columns), sequences, options, report, snapshot, 1)
    _finish(report)
    return report, states


def _judge_columns(
    session: Session,
    columns: list[Column],
    sequences: dict[int, PgSequence],
    options: CheckOptions,
    report: Report,
    snapshot: str | None,
    jobs: int,
) -> dict[int, SequenceState | ReadFailure]:
    """Judge ``columns`` into ``report``; the states read of their sequences."""
    judged = _to_judge(columns, sequences, options, report)
    tops, states = _first_read(session, judged, sequences, snapshot, jobs, options)
    bounded = _bounds(session, judged, sequences, tops, states, report)
    rows = _row_counts(session, bounded, options.threshold)
    for i, (c, seq, state, bounds) in enumerate(bounded):
        _judge(report, c, seq, state, bounds, sequences, options.threshold, rows.get(i))
    return states


def _finish(report: Report) -> None:
    report.checked.sort(
        key=lambda v: (v.column.schema, v.column.table, v.column.column, v.sequence.qualified)
    )
    _one_fix_per_sequence(report)


# what judging one column takes: its sequence (or its walk, drawn twice per insert), the
# sequence's state, and the bounds read from the table
_Bounded = tuple[Column, PgSequence, SequenceState, Bounds]
# a column's first read: what was asked (its extreme, or its top window) and the answer
_Top = tuple[block.Slot, block.Answer | ReadFailure]


def _to_judge(
    columns: list[Column], sequences: dict[int, PgSequence], options: CheckOptions, report: Report
) -> list[Column]:
    """The columns the arithmetic can judge; the others go into the report now, as
    skipped (with why) or unchecked (with why)."""
    judged: list[Column] = []
    for c in columns:
        if c.skip_reason is not None:
            report.skipped.append(_skipped(c, sequences[c.sequence_oid], c.skip_reason))
    for c in columns:
        seq = sequences[c.sequence_oid]
        if c.skip_reason is not None:
            continue
        if c.unjudged is not None:
            report.checked.append(Checked(c, seq, "unchecked", note=c.unjudged))
        elif not c.plain_default:
            report.checked.append(Checked(c, seq, "unchecked", note=_unplain(c)))
        elif c.type_range is None and c.data_type != "numeric":
            note = f"a {c.data_type} column is not compared with a sequence"
            report.checked.append(Checked(c, seq, "unchecked", note=note))
        elif _too_big_to_scan(c, options.max_scan_rows):
            reason = (
                f"no index leads with {c.column} and the table holds about "
                f"{c.estimated_rows:,} rows: not scanned (max_scan_rows={options.max_scan_rows})"
            )
            report.skipped.append(_skipped(c, seq, reason))
        else:
            judged.append(c)
    return judged


def _first_read(
    session: Session,
    judged: list[Column],
    sequences: dict[int, PgSequence],
    snapshot: str | None,
    jobs: int,
    options: CheckOptions,
) -> tuple[list[_Top], dict[int, SequenceState | ReadFailure]]:
    """Every column's max (min) and the state of every sequence they need, in one read."""
    wanted = sorted({c.sequence_oid for c in judged})
    slots = [_top_slot(c, inserts.per_insert(c, sequences[c.sequence_oid])) for c in judged]
    # the maxima before the states: inside a caller's READ COMMITTED transaction each
    # read sees rows committed up to its start, so this order keeps every max older
    # than the state it is compared with (in the check's own REPEATABLE READ
    # transaction, the snapshot taken by discovery already does)
    reads: list[block.Read] = [
        block.ColumnRead(c, (None, None, slot, None)) for c, slot in zip(judged, slots, strict=True)
    ]
    reads += [block.StateRead(sequences[oid]) for oid in wanted]
    answers = reader.read_shared(session, reads, snapshot, jobs, options)
    states = {
        oid: a if isinstance(a, ReadFailure) else block.as_state(a)
        for oid, a in zip(wanted, answers[len(judged) :], strict=True)
    }
    return list(zip(slots, answers[: len(judged)], strict=True)), states


def _bounds(
    session: Session,
    judged: list[Column],
    sequences: dict[int, PgSequence],
    tops: list[_Top],
    states: dict[int, SequenceState | ReadFailure],
    report: Report,
) -> list[_Bounded]:
    """Each column's bounds: its max (min) alone where that settles the verdict, the
    search's other windows read only where the max says they can matter. A column whose
    sequence or table could not be read is skipped, with why."""
    todo: list[tuple[Column, PgSequence, SequenceState]] = []
    results: list[Bounds | ReadFailure | None] = []
    for c, (slot, answer) in zip(judged, tops, strict=True):
        seq, state = sequences[c.sequence_oid], states[c.sequence_oid]
        if isinstance(state, ReadFailure):
            report.skipped.append(_skipped(c, seq, state.message))
            continue
        if c.draws[0] > 1:  # the column sees every k-th value (inserts.py)
            walk = inserts.per_insert(c, seq)
            state = inserts.per_insert_state(c, seq, walk, state)
            seq = walk
        todo.append((c, seq, state))
        if isinstance(answer, ReadFailure):
            results.append(answer)
            continue
        known, value = _top_from(slot, block.as_int(answer[2]))
        if known and not drift.may_collide_at(c, seq, state, value):
            results.append(Bounds(None, None, value, None))
        else:
            results.append(None)
    deeper = [i for i, r in enumerate(results) if r is None]
    searches = [(todo[i][0], drift.search(*todo[i])) for i in deeper]
    for i, read in zip(deeper, reader.read_bounds(session, searches), strict=True):
        results[i] = read
    bounded: list[_Bounded] = []
    for (c, seq, state), result in zip(todo, results, strict=True):
        if isinstance(result, ReadFailure):
            report.skipped.append(_skipped(c, seq, result.message))
        elif result is not None:  # every None was read above
            bounded.append((c, seq, state, result))
    return bounded


def _row_counts(session: Session, bounded: list[_Bounded], threshold: float) -> dict[int, int]:
    """Row counts by index into ``bounded``, only where "fewer values left than rows"
    could decide the verdict (usually nowhere); a count that fails is left out."""
    counting = [
        (i, limit)
        for i, (c, seq, state, b) in enumerate(bounded)
        if (limit := drift.row_count_wanted(c, seq, state, threshold, b)) is not None
    ]
    counted = session.batch(
        [block.row_count_query(bounded[i][0], limit) for i, limit in counting],
        release_locks=True,
    )
    return {
        i: int(count[0][0])
        for (i, _), count in zip(counting, counted, strict=True)
        if not isinstance(count, ReadFailure)
    }


def _judge(
    report: Report,
    c: Column,
    seq: PgSequence,
    state: SequenceState,
    bounds: Bounds,
    sequences: dict[int, PgSequence],
    threshold: float,
    rows: int | None,
) -> None:
    found, verdict = drift.assess(c, seq, state, bounds, threshold=threshold, rows=rows)
    if c.draws[0] > 1:  # judged on the column's walk; reported on the sequence
        real = sequences[c.sequence_oid]
        found = [replace(f, sequence=real) for f in found]
        verdict = replace(verdict, sequence=real)
    report.findings.extend(found)
    if c.note:
        verdict = replace(verdict, note=_joined(c.note, verdict.note))
    if not c.indexed:
        verdict = replace(verdict, note=_joined(verdict.note, _scanned(c)))
    report.checked.append(verdict)


def _one_fix_per_sequence(report: Report) -> None:
    """Where one sequence collides in several columns (shared by tables, or drawn twice
    per insert), each finding's setval goes as far as the furthest one: any of them,
    run alone, clears them all."""
    furthest: dict[int, Finding] = {}
    for f in report.findings:
        if f.kind != "collision" or f.max_existing is None or not f.fix_sql.startswith("SELECT"):
            continue
        best = furthest.get(f.sequence.oid)
        further = drift.forward(f.sequence, f.max_existing)
        if best is None or further > drift.forward(f.sequence, best.max_existing or 0):
            furthest[f.sequence.oid] = f
    for i, f in enumerate(report.findings):
        best = furthest.get(f.sequence.oid)
        if best is not None and f.kind == "collision" and f.fix_sql.startswith("SELECT"):
            report.findings[i] = replace(f, fix_sql=best.fix_sql)


def _top_slot(column: Column, seq: PgSequence) -> block.Slot:
    """The first read of a column: its max (min) over all rows, a single index probe.
    The planner estimates a range condition at the ends of the type by probing the index
    for the actual extremes, which made a windowed max three probes, not one. A numeric
    column keeps its window: its max may be a fraction."""
    window = drift.top_window(column, seq)
    if window is None or column.type_range is None:
        return window
    return block.Extreme(window)


def _top_from(slot: block.Slot, extreme: int | None) -> tuple[bool, int | None]:
    """The top window's answer from the column's extreme: (known, value). Unknown only
    when the extreme lies past the window's far end (ids beyond what the sequence and
    the type allow): then the window itself is read."""
    if not isinstance(slot, block.Extreme):
        return True, extreme  # the window itself was read (or there is none)
    window = slot.window
    if extreme is None or window.lo <= extreme <= window.hi:
        return True, extreme
    if slot.ascending:  # the min: below the window is its far end
        return (False, None) if extreme < window.lo else (True, None)
    return (False, None) if extreme > window.hi else (True, None)


def _too_big_to_scan(column: Column, max_scan_rows: int | None) -> bool:
    if column.indexed or max_scan_rows is None or column.estimated_rows is None:
        return False  # a table of unknown size (never analyzed) is read
    return column.estimated_rows > max_scan_rows


def _scanned(column: Column) -> str:
    scanned = f"no index leads with {column.column}: read by scanning the table"
    if column.estimated_rows is None:
        return f"{scanned}, never analyzed (size unknown)"
    return f"{scanned} (about {column.estimated_rows:,} rows)"


def _joined(*notes: str | None) -> str:
    return "; ".join(n for n in notes if n)


def _skipped(column: Column, seq: PgSequence, reason: str) -> Skipped:
    return Skipped(column.schema, column.table, column.column, seq.qualified, reason)


def _unplain(column: Column) -> str:
    return (
        f"default {column.default_expr} is more than the sequence's next value: "
        "the arithmetic cannot judge it (on a test database, pytest --seqdrift's probe judges it by inserting)"
    )
