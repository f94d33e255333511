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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pytest_seqdrift import checker
from pytest_seqdrift.db.session import Session, error_line
from pytest_seqdrift.errors import CannotCheck
from pytest_seqdrift.model import Column, Report
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.probe.report import Mode, ProbeReport
from pytest_seqdrift.probe.run import probe_checked
from pytest_seqdrift.read import changes


@dataclass(frozen=True)
class Mark:
    """A probe's answer, and what the database was as the probe began."""

    key: tuple[Any, ...]  # the probe's mode, limit and options: another probe, no mark
    discovered: checker.Discovered
    result: ProbeReport
    seen: changes.Seen  # as the probe began, after discovery
    relations: tuple[int, ...]  # followed, in the order of ``seen.writes``
    owners: dict[int, frozenset[int]]  # relation followed -> the tables it counts for
    sequences: tuple[int, ...]  # followed, in the order of ``seen.states``
    # the relations, the sequences and those not called then, as ``changes.look`` takes them
    texts: tuple[str, str, str]
    uncalled: dict[int, int]  # the sequences not called then -> their place in ``texts[2]``
    pending: changes.Pending  # this backend's pending counts, once the probe was done
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
    why = _why_full(session, mark, key)
    if why is not None or mark is None:
        return _full(session, mode, limit, options, key, why or "no earlier probe")
    seen, why_not = _look(session, options, mark.texts, mark.seen)
    if seen is not None:
        why_not = _changed_too_much(mark, seen)
    if why_not is not None or seen is None:
        return _full(session, mode, limit, options, key, why_not or "nothing could be read")
    columns, _ = mark.discovered
    again = _again(mark, seen)
    if not again:
        result = ProbeReport(_copy(mark.result.report), list(mark.result.probed), restored=0)
    else:
        chosen = [columns[i] for i in again]
        sub = checker.rerun(session, options, mark.discovered, chosen)
        judged = probe_checked(session, sub, mode, limit, options)
        result = _combined(mark.result, judged, {_key(c) for c in chosen})
    following = replace(
        mark,
        result=result,
        seen=seen,
        dirty=frozenset(_written(mark, seen)),
        **_uncalled(session, mark.texts[:2], mark.sequences, seen),
    )
    return Probe(result, following, None, len(again))


def _why_full(session: Session, mark: Mark | None, key: tuple[Any, ...]) -> str | None:
    if mark is None:
        return "no earlier probe"
    if mark.key != key:
        return "another probe than the last one"
    return None


def _uncalled(
    session: Session, texts: tuple[str, str], sequences: tuple[int, ...], seen: changes.Seen
) -> dict[str, Any]:
    """The mark's fields that follow from which sequences are not called now: their
    place, the texts, and the counts pending once the probe is done."""
    uncalled = [oid for oid, state in zip(sequences, seen.states, strict=True) if state is None]
    text = changes.oids(uncalled)
    return {
        "texts": (*texts, text),
        "uncalled": {oid: j for j, oid in enumerate(uncalled)},
        "pending": changes.settle(session, texts[0], text),
    }


def _look(
    session: Session,
    options: CheckOptions,
    texts: tuple[str, str, str],
    since: changes.Seen | None,
) -> tuple[changes.Seen | None, str | None]:
    """``changes.look``: what it saw, or why it saw nothing."""
    mark = changes.Since() if since is None else changes.Since(since.xmax, since.xip, since.own_xid)
    try:
        seen = changes.look(session, *texts, mark, lock_timeout_ms=options.lock_timeout_ms)
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
    if seen.committed is None:
        return "too many transactions since the last probe to look at"
    if seen.committed:
        return "a transaction committed since the last probe"
    if seen.catalog_writes > (0 if _flushed(mark, seen) else mark.pending.catalog_writes):
        return "this connection wrote to the catalog (DDL) since the last probe"
    return None


def _flushed(mark: Mark, seen: changes.Seen) -> bool:
    """Whether the backend flushed its pending statistics since the mark (its counts
    started again from 0): the sentinel, read many times at the mark, shows fewer."""
    return seen.sentinel < mark.pending.sentinel


def _written(mark: Mark, seen: changes.Seen) -> set[int]:
    """The tables this backend wrote to since the mark: more writes pending than then
    (after a flush, any: what came before it was the last test's, rolled back before
    the backend went idle, or committed -- and then seen as committed)."""
    flushed = _flushed(mark, seen)
    tables: set[int] = set()
    for i, relid in enumerate(mark.relations):
        if seen.writes[i] > (0 if flushed else mark.pending.writes[i]):
            tables |= mark.owners.get(relid, frozenset())
    return tables


def _again(mark: Mark, seen: changes.Seen) -> list[int]:
    """The columns of the mark's discovery to judge again, by index."""
    columns, _ = mark.discovered
    before = mark.seen
    # the rows this transaction wrote, and those the mark's own transaction had (judged
    # with them then; rolled back since, or not)
    written = _written(mark, seen) | mark.dirty
    flushed = _flushed(mark, seen)
    moved = set()
    for i, oid in enumerate(mark.sequences):
        now, then = seen.states[i], before.states[i]
        if now != then:
            moved.add(oid)
        elif now is None and (
            flushed or seen.fetched[j := mark.uncalled[oid]] > mark.pending.fetched[j]
        ):
            moved.add(oid)  # not called then, nor now: touched (setval(..., false))?
    chosen = {i for i, c in enumerate(columns) if c.table_oid in written or c.sequence_oid in moved}
    if not chosen:
        return []
    # a sequence's columns are judged together (one fix per sequence); and a column
    # whose value a trigger, a rule or an expression decides is judged again whenever
    # anything changed: what decides it may read what the test wrote elsewhere
    shared = {columns[i].sequence_oid for i in chosen}
    decided = {_key(p.column) for p in mark.result.probed if p.decided_by}
    chosen |= {
        i
        for i, c in enumerate(columns)
        if c.sequence_oid in shared
        or _key(c) in decided
        or c.unjudged is not None
        or not c.plain_default
    }
    return sorted(chosen)


def _full(
    session: Session, mode: Mode, limit: int, options: CheckOptions, key: tuple[Any, ...], why: str
) -> Probe:
    """The full probe, marking the database as it begins (after discovery, before any
    table or sequence is read: what commits later, or moves, the next look sees)."""
    Marked = tuple[
        changes.Seen, tuple[int, ...], dict[int, frozenset[int]], tuple[int, ...], tuple[str, str]
    ]  # what it saw, the relations, their tables, the sequences, and the first two as text
    marked: list[Marked] = []

    def mark_here(session: Session, discovered: checker.Discovered) -> None:
        columns, sequences = discovered
        if len(sequences) > changes.MAX_SEQUENCES:
            return
        followed = tuple(sorted(changes.readable(session, sorted(sequences))))
        owners = changes.family(session, sorted({c.table_oid for c in columns}))
        relations = tuple(sorted(owners))
        texts = (changes.oids(relations), changes.oids(followed))
        seen, _ = _look(session, options, (*texts, texts[1]), None)
        if seen is not None:
            marked.append((seen, relations, owners, followed, texts))

    report, discovered = checker.discover_and_run(session, options, on_discovered=mark_here)
    result = probe_checked(session, report, mode, limit, options)
    columns, _ = discovered
    if not marked or marked[0][0].catalog_writes:
        return Probe(result, None, why, len(columns))
    seen, relations, owners, followed, texts = marked[0]
    # the tables written so far count as the probe's own transaction's: judged again
    dirty = {t for i, r in enumerate(relations) if seen.writes[i] for t in owners[r]}
    mark = Mark(
        key=key,
        discovered=discovered,
        result=result,
        seen=seen,
        relations=relations,
        owners=owners,
        sequences=followed,
        dirty=frozenset(dirty),
        **_uncalled(session, texts, followed, seen),
    )
    return Probe(result, mark, why, len(columns))


def _key(column: Column) -> tuple[str, str, str]:
    return (column.schema, column.table, column.column)


def _copy(report: Report) -> Report:
    return Report(list(report.findings), list(report.checked), list(report.skipped))


def _combined(
    before: ProbeReport, again: ProbeReport, keys: set[tuple[str, str, str]]
) -> ProbeReport:
    """The answers for the columns judged again (``keys``) in place of the last probe's,
    the rest as it had them, in the order a full probe gives them."""
    old, new = before.report, again.report

    def by_column(c: Column) -> tuple[str, str, str]:
        return (c.schema, c.table, c.column)

    report = Report(
        findings=_merged(old.findings, new.findings, keys, lambda f: by_column(f.column)),
        checked=_merged(
            old.checked, new.checked, keys, lambda v: (*by_column(v.column), v.sequence.qualified)
        ),
        skipped=_merged(old.skipped, new.skipped, keys, lambda s: (s.schema, s.table, s.column)),
    )
    probed = _merged(before.probed, again.probed, keys, lambda p: by_column(p.column))
    return ProbeReport(report, probed, again.restored)


T = TypeVar("T")


def _merged(
    old: list[T],
    new: list[T],
    keys: set[tuple[str, str, str]],
    order: Callable[[T], tuple[str, ...]],
) -> list[T]:
    """``old`` without the entries of ``keys``' columns, ``new`` put in among them by
    ``order`` (a few entries into a long list, already in that order)."""
    out = [x for x in old if order(x)[:3] not in keys]
    for x in new:
        bisect.insort(out, x, key=order)
    return out
