"""Running the probe: the check, then each unique sequence-backed column probed in a
savepoint of its own (or settled without one), the sequences put back, the findings
merged into the check's report."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any

from pytest_seqdrift import checker, snapshot
from pytest_seqdrift.db.adapters import in_thread, open_session
from pytest_seqdrift.db.session import LOCK_NOT_AVAILABLE, Session, error_line, sqlstate
from pytest_seqdrift.errors import CannotCheck
from pytest_seqdrift.model import Checked, PgSequence, Report, SequenceState, printable
from pytest_seqdrift.options import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_THRESHOLD, CheckOptions
from pytest_seqdrift.probe.disagreement import _disagreement, _in_one_statement, _settle
from pytest_seqdrift.probe.draw import _draw, _peek, _top
from pytest_seqdrift.probe.insert import _insert
from pytest_seqdrift.probe.merge import _merge
from pytest_seqdrift.probe.report import Mode, Probed, ProbeReport, _joined
from pytest_seqdrift.probe.sequences import _put_back, _put_back_at_end, _read_state, _set_state
from pytest_seqdrift.probe.shortcut import _clean, _insert_paths, _settled
from pytest_seqdrift.probe.target import (
    _CannotCopy,
    _decided,
    _distance,
    _finding_for,
    _judged,
    _NotProbed,
    _Run,
    _Target,
    _Unreproducible,
)
from pytest_seqdrift.read import inserts

DEFAULT_LIMIT = 10_000


def probe(
    conn: Any,
    *,
    mode: Mode = "insert",
    limit: int = DEFAULT_LIMIT,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> ProbeReport:
    """Check, then probe every unique sequence-backed column; restore every sequence."""
    if mode not in ("insert", "default"):
        raise ValueError(f"probe mode must be 'insert' or 'default', not {mode!r}")
    if limit < 1:
        raise ValueError(f"probe limit must be at least 1, not {limit!r}")
    options = CheckOptions.of(
        schemas=schemas,
        exclude_tables=exclude_tables,
        threshold=threshold,
        lock_timeout_ms=lock_timeout_ms,
    )
    with open_session(conn) as session:
        return _probe(session, mode, limit, options)


async def aprobe(
    conn: Any,
    *,
    mode: Mode = "insert",
    limit: int = DEFAULT_LIMIT,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> ProbeReport:
    """``probe()`` for what ``acheck()`` takes: on the caller's event loop and connection,
    inside its transaction where one is open."""
    work = functools.partial(
        probe,
        mode=mode,
        limit=limit,
        schemas=schemas,
        exclude_tables=exclude_tables,
        threshold=threshold,
        lock_timeout_ms=lock_timeout_ms,
    )
    return await in_thread(conn, work)


def _probe(session: Session, mode: Mode, limit: int, options: CheckOptions) -> ProbeReport:
    return probe_checked(session, checker.run(session, options), mode, limit, options)


def probe_checked(
    session: Session,
    report: Report,
    mode: Mode,
    limit: int,
    options: CheckOptions,
    paths_known: dict[tuple[int, str], tuple[bool, bool, bool] | None] | None = None,
) -> ProbeReport:
    """The probe of the columns of a check's report (all of a database's, or those
    ``probe.since`` judges again). ``paths_known``: what ``_insert_paths`` said of each
    column (by table and name) while the catalog stays as it is; read where missing,
    and kept there."""
    lock_timeout_ms = options.lock_timeout_ms
    result = ProbeReport(report)
    targets = [c for c in report.checked if c.column.unique and c.status != "duplicates"]
    clean = [i for i, verdict in enumerate(targets) if _clean(verdict, report)]
    paths = _paths(session, targets, clean, paths_known) if mode == "insert" else {}
    settled = _settled(targets, clean, mode, paths)
    for i, verdict in enumerate(targets):  # an empty table: what _probe_here says of it
        if i not in settled and _judged(verdict) and verdict.max_existing is None:
            settled[i] = _empty(verdict, mode)
    if len(settled) == len(targets):  # nothing to insert, nothing to draw: no nextval runs
        result.probed = [settled[i] for i in range(len(targets))]
        return result
    # clean columns whose table has a trigger or rule that may store another value than
    # the default's are not settled: the insert probe inserts once even there
    rewriting = {i for i, (rewrites, _, _) in paths.items() if rewrites}
    # nextval is not rolled back: every sequence is read before the first one runs, and
    # put back to these states after each column and at the end. So a probe killed
    # half-way leaves a sequence only ahead of where it was (gaps), never behind
    before = snapshot.read_states(session)
    try:
        with session.scratch(lock_timeout_ms=lock_timeout_ms):
            for i, verdict in enumerate(targets):
                if i in settled:
                    result.probed.append(settled[i])
                    continue
                once = i in rewriting
                try:
                    probed = _probe_column(session, verdict, report, mode, limit, once, before)
                except (session.Error, CannotCheck, _NotProbed) as exc:
                    if session.broken:  # a lost connection ends the probe
                        raise
                    # any other failure is the column's note; the rest is probed
                    probed = _unprobed(verdict, mode, exc)
                # every column is probed from the states the arithmetic judged: a
                # sequence shared with (or drawn by a trigger of) a column probed
                # before must not start where that probe left it
                if _may_draw(verdict) or i in rewriting:
                    moved = _put_back(session, before)
                    result.restored += len(moved)
                    if probed.decided_by:
                        probed = replace(probed, drew_from=_drew_from(probed, moved))
                result.probed.append(probed)
    finally:
        if not session.broken:  # a lost connection: its error is the one to raise
            result.restored += _put_back_at_end(session, before, lock_timeout_ms)
    _merge(result)
    return result


def _empty(verdict: Checked, mode: Mode, seq: PgSequence | None = None) -> Probed:
    """A column whose table holds no row (that its keys count): nothing to probe."""
    walk = seq if seq is not None else inserts.per_insert(verdict.column, verdict.sequence)
    return Probed(
        verdict.column, walk, mode, 0, None, None, passed_max=True, note="empty: nothing to probe"
    )


def _paths(
    session: Session,
    targets: Seq[Checked],
    clean: Seq[int],
    known: dict[tuple[int, str], tuple[bool, bool, bool] | None] | None,
) -> dict[int, tuple[bool, bool, bool]]:
    """``_insert_paths``, from ``known`` where it holds a column."""
    if known is None:
        return _insert_paths(session, targets, clean)

    def key(i: int) -> tuple[int, str]:
        return (targets[i].column.table_oid, targets[i].column.column)

    missing = [i for i in clean if key(i) not in known]
    found = _insert_paths(session, targets, missing)
    for i in missing:
        known[key(i)] = found.get(i)  # None: not settled here (_insert_paths left it out)
    return {i: p for i in clean if (p := known[key(i)]) is not None}


def _unprobed(verdict: Checked, mode: Mode, exc: Exception) -> Probed:
    """A column whose probe failed: it says why; the arithmetic's verdict stands."""
    return Probed(
        verdict.column,
        verdict.sequence,
        mode,
        0,
        None,
        None,
        passed_max=True,  # not stopped by the limit: not probed at all
        note=f"could not be probed: {error_line(exc)}; the arithmetic's verdict stands",
        first_value=verdict.next_value,
        top=verdict.max_existing,
    )


def _drew_from(p: Probed, moved: Seq[snapshot.SequenceKey]) -> tuple[str, ...]:
    """The sequences that moved while ``p``'s column was probed, the default's last."""
    others = [printable(k.label) for k in moved if k.oid != p.sequence.oid]
    mine = [printable(k.label) for k in moved if k.oid == p.sequence.oid]
    return (*others, *mine)


def _may_draw(verdict: Checked) -> bool:
    """False where probing the column runs no ``nextval`` at all, so that no sequence
    can have moved: a plain default already past the highest value (nothing to insert,
    nothing to draw, unless its table rewrites inserts), or an empty table."""
    if not _judged(verdict):
        return True  # its default is evaluated once (_peek) whatever the distance
    return verdict.max_existing is not None and _distance(verdict, verdict.sequence) != 0


def _probe_column(
    session: Session,
    verdict: Checked,
    report: Report,
    mode: Mode,
    limit: int,
    at_least_once: bool = False,
    states: Mapping[snapshot.SequenceKey, SequenceState] | None = None,
) -> Probed:
    """Probe one column inside a savepoint of its own, rolled back at the end: whatever
    fails in there leaves the probe's transaction as it was. ``states``: every
    sequence's state before the probe, to start over from (a trigger may draw from
    another sequence than the default's)."""
    with session.savepoint("seqdrift_column", rollback=True):
        return _probe_here(session, verdict, report, mode, limit, at_least_once, states or {})


def _probe_here(
    session: Session,
    verdict: Checked,
    report: Report,
    mode: Mode,
    limit: int,
    at_least_once: bool,
    states: Mapping[snapshot.SequenceKey, SequenceState],
) -> Probed:
    column = verdict.column
    # the column's own walk: every k-th value where each insert draws k (inserts.py)
    seq = inserts.per_insert(column, verdict.sequence)
    judged = _judged(verdict)
    expected = _finding_for(report, verdict)
    top = verdict.max_existing if judged else _top(session, column, seq)
    if top is None:
        return _empty(verdict, mode, seq)
    target = _Target(column, seq, top, _distance(verdict, seq), limit, at_least_once)
    target = replace(target, first=verdict.next_value if judged else _peek(session, target))
    start = _read_state(session, seq)

    def start_over() -> None:
        """Back to where this column's probe began: its savepoint, every sequence."""
        # rolled back to and kept: the probe goes on in it, and _probe_column ends it
        session.run("ROLLBACK TO SAVEPOINT seqdrift_column")
        _put_back(session, states)
        _set_state(session, seq, start)

    if mode == "default":
        run = _draw(session, target)
        return _probed(verdict, mode, run, target, _disagreement(run, expected, judged))
    note = None
    try:
        try:
            run, table = _insert(session, target, expected)
        except _Unreproducible as exc:
            start_over()
            note = f"{exc}: probed one row per INSERT"
            run, table = _insert(session, target, expected, one_row=True)
    except _CannotCopy as exc:
        start_over()  # a rejected batch drew values: draw them again
        fallback = f"fell back to the default probe: {exc}"
        if isinstance(exc.__cause__, session.Error) and sqlstate(exc.__cause__) == (
            LOCK_NOT_AVAILABLE
        ):
            holders = session.lock_holders()
            fallback += f" ({'; '.join(holders)})" if holders else ""
        run = _draw(session, target)
        return _probed(
            verdict,
            "default",
            run,
            target,
            _joined(note, fallback, _disagreement(run, expected, judged)),
        )
    said = _disagreement(run, expected, judged)
    overrules = False
    if said is not None:
        run, settled, overrules = _settle(session, target, expected, run, table, start_over)
        said += f"; {settled}"
    elif not judged and run.until is None and run.one_row:
        run, said = _in_one_statement(session, target, run, table, start_over)
    decided_by = table.deciders if _decided(run.first, target) else ()
    return _probed(verdict, "insert", run, target, _joined(note, said), decided_by, overrules)


def _probed(
    verdict: Checked,
    mode: Mode,
    run: _Run,
    target: _Target,
    note: str | None,
    decided_by: tuple[str, ...] = (),
    overrules: bool = False,
) -> Probed:
    return Probed(
        verdict.column,
        verdict.sequence,
        mode,
        run.drawn,
        run.until,
        run.value,
        run.passed,
        note,
        target.first if run.first is None else run.first,
        target.top,
        decided_by,
        (),
        overrules,
    )
