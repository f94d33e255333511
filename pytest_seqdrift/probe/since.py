"""The probe after a test, from the last probe of the same database on the same
connection: only what the test could have changed is judged again -- the tables its
transaction wrote (a trigger's writes too), and the columns of every sequence that
moved -- and every other column keeps the answer it had. Anything else that could
have changed (a transaction that committed anywhere on the server, a catalog write of
this backend, another connection, role or search_path) means the full probe, as before.
``read/changes.py`` says how each of these is known, and why each answer can only err
towards judging more.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pytest_seqdrift import checker
from pytest_seqdrift.db.session import Session, Then, error_line
from pytest_seqdrift.errors import CannotCheck
from pytest_seqdrift.model import Column, Report
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.probe.report import Mode, ProbeReport
from pytest_seqdrift.probe.run import probe_checked
from pytest_seqdrift.read import changes

ColumnKey = tuple[str, str, str]


@dataclass(frozen=True)
class Followed:
    """What a mark follows of a database, worked out once per full probe: the tables
    (with their partitions and children) and the sequences, and where each column is."""

    relations: str  # as changes.look takes them
    sequences: str
    owners: dict[int, frozenset[int]]  # relation -> the tables it counts for
    by_table: dict[int, tuple[int, ...]]  # table oid -> its columns (indices into discovery)
    by_sequence: dict[int, tuple[int, ...]]  # sequence oid -> the columns it feeds
    # the columns whose value a trigger, a rule or an expression decides: judged again
    # whenever anything at all changed (what decides it may read what the test wrote)
    always: tuple[int, ...]
    # what the catalog says of inserting into each column (probe.run._insert_paths),
    # filled in as columns are probed: the catalog does not change under a mark
    paths: dict[tuple[int, str], tuple[bool, bool, bool] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Mark:
    """A probe's answer, and what the database was as the probe began."""

    key: tuple[Any, ...]  # the probe's mode, limit and options: another probe, no mark
    discovered: checker.Discovered
    followed: Followed
    result: ProbeReport
    seen: changes.Seen  # the look as the probe began (its baseline: the next look's)
    # the tables the probe's own transaction had written as it began: judged with its
    # rows then, rolled back (or not) since
    dirty: frozenset[int]


@dataclass(frozen=True)
class Probe:
    """What ``probe_since`` did."""

    result: ProbeReport
    mark: Mark | None  # where the next probe starts from (None: it probes in full)
    full: str | None  # why the probe was a full one (None: it started from the mark)
    judged: int  # columns judged again (every one, in a full probe)


def probe_since(
    session: Session, mode: Mode, limit: int, options: CheckOptions, mark: Mark | None
) -> Probe:
    """Probe the database: from ``mark`` where nothing but what this connection's
    transaction wrote and what sequences moved can have changed since, else in full."""
    key = (mode, limit, options)
    if mark is None:
        return _full(session, mode, limit, options, key, "no earlier probe")
    if mark.key != key:
        return _full(session, mode, limit, options, key, "another probe than the last one")
    followed = mark.followed
    seen, why = _look(session, options, followed, mark.seen.baseline)
    if seen is not None:
        why = _changed_too_much(mark, seen)
    if why is not None or seen is None:
        return _full(session, mode, limit, options, key, why or "nothing could be read")
    columns, _ = mark.discovered
    written = _tables(followed, seen.written)
    again = _again(mark, written | mark.dirty, seen.moved | seen.touched)
    result = mark.result
    if again:
        chosen = [columns[i] for i in again]
        read = {c.sequence_oid for c in chosen}
        # what the check read (and the probe inserted) since the look is not the next
        # test's doing: a sequence read would look touched, a table probed written.
        # The check reads the sequences of its columns, and its states are those its
        # answers stand on; an insert may move any sequence. Where the probe after the
        # check sends nothing, what the check's end read of those counts stands.
        then = Then(
            changes.rebase_reads(
                session, followed.relations, followed.sequences, writes=False, read=read
            )
        )
        sub, states = checker.rerun(session, options, mark.discovered, chosen, then=then)
        sent = session.statements
        judged = probe_checked(session, sub, mode, limit, options, followed.paths)
        result = _combined(mark, judged, {_key(c) for c in chosen})
        inserted = bool(judged.restored or any(p.drawn for p in judged.probed))
        base = changes.rebase(
            session,
            followed.relations,
            followed.sequences,
            seen.baseline,
            writes=inserted,
            read=None if inserted else read,
            states=None if inserted else states,
            answered=then.rows if not inserted and session.statements == sent else None,
        )
        seen = replace(seen, baseline=base)
    following = replace(mark, result=result, seen=seen, dirty=frozenset(written))
    return Probe(_copy(result), following, None, len(again))


def _look(
    session: Session, options: CheckOptions, followed: Followed, base: changes.Baseline
) -> tuple[changes.Seen | None, str | None]:
    """``changes.look``: what it saw, or why it saw nothing."""
    try:
        seen = changes.look(
            session,
            followed.relations,
            followed.sequences,
            base,
            lock_timeout_ms=options.lock_timeout_ms,
        )
    except (session.Error, CannotCheck) as exc:
        if session.broken:
            raise
        return None, f"what changed could not be read: {error_line(exc)}"
    return seen, None


def _changed_too_much(mark: Mark, seen: changes.Seen) -> str | None:
    """Why the look says the whole database must be judged again (None: it need not)."""
    before = mark.seen
    if seen.backend != before.backend:
        return "another connection than the last probe's"
    if (seen.role, seen.search_path) != (before.role, before.search_path):
        return "another role or search_path than at the last probe"
    if not seen.counting:
        return "track_counts is off: what a test writes is not counted"
    if seen.committed is None:
        return "too many transactions since the last probe to look at"
    if seen.committed:
        return "a transaction committed since the last probe"
    if seen.catalog_written:
        return "this connection wrote to the catalog (DDL) since the last probe"
    return None


def _tables(followed: Followed, relations: Iterable[int]) -> set[int]:
    """The tables whose rows writes to these relations are."""
    tables: set[int] = set()
    for relid in relations:
        tables |= followed.owners.get(relid, frozenset())
    return tables


def _again(mark: Mark, tables: set[int], sequences: frozenset[int]) -> list[int]:
    """The columns of the mark's discovery to judge again, by index: those of the
    tables written, those of the sequences that moved; then every column of a sequence
    among them (one fix per sequence), and those that are always judged again."""
    followed = mark.followed
    chosen: set[int] = set()
    for t in tables:
        chosen.update(followed.by_table.get(t, ()))
    for oid in sequences:
        chosen.update(followed.by_sequence.get(oid, ()))
    if not chosen:
        return []
    columns, _ = mark.discovered
    for oid in {columns[i].sequence_oid for i in chosen}:
        chosen.update(followed.by_sequence.get(oid, ()))
    chosen.update(followed.always)
    return sorted(chosen)


def _full(
    session: Session, mode: Mode, limit: int, options: CheckOptions, key: tuple[Any, ...], why: str
) -> Probe:
    """The full probe, marking the database as it begins (after discovery, before any
    table or sequence is read: what commits later, or moves, the next look sees)."""
    marked: list[tuple[changes.Seen, Followed]] = []

    def mark_here(session: Session, discovered: checker.Discovered) -> None:
        columns, sequences = discovered
        if len(sequences) > changes.MAX_SEQUENCES:
            return
        followed = _followed(session, columns, changes.readable(session, sorted(sequences)))
        seen, _ = _look(session, options, followed, changes.Baseline())
        # catalog writes pending: DDL this transaction may still roll back (the discovery
        # would then be wrong), unless it has written nothing at all (no xid): then they
        # are those of transactions that ended, which the discovery sees as they are
        if seen is not None and (not seen.catalog_written or not seen.baseline.own_xid):
            marked.append((seen, followed))

    report, discovered = checker.discover_and_run(session, options, on_discovered=mark_here)
    # what the catalog says of inserting into each column, kept for the probes from the
    # mark (their tests write other tables than the last one's)
    result = probe_checked(
        session, report, mode, limit, options, marked[0][1].paths if marked else None
    )
    columns, _ = discovered
    if not marked:
        return Probe(result, None, why, len(columns))
    seen, followed = marked[0]
    # the probe's own reads and inserts since the look are not the next test's
    base = changes.rebase(session, followed.relations, followed.sequences, seen.baseline)
    dirty = frozenset(_tables(followed, seen.written))
    mark = Mark(key, discovered, followed, result, replace(seen, baseline=base), dirty)
    return Probe(_copy(result), mark, why, len(columns))


def _followed(session: Session, columns: list[Column], readable: list[int]) -> Followed:
    owners = changes.family(session, sorted({c.table_oid for c in columns}))
    by_table: dict[int, list[int]] = {}
    by_sequence: dict[int, list[int]] = {}
    for i, c in enumerate(columns):
        by_table.setdefault(c.table_oid, []).append(i)
        by_sequence.setdefault(c.sequence_oid, []).append(i)
    always = tuple(
        i
        for i, c in enumerate(columns)
        if c.unjudged is not None or not c.plain_default or c.source == "trigger"
    )
    return Followed(
        relations=changes.int_array(sorted(owners)),
        sequences=changes.int_array(sorted(readable)),
        owners=owners,
        by_table={t: tuple(v) for t, v in by_table.items()},
        by_sequence={s: tuple(v) for s, v in by_sequence.items()},
        always=always,
    )


def _key(column: Column) -> ColumnKey:
    return (column.schema, column.table, column.column)


def _copy(result: ProbeReport) -> ProbeReport:
    """A result of its own for the caller (the mark keeps its lists as they are)."""
    report = result.report
    copied = Report(list(report.findings), list(report.checked), list(report.skipped))
    return ProbeReport(copied, list(result.probed), result.restored)


def _combined(mark: Mark, again: ProbeReport, keys: set[ColumnKey]) -> ProbeReport:
    """The answers for the columns judged again (``keys``) in place of the last probe's,
    the rest as it had them, in the order a full probe gives them."""
    before = mark.result
    old, new = before.report, again.report
    report = Report(
        findings=_replaced(old.findings, new.findings, keys, lambda f: _key(f.column)),
        checked=_sorted_replaced(
            old.checked, new.checked, keys, lambda v: (*_key(v.column), v.sequence.qualified)
        ),
        skipped=_replaced(old.skipped, new.skipped, keys, lambda s: (s.schema, s.table, s.column)),
    )
    probed = _sorted_replaced(before.probed, again.probed, keys, lambda p: _key(p.column))
    return ProbeReport(report, probed, again.restored)


T = TypeVar("T")


def _replaced(
    old: list[T], new: list[T], keys: set[ColumnKey], order: Callable[[T], ColumnKey]
) -> list[T]:
    """A short list (findings, skipped columns): ``old`` without ``keys``' columns, and
    ``new``, by column."""
    return sorted([x for x in old if order(x) not in keys] + new, key=order)


def _sorted_replaced(
    old: list[T], new: list[T], keys: set[ColumnKey], order: Callable[[T], tuple[str, ...]]
) -> list[T]:
    """A long list in ``order`` (every column's verdict): ``keys``' columns' entries
    found by bisecting and replaced, without walking the rest."""
    out = list(old)

    def column(x: T) -> tuple[str, ...]:
        return order(x)[:3]

    for k in keys:
        wanted: tuple[str, ...] = k
        lo = bisect.bisect_left(out, wanted, key=column)
        hi = bisect.bisect_right(out, wanted, key=column)
        del out[lo:hi]
    for x in new:
        bisect.insort(out, x, key=order)
    return out
