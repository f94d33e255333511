"""The probe: insert past each column's highest existing value and let PostgreSQL say
whether a key collides. For test databases only: it writes, then undoes everything.

Two modes:

``insert``
    Inside a savepoint that is rolled back, copy an existing row with the
    sequence-backed column left to its default, as many times as it takes to pass the
    highest existing value. The table's *other* unique and exclusion constraints are
    dropped inside the same savepoint, so only the key under test can collide; a
    deferrable key is made ``IMMEDIATE`` there, or it would never fire. Triggers,
    defaults and constraints take part exactly as in production. A table with INSERT
    triggers or rules gets one row per INSERT statement, as an application inserts
    (a multi-row INSERT runs AFTER triggers, statement triggers and rules once all its
    rows are in, and draws values in another order); every other table gets multi-row
    INSERTs. A table with no row to copy, or whose rows cannot be copied, falls back to
    ``default`` for that table.
``default``
    Evaluate the column's real default expression (or the identity sequence) the same
    number of times and look each value up in the column.

``nextval`` is not rolled back with the savepoint: every sequence of the database is
read before the probe and put back exactly (``last_value`` and ``is_called``)
afterwards, also when the probe fails half-way. The order guarantees that a probe killed
mid-way can only leave a sequence *ahead* of where it was (harmless gaps), never behind.

A column whose probe would insert nothing and draw nothing is settled without a
statement of its own (``_settled``): a plain default (the value *is* the sequence's next
value) that the arithmetic has already proved past every existing value, on a table
without a BEFORE INSERT trigger or an INSERT rule (which could change the value stored).
That is every column of a database without drift: its probe costs the check and one
catalog query, whatever the number of tables, and reads and restores no sequence (no
``nextval`` runs). Columns with a finding, expressions the arithmetic cannot judge
(``unchecked``), and tables with triggers or rules get the real probe.

The probe never fails on a shape: where one column cannot be probed (an error that is
not a lost connection), that column gets a note saying why, and the rest is probed.
Where the insert probe and the arithmetic disagree, the probe finds out which is right
-- one row per INSERT is what an application does -- and says so (``_settle``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from psycopg import sql

from pytest_seqdrift import fixsql, snapshot
from pytest_seqdrift.checker import check
from pytest_seqdrift.db.adapters import open_session
from pytest_seqdrift.db.session import (
    LOCK_NOT_AVAILABLE,
    OBJECT_IN_USE,
    SEQUENCE_LIMIT_EXCEEDED,
    UNIQUE_VIOLATION,
    Session,
    constraint_name,
    describe,
    message_detail,
    sqlstate,
)
from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import (
    Bounds,
    Checked,
    Column,
    Finding,
    Report,
    Sequence,
    SequenceState,
    Status,
    printable,
)
from pytest_seqdrift.options import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_THRESHOLD
from pytest_seqdrift.read import block, inserts
from pytest_seqdrift.read.reader import read_sequence_states

Mode = Literal["insert", "default"]
DEFAULT_LIMIT = 10_000
_FIRST_BATCH = 16


@dataclass(frozen=True)
class Probed:
    """What the probe saw for one column."""

    column: Column
    sequence: Sequence
    mode: Mode
    drawn: int  # values drawn from the default
    inserts_until_collision: int | None  # None: no collision among the values drawn
    value: int | None  # the colliding value, where known
    passed_max: bool  # False: stopped at the limit before passing the highest existing value
    note: str | None = None  # a fallback, a disagreement with the arithmetic, or why not probed
    # the first value an insert stores (insert mode: what it stored, RETURNING, or tried
    # to store where it collided), or the default's first value (default mode)
    first_value: int | None = None
    top: int | None = None  # the highest existing value (lowest, for negative increments)
    # BEFORE INSERT row triggers (and INSERT rules) that decide the value an insert
    # stores, where it is not the default's: "name on schema.table"
    decided_by: tuple[str, ...] = ()
    drew_from: tuple[str, ...] = ()  # where ``decided_by``: the sequences its probe moved
    # the probe's answer stands instead of the arithmetic's (it disagreed, and inserting
    # one row per INSERT showed the probe right): ``ProbeReport.report`` says so
    overrules: bool = False


@dataclass
class ProbeReport:
    report: Report  # the arithmetic's report, with the probe's own collisions added
    probed: list[Probed] = field(default_factory=list)
    restored: int = 0  # sequence moves put back (after each probed column, and at the end)

    @property
    def disagreements(self) -> list[Probed]:
        return [p for p in self.probed if p.note and "disagree" in p.note]


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
    with open_session(conn) as session:
        return _probe(session, mode, limit, schemas, exclude_tables, threshold, lock_timeout_ms)


def _probe(
    session: Session,
    mode: Mode,
    limit: int,
    schemas: Iterable[str] | None,
    exclude_tables: Seq[str],
    threshold: float,
    lock_timeout_ms: int,
) -> ProbeReport:
    report = check(
        session,
        schemas=schemas,
        exclude_tables=exclude_tables,
        threshold=threshold,
        lock_timeout_ms=lock_timeout_ms,
    )
    result = ProbeReport(report)
    targets = [c for c in report.checked if c.column.unique and c.status != "duplicates"]
    clean = [i for i, verdict in enumerate(targets) if _clean(verdict, report)]
    paths = _insert_paths(session, targets, clean) if mode == "insert" else {}
    settled = _settled(targets, clean, mode, paths)
    if len(settled) == len(targets):  # nothing to insert, nothing to draw: no nextval runs
        result.probed = [settled[i] for i in range(len(targets))]
        return result
    # clean columns whose table has a trigger or rule that may store another value than
    # the default's are not settled: the insert probe inserts once even there
    rewriting = {i for i, (rewrites, _, _) in paths.items() if rewrites}
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
            result.restored += _restore(session, before, lock_timeout_ms)
    _merge(result)
    return result


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
        note=f"could not be probed: {describe(exc)}; the arithmetic's verdict stands",
        first_value=verdict.next_value,
        top=verdict.max_existing,
    )


def _drew_from(p: Probed, moved: Seq[snapshot.SequenceKey]) -> tuple[str, ...]:
    """The sequences that moved while ``p``'s column was probed, the default's last."""
    others = [printable(k.label) for k in moved if k.oid != p.sequence.oid]
    mine = [printable(k.label) for k in moved if k.oid == p.sequence.oid]
    return (*others, *mine)


def _judged(verdict: Checked) -> bool:
    """The arithmetic judged the column: a plain default (the value is the sequence's
    next value) of a type it compares, so that the verdict's next value and max are
    facts. A plain default it did not judge (a text column, a domain over a domain:
    ``unchecked``, with no max) is probed like an expression."""
    return verdict.column.plain_default and verdict.status != "unchecked"


def _clean(verdict: Checked, report: Report) -> bool:
    """The probe of this column would insert nothing and draw nothing: its default is
    the sequence's next value itself, the arithmetic found no collision, and that next
    value is already past the highest existing value (``_Target.batches`` is empty)."""
    return (
        _judged(verdict)
        and verdict.max_existing is not None
        and _distance(verdict, inserts.per_insert(verdict.column, verdict.sequence)) == 0
        and _finding_for(report, verdict) is None
    )


# For each column (table oid, column name) that may be settled without an insert:
# ``rewrites``, whether an insert into the table could store something else than the
# default's value -- a BEFORE INSERT row trigger or an INSERT rule on the table or on
# any table under it (partitions, to which inserts are routed; inheritance children
# too, to err on the safe side); and what ``_prepare_table`` would have found: whether
# another column can be copied (``_COPYABLE``). Whether a key counts is the check's to
# say (``Column.keys``). Catalogs only: it locks no table.
_INSERT_PATHS = """
WITH RECURSIVE given AS (
    SELECT w.i, w.table_oid,
           (SELECT a.attnum FROM pg_attribute a  -- a subquery: an index lookup each
            WHERE a.attrelid = w.table_oid AND a.attname = w.column_name
              AND NOT a.attisdropped) AS attnum
    FROM unnest(%s::oid[], %s::text[]) WITH ORDINALITY AS w(table_oid, column_name, i)
), wanted AS (
    SELECT * FROM given WHERE attnum IS NOT NULL
), tree (i, relid) AS (
    SELECT i, table_oid FROM wanted
    UNION
    SELECT t.i, h.inhrelid FROM tree t JOIN pg_inherits h ON h.inhparent = t.relid
), rewritten AS (
    SELECT t.i FROM tree t
    WHERE t.relid IN (SELECT g.tgrelid FROM pg_trigger g  -- a ROW, BEFORE, INSERT trigger
                      WHERE NOT g.tgisinternal AND g.tgtype::int & 7 = 7)
       OR t.relid IN (SELECT r.ev_class FROM pg_rewrite r WHERE r.ev_type = '3')  -- ON INSERT
)
SELECT w.i::int,
       w.i IN (SELECT i FROM rewritten) AS rewrites,
       EXISTS (
           SELECT FROM pg_attribute x
           WHERE x.attrelid = w.table_oid AND x.attnum > 0 AND NOT x.attisdropped
             AND x.attgenerated = '' AND x.attidentity <> 'a' AND x.attnum <> w.attnum
       ) AS copyable
FROM wanted w
"""


def _insert_paths(
    session: Session, targets: Seq[Checked], indices: Seq[int]
) -> dict[int, tuple[bool, bool, bool]]:
    """For ``targets[indices]``, by index, in one catalog query: whether its table (or a
    partition) has a BEFORE INSERT row trigger or an INSERT rule (an insert may store
    another value than the default's), whether a unique key covers the column, and
    whether the table has another column a copied row can carry."""
    if not indices:
        return {}
    oids = [targets[i].column.table_oid for i in indices]
    with session.transaction():  # never leave a driver's implicit transaction open
        rows = session.run(_INSERT_PATHS, [oids, [targets[i].column.column for i in indices]])
    # a key counts as the check counts it (keys.py: partial, expression, exclusion and
    # partitions' own keys too). A column drawn together with others from its sequence
    # is not settled here: its copies carry none of them (``_prepare_table``)
    out = {}
    for n, rewrites, copyable in rows:
        column = targets[indices[n - 1]].column
        if not column.siblings:
            out[indices[n - 1]] = (rewrites, bool(column.keys), copyable)
    return out


def _settled(
    targets: Seq[Checked],
    clean: Seq[int],
    mode: Mode,
    paths: Mapping[int, tuple[bool, bool, bool]],
) -> dict[int, Probed]:
    """What the probe would say of each clean column (``_clean``), by its index in
    ``targets``, without probing it: no value drawn, no collision, past the max. In
    ``insert`` mode only where no trigger or rule can change the value an insert
    stores, and with the note of the fallback ``_prepare_table`` would have taken -- in
    ``_insert_paths`` (one catalog query for all of them). ``_probe_column`` says the same
    of each one, in about eight round trips (tests/test_probe.py compares the two)."""
    notes: dict[int, str | None] = dict.fromkeys(clean)
    if mode == "insert":
        notes = {}
        for i, (rewrites, covered, copyable) in paths.items():
            if rewrites:
                continue  # an insert may store another value: the real probe
            reason = None
            if not covered:
                reason = "no unique key covers the column"
            elif not copyable:
                reason = "the table has no other column to copy"
            notes[i] = reason and f"fell back to the default probe: {reason}"
    return {
        i: Probed(
            targets[i].column,
            targets[i].sequence,
            mode if note is None else "default",
            0,
            None,
            None,
            passed_max=True,
            note=note,
            first_value=targets[i].next_value,
            top=targets[i].max_existing,
        )
        for i, note in notes.items()
    }


def _restore(
    session: Session, states: Mapping[snapshot.SequenceKey, SequenceState], lock_timeout_ms: int
) -> int:
    """The final restore, once the probe's savepoint or transaction is rolled back:
    every sequence that moved is put back (usually none: each probed column was already
    followed by a ``_put_back``; this one is for a probe that failed half-way). Within
    the lock timeout: a sequence a migration holds (ALTER SEQUENCE) must not hang the
    test run; it could not have been drawn from either."""
    timeout = [f"{int(lock_timeout_ms)}ms"]
    if session.in_transaction:
        # the caller's transaction: its settings are its own, back after the savepoint
        session.run("SAVEPOINT seqdrift_restore")
        try:
            session.run("SELECT set_config('lock_timeout', %s, true)", timeout)
            return len(_put_back(session, states))
        finally:
            if not session.broken:
                session.run("ROLLBACK TO SAVEPOINT seqdrift_restore")
                session.run("RELEASE SAVEPOINT seqdrift_restore")
    with session.transaction():
        session.run("SELECT set_config('lock_timeout', %s, true)", timeout)
        # Our own transaction: its COMMIT need not wait for a WAL flush (a setval
        # assigns an xid, so a synchronous commit would wait). What a crash can lose
        # is this restore's WAL; recovery then replays the sequences' records that did
        # reach the disk, and every one the probe wrote moves a sequence to a state at
        # or ahead of the recorded one (``nextval`` only moves forward; each setval of
        # the probe goes back to a state read during the probe, or to the record
        # itself). A lost restore leaves a sequence ahead: gaps, never a collision.
        session.run("SELECT set_config('synchronous_commit', 'off', true)")
        return len(_put_back(session, states))


# Put back every sequence of ``states`` that moved, in one statement: the names travel
# as parameters (never in the text), and each setval takes its sequence by name, as
# recorded.
_SETVAL_ALL = """
SELECT setval(format('%%I.%%I', u.nsp, u.name)::regclass, u.lv, u.ic)
FROM unnest(%s::text[], %s::text[], %s::int8[], %s::bool[]) AS u(nsp, name, lv, ic)
"""


def _put_back(
    session: Session, states: Mapping[snapshot.SequenceKey, SequenceState]
) -> list[snapshot.SequenceKey]:
    """``snapshot.restore`` in two round trips: every recorded sequence is read (the
    check's read block: no XML, its locks let go) and those that moved are put back
    exactly; returns them. Sequences dropped since, or no longer readable, are left
    alone, as ``snapshot.restore`` leaves them. Where the setval fails (a sequence the
    role cannot ``setval``), ``snapshot.restore`` does it again and says which one."""
    if not states:
        return []
    keys = list(states)
    now = read_sequence_states(session, keys)
    moved = [k for k in keys if not isinstance(now[k.oid], ReadFailure) and now[k.oid] != states[k]]
    if not moved:
        return []
    params = [
        [k.schema for k in moved],
        [k.name for k in moved],
        [states[k].last_value for k in moved],
        [states[k].is_called for k in moved],
    ]
    (rows,) = session.batch([(_SETVAL_ALL, params)])
    if isinstance(rows, ReadFailure):
        snapshot.restore(session, states)
    return moved


def _may_draw(verdict: Checked) -> bool:
    """False where probing the column runs no ``nextval`` at all, so that no sequence
    can have moved: a plain default already past the highest value (nothing to insert,
    nothing to draw, unless its table rewrites inserts), or an empty table."""
    if not _judged(verdict):
        return True  # its default is evaluated once (_peek) whatever the distance
    return verdict.max_existing is not None and _distance(verdict, verdict.sequence) != 0


def _finding_for(report: Report, verdict: Checked) -> Finding | None:
    for f in report.findings:
        if f.kind == "collision" and f.column == verdict.column:
            return f
    return None


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
    session.run("SAVEPOINT seqdrift_column")
    try:
        return _probe_here(session, verdict, report, mode, limit, at_least_once, states or {})
    finally:
        if not session.broken:
            session.run("ROLLBACK TO SAVEPOINT seqdrift_column")
            session.run("RELEASE SAVEPOINT seqdrift_column")


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
        return Probed(
            column, seq, mode, 0, None, None, passed_max=True, note="empty: nothing to probe"
        )
    target = _Target(column, seq, top, _distance(verdict, seq), limit, at_least_once)
    target = replace(target, first=verdict.next_value if judged else _peek(session, target))
    start = _state(session, seq)

    def start_over() -> None:
        """Back to where this column's probe began: its savepoint, every sequence."""
        session.run("ROLLBACK TO SAVEPOINT seqdrift_column")
        _put_back(session, states)
        _setval(session, seq, start)

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


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _decided(first: int | None, target: _Target) -> bool:
    """The first insert stored (``first``) another value than the default's: something
    else decides what an insert stores."""
    return first is not None and target.first is not None and first != target.first


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


def _listed(names: Seq[str]) -> str:
    return ", ".join(names)


class _CannotCopy(Exception):
    pass


class _Unreproducible(_CannotCopy):
    pass


class _NotProbed(Exception):
    """The column cannot be probed at all: the note says why."""


@dataclass(frozen=True)
class _Run:
    """What one pass of the probe over a column saw."""

    until: int | None  # inserts that went in before the one that collided; None: no collision
    value: int | None  # the colliding value, where known
    drawn: int  # values drawn from the default (inserts made or tried)
    passed: bool  # False: stopped at the limit before passing the highest existing value
    first: int | None = None  # the value the first insert stored (or tried to store)
    stored: tuple[int | None, ...] = ()  # the first few values the inserts stored
    one_row: bool = False  # one row per INSERT statement


@dataclass(frozen=True)
class _Target:
    column: Column
    sequence: Sequence
    top: int  # the highest existing value (the lowest, for a negative increment)
    distance: int | None  # plain defaults: values it takes to pass ``top``; else unknown
    limit: int
    at_least_one: bool = False  # insert at least once, even with nothing left to pass
    first: int | None = None  # the default's first value

    def passes(self, value: Any) -> bool:
        number = _as_int(value)
        if number is None:
            return False
        return number > self.top if self.sequence.increment > 0 else number < self.top

    def batches(self, done: int = 0) -> list[int]:
        """One batch of exactly the distance when it is known; else growing batches,
        ``done`` values drawn already."""
        if self.distance is not None:
            n = max(self.distance, 1 if self.at_least_one else 0)
            return [min(n, self.limit)] if n > 0 else []
        sizes, size = [], _FIRST_BATCH
        while done < self.limit:
            sizes.append(min(size, self.limit - done))
            done += sizes[-1]
            size *= 2
        return sizes

    def passed_after(self, drawn: int) -> bool:
        return self.distance is not None and drawn >= self.distance


_INTEGER = re.compile(r"[-+]?[0-9]+")


def _as_int(value: Any) -> int | None:
    """A value of the column as an integer: None where it is not one (NULL, a text that
    is no integer)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _numeric(column: Column) -> bool:
    """The column holds numbers (else text, or a type the catalog does not resolve, such
    as a domain over a domain: its values are compared as text)."""
    return column.type_range is not None or column.data_type == "numeric"


def _distance(verdict: Checked, seq: Sequence) -> int | None:
    """For a plain default: how many values it takes to pass the highest existing one."""
    if not _judged(verdict) or verdict.max_existing is None:
        return None
    if verdict.next_value is None:
        return 0
    return max(0, (verdict.max_existing - verdict.next_value) // seq.increment + 1)


def _top(session: Session, column: Column, seq: Sequence) -> int | None:
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


def _counted(column: Column, joiner: str = "WHERE") -> sql.Composable:
    """`` WHERE (...)``: only the rows the column's keys can collide with (keys.py: a
    partial key's predicate, NOT NULL for the rest of a key, the partitions with a key
    of their own); nothing where every row counts."""
    if not column.row_filter:
        return sql.SQL("")
    return sql.SQL(" {} ({})").format(sql.SQL(joiner), sql.SQL(column.row_filter))


def _insert(
    session: Session, target: _Target, expected: Finding | None, one_row: bool | None = None
) -> tuple[_Run, _Table]:
    """Copy a row with the column left to its default until past the max: in multi-row
    INSERTs, or (``one_row``; by default where the table has INSERT triggers or rules)
    one row per INSERT statement."""
    table, insert = _prepared(session, target, expected)
    if one_row is None:
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
            start = _state(session, target.sequence)
            session.run("SAVEPOINT seqdrift_batch_insert")
            try:
                values = [row[0] for row in session.run(insert(n))]
            except session.Error as exc:
                if session.broken:
                    raise
                session.run("ROLLBACK TO SAVEPOINT seqdrift_batch_insert")
                _reject(sqlstate(exc), constraint_name(exc), describe(exc), table)
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
    # key such as (id, region) it carries the rest of the key that makes the copy collide
    # values go in as literals, never as parameters: a parameter makes the driver look
    # for placeholders in the whole text, names included ("100% %s" is a table name)
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
        raise _CannotCopy(f"one row per INSERT takes a PL/pgSQL block: {describe(exc)}") from exc
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
    return _state(session, target.sequence)[0] if target.column.plain_default else None


def _state(session: Session, seq: Sequence) -> tuple[int, bool]:
    ((last_value, is_called),) = session.run(
        sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq.schema, seq.name))
    )
    return int(last_value), bool(is_called)


def _setval(session: Session, seq: Sequence, state: tuple[int, bool]) -> None:
    session.run(
        sql.SQL("SELECT setval({}::regclass, {}, {})").format(
            sql.Literal(seq.qualified), sql.Literal(state[0]), sql.Literal(state[1])
        )
    )


def _ran_out(exc: BaseException) -> bool:
    """nextval past MAXVALUE (MINVALUE) of a sequence without CYCLE."""
    return sqlstate(exc) == SEQUENCE_LIMIT_EXCEEDED


def _locate(
    session: Session,
    target: _Target,
    start: tuple[int, bool],
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
    distance, where one insert at a time took three round trips per value. ``hint``,
    the arithmetic's count of inserts that succeed, is tried first (that many rows, then
    one): where the arithmetic is right, two inserts find the collision. Where no chunk
    fails, the multi-row INSERT drew its values in another order than smaller ones do:
    ``_Unreproducible``."""
    seq = target.sequence
    _setval(session, seq, start)
    state: tuple[int, bool] | None = start  # the sequence's state before the next chunk
    done, bound = 0, n  # ``done`` inserts went in; the one that fails is before ``bound``
    first: int | None = None
    guided = [] if hint is None or not 0 <= hint < n else [hint, 1] if hint else [1]
    while done < bound:
        k = min(guided.pop(0) if guided else max(1, (bound - done) // 2), bound - done)
        if k > 1 and state is None:
            state = _state(session, seq)
        session.run("SAVEPOINT seqdrift_one_insert")
        try:
            rows = session.run(insert(k))
        except session.Error as exc:
            if sqlstate(exc) not in (UNIQUE_VIOLATION, SEQUENCE_LIMIT_EXCEEDED):
                raise
            session.run("ROLLBACK TO SAVEPOINT seqdrift_one_insert")
            if k > 1 and state is not None:  # the failing insert is in this chunk: halve it
                _setval(session, seq, state)
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


# The table's unique and exclusion constraints and unique indexes. For a partitioned
# table, the names of the partitions' indexes attached to each one, so that a violation
# reported by a partition is recognised as the key's.
_TABLE_KEYS = """
WITH RECURSIVE keys AS (
    SELECT i.indexrelid, i.indnkeyatts, i.indisprimary, c.conname::text AS conname,
           coalesce(c.condeferrable, false) AS deferrable
    FROM pg_index i
    LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
    WHERE i.indrelid = %(table)s AND (i.indisunique OR c.contype = 'x')
), attached (root, indexrelid) AS (
    SELECT indexrelid, indexrelid FROM keys
    UNION ALL
    SELECT a.root, h.inhrelid FROM attached a JOIN pg_inherits h ON h.inhparent = a.indexrelid
)
SELECT k.conname, ic.relname::text,
       ARRAY(SELECT x.relname::text FROM attached a JOIN pg_class x ON x.oid = a.indexrelid
             WHERE a.root = k.indexrelid) AS names,
       k.deferrable
FROM keys k JOIN pg_class ic ON ic.oid = k.indexrelid
ORDER BY k.indnkeyatts, k.indisprimary DESC, k.indexrelid
"""

_COPYABLE = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = '' AND a.attidentity <> 'a' AND a.attnum <> %s
ORDER BY a.attnum
"""

# What runs on an INSERT into the table or into a table under it (partitions, to
# which rows are routed; inheritance children too, to err on the safe side): triggers
# of the user's (not the internal ones of foreign keys), and rules. ``decides``: a
# BEFORE ROW trigger or a rule, which may change the value stored; every other one (and
# every rule) runs statements of its own, after the row or once per statement.
# ``instead``: a DO INSTEAD rule of the table itself, which does another INSERT.
_HOOKS = """
WITH RECURSIVE tree (relid) AS (
    SELECT %(table)s::oid
    UNION
    SELECT h.inhrelid FROM tree t JOIN pg_inherits h ON h.inhparent = t.relid
)
SELECT g.tgtype::int & 67 = 3 AS decides, g.tgtype::int & 67 <> 3 AS hooks, false AS instead,
       format('trigger %%I on %%I.%%I (%%s INSERT%%s)', g.tgname, n.nspname, c.relname,
              CASE WHEN g.tgtype::int & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END,
              CASE WHEN g.tgtype::int & 1 = 1 THEN '' ELSE ', per statement' END) AS name
FROM tree t JOIN pg_trigger g ON g.tgrelid = t.relid
JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND g.tgtype::int & 4 = 4 AND g.tgenabled <> 'D'
UNION ALL
SELECT true, true, r.is_instead AND r.ev_class = %(table)s::oid,
       format('rule %%I on %%I.%%I', r.rulename, n.nspname, c.relname)
FROM tree t JOIN pg_rewrite r ON r.ev_class = t.relid AND r.ev_type = '3' AND r.ev_enabled <> 'D'
JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 4
"""


@dataclass(frozen=True)
class _Table:
    """A table made ready for the insert probe (``_prepare_table``)."""

    key: frozenset[str]  # the names a violation of the key under test can carry
    copyable: tuple[str, ...]  # the columns a copied row carries
    deferrable: str | None = None  # the key's constraint, where it is deferrable
    deciders: tuple[str, ...] = ()  # BEFORE INSERT row triggers and rules: may change the value
    hooks: tuple[str, ...] = ()  # AFTER and statement triggers, and rules: run statements
    replaced_by: tuple[str, ...] = ()  # DO INSTEAD rules: the INSERT is another one


def _prepare_table(session: Session, column: Column) -> _Table:
    """Drop, inside the current savepoint, every unique or exclusion constraint and
    unique index of the table but the key under test. Says what the probe needs to know
    of the table."""
    ((attnum,),) = session.run(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s",
        [column.table_oid, column.column],
    )
    rows = session.run(_TABLE_KEYS, {"table": column.table_oid})
    deferrable: str | None = None
    table = sql.Identifier(column.schema, column.table)
    # the keys the check counts (keys.py) are the key under test, on the table or on
    # its partitions; every other unique or exclusion key of the table is dropped
    counted = {k.name for k in column.keys}
    key = set(counted)
    for conname, index_name, names, can_defer in rows:
        # (a parent's index is kept where one of its partitions' is counted: dropping it
        # drops theirs)
        if conname in counted or counted & set(names):
            key |= set(names)
            if can_defer and deferrable is None:
                deferrable = conname  # SET CONSTRAINTS on it reaches its partitions' too
            continue
        if conname is not None:
            _alter(
                session,
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} CASCADE").format(
                    table, sql.Identifier(conname)
                ),
            )
        else:
            _alter(
                session,
                sql.SQL("DROP INDEX {} CASCADE").format(sql.Identifier(column.schema, index_name)),
            )
    if not key:
        raise _CannotCopy("no unique key covers the column")
    # not the columns drawn from the same sequence: each insert draws for them too
    copyable = [
        name
        for (name,) in session.run(_COPYABLE, [column.table_oid, attnum])
        if name not in column.siblings
    ]
    if not copyable:
        raise _CannotCopy("the table has no other column to copy")
    hooks = session.run(_HOOKS, {"table": column.table_oid})
    return _Table(
        frozenset(key),
        tuple(copyable),
        deferrable,
        tuple(printable(name) for decides, _, _, name in hooks if decides),
        tuple(printable(name) for _, runs, _, name in hooks if runs),
        tuple(printable(name) for _, _, instead, name in hooks if instead),
    )


def _immediate(session: Session, column: Column, constraint: str | None) -> None:
    """A deferrable key fires at COMMIT, or once made IMMEDIATE: inside the savepoint
    the probe rolls back it would never fire.

    ``SET CONSTRAINTS`` lasts until the transaction ends. PostgreSQL saves the modes as
    they were at the level of the (sub)transaction it runs in, and puts them back when
    that level is rolled back; run in a savepoint that is then released, the saved modes
    go with it and the new mode stays for good (trigger.c, AfterTriggerSetState and
    AfterTriggerEndSubXact). So it runs right here, at the level of the column's
    savepoint, never in a savepoint of its own: that savepoint's rollback gives the
    caller's transaction back its own modes, whatever they were (DEFERRED, or IMMEDIATE
    since a SET CONSTRAINTS of its own), which setting them back by hand could not
    know. A key whose pending checks fail now (the caller's transaction holds a
    duplicate it means to remove before COMMIT) cannot be made IMMEDIATE: its table is
    probed by evaluating the default."""
    if constraint is None:
        return
    try:
        session.run(
            sql.SQL("SET CONSTRAINTS {} IMMEDIATE").format(
                sql.Identifier(column.schema, constraint)
            )
        )
    except session.Error as exc:
        if session.broken:
            raise
        raise _CannotCopy(
            f"the deferrable key {constraint} cannot be made immediate: {describe(exc)}"
        ) from exc


def _alter(session: Session, statement: sql.Composed) -> None:
    """One of ``_prepare_table``'s statements. Where the table cannot be altered now --
    another session's open transaction holds a lock on it (often the test's own, on a
    connection of its own), or the caller's transaction has deferred checks pending on
    it that fail -- the column is probed without altering anything instead."""
    try:
        session.run(statement)
    except session.Error as exc:
        if session.broken or sqlstate(exc) not in (LOCK_NOT_AVAILABLE, OBJECT_IN_USE):
            raise
        reason = describe(exc)
        if sqlstate(exc) == LOCK_NOT_AVAILABLE:
            reason = "the table is locked by another session"
        raise _CannotCopy(reason) from exc


def _default(target: _Target) -> sql.Composable:
    """The column's default expression, as the server itself deparsed it, or for an
    identity column the identity sequence's nextval."""
    if target.column.source == "default" and target.column.default_expr:
        return sql.SQL(target.column.default_expr)
    return sql.SQL("nextval({}::regclass)").format(sql.Literal(target.sequence.qualified))


def _peek(session: Session, target: _Target) -> int | None:
    """The value the column's default yields next, leaving its sequence where it was.
    None: the default yields NULL (or no integer), or its sequence has run out."""
    start = _state(session, target.sequence)
    values, _ = _values(session, target, _values_query(target), 1)
    _setval(session, target.sequence, start)
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
    start = _state(session, target.sequence)
    session.run("SAVEPOINT seqdrift_draw")
    ran_out = False
    try:
        rows = session.run(query(n))
    except session.Error as exc:
        if not _ran_out(exc):
            raise
        session.run("ROLLBACK TO SAVEPOINT seqdrift_draw")
        _setval(session, target.sequence, start)
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


def _merge(result: ProbeReport) -> None:
    """Add the collisions only the probe saw (defaults or triggers the arithmetic
    cannot judge), and where the probe overrules the arithmetic, put its answer in
    place of the arithmetic's."""
    findings, checked = result.report.findings, result.report.checked
    for p in result.probed:
        at = next(
            (i for i, f in enumerate(findings) if f.kind == "collision" and f.column == p.column),
            None,
        )
        known = None if at is None else findings[at]
        if not p.overrules and (known is not None or p.inserts_until_collision is None):
            continue
        if p.inserts_until_collision is None:  # overruled: no insert collides
            assert at is not None
            del findings[at]
            others = any(f.column == p.column for f in findings)
            _verdict(checked, p, "finding" if others else "ok", p.note)
            continue
        # the arithmetic's setval still fixes what it found, unless a trigger decides
        fix = known.fix_sql if known is not None and not p.decided_by else _advice(p)
        found = Finding(
            kind="collision",
            column=p.column,
            sequence=p.sequence,
            next_value=p.first_value,
            first_collision=p.value,
            inserts_until_collision=p.inserts_until_collision,
            max_existing=p.top,
            fix_sql=fix,
            note=_joined(_unjudged(p.column), p.note),
        )
        if at is None:
            findings.append(found)
        else:
            findings[at] = found
        _verdict(checked, p, "finding", "collision seen by the probe")


def _unjudged(column: Column) -> str | None:
    """Why the check left the column to the probe, said of a collision the probe saw:
    the trigger, rule or expression that decides what an insert stores."""
    if column.unjudged is None:
        return None
    why = re.split(r"[:,]? (?:which )?the arithmetic cannot judge", column.unjudged)[0]
    return f"found by inserting: {why}"


def _verdict(checked: list[Checked], p: Probed, status: Status, note: str | None) -> None:
    for i, verdict in enumerate(checked):
        if verdict.column == p.column:
            checked[i] = replace(verdict, status=status, note=note)


def _advice(p: Probed) -> str:
    """A collision the arithmetic could not foresee: where the value is the sequence's
    next value itself, the setval that moves it past the existing values; else say what
    to do."""
    what = p.column.default_expr or "its default"
    if p.decided_by:
        moved = f" (the probe saw {', '.join(p.drew_from)} move)" if p.drew_from else ""
        return fixsql.comment(
            f"{p.column.label}: {_listed(p.decided_by)} decides the value an insert stores "
            f"(the first stores {p.first_value}), not {what}: a setval of "
            f"{p.sequence.qualified} is not the fix as such.",
            f"Make what the trigger takes its values from{moved} yield values past the "
            f"existing ones (up to {p.top}).",
        )
    if (p.column.plain_default or p.column.source == "trigger") and p.top is not None:
        # the value is the sequence's next one (a trigger that fills the column from it,
        # or draws from it in between, only moves it forward): past the max is the fix
        target = fixsql.collision_target(p.column, p.sequence, Bounds(None, None, p.top))
        if target is not None:
            return fixsql.setval_at_least(p.sequence, target)
    takes = f"takes {what}" if p.column.default_expr else "is filled by a trigger"
    return fixsql.comment(
        f"{p.column.label} {takes} (or a trigger sets it): move "
        f"{p.sequence.qualified} forward, with setval, until it yields values past the "
        "existing ones"
    )
