"""The probe: insert past each column's highest existing value and let PostgreSQL say
whether a key collides. For test databases only: it writes, then undoes everything.

Two modes:

``insert``
    Inside a savepoint that is rolled back, copy an existing row with the
    sequence-backed column left to its default, as many times as it takes to pass the
    highest existing value. The table's *other* unique and exclusion constraints are
    dropped inside the same savepoint, so only the key under test can collide. Triggers,
    defaults and constraints take part exactly as in production. A table with no row to
    copy, or whose rows cannot be copied, falls back to ``default`` for that table.
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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from psycopg import sql

from . import catalog, drift, fixsql, snapshot
from .api import DEFAULT_LOCK_TIMEOUT_MS, check, read_sequence_states
from .connections import (
    LOCK_NOT_AVAILABLE,
    OBJECT_IN_USE,
    SEQUENCE_LIMIT_EXCEEDED,
    UNIQUE_VIOLATION,
    CannotCheck,
    Session,
    constraint_name,
    describe,
    message_detail,
    open_session,
    sqlstate,
)
from .model import Checked, Column, Finding, Report, Sequence, SequenceState

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
    note: str | None = None  # a fallback, or a disagreement with the arithmetic
    first_value: int | None = None  # the first value the column's default yields
    top: int | None = None  # the highest existing value (lowest, for negative increments)


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
    threshold: float = drift.DEFAULT_THRESHOLD,
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
                result.probed.append(_probe_column(session, verdict, report, mode, limit, once))
                # every column is probed from the states the arithmetic judged: a
                # sequence shared with (or drawn by a trigger of) a column probed
                # before must not start where that probe left it
                if _may_draw(verdict) or i in rewriting:
                    result.restored += _put_back(session, before)
    finally:
        if not session.broken:  # a lost connection: its error is the one to raise
            result.restored += _restore(session, before, lock_timeout_ms)
    _merge(result)
    return result


def _clean(verdict: Checked, report: Report) -> bool:
    """The probe of this column would insert nothing and draw nothing: its default is
    the sequence's next value itself, the arithmetic found no collision, and that next
    value is already past the highest existing value (``_Target.batches`` is empty)."""
    return (
        verdict.column.plain_default
        and verdict.max_existing is not None
        and _distance(verdict, verdict.sequence) == 0
        and _finding_for(report, verdict) is None
    )


# For each column (table oid, column name) that may be settled without an insert:
# ``rewrites``, whether an insert into the table could store something else than the
# default's value -- a BEFORE INSERT row trigger or an INSERT rule on the table or on
# any table under it (partitions, to which inserts are routed; inheritance children
# too, to err on the safe side); and what ``_prepare_table`` would have found: whether a
# unique key covers the column (``_TABLE_KEYS``' ``covers``) and whether another column
# can be copied (``_COPYABLE``). Catalogs only: it locks no table.
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
           SELECT FROM pg_index i
           WHERE i.indrelid = w.table_oid AND i.indisunique AND i.indpred IS NULL
             AND w.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
       ) AS covered,
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
    return {
        indices[n - 1]: (rewrites, covered, copyable) for n, rewrites, covered, copyable in rows
    }


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
            return _put_back(session, states)
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
        return _put_back(session, states)


# Put back every sequence of ``states`` that moved, in one statement: the names travel
# as parameters (never in the text), and each setval takes its sequence by name, as
# recorded.
_SETVAL_ALL = """
SELECT setval(format('%%I.%%I', u.nsp, u.name)::regclass, u.lv, u.ic)
FROM unnest(%s::text[], %s::text[], %s::int8[], %s::bool[]) AS u(nsp, name, lv, ic)
"""


def _put_back(session: Session, states: Mapping[snapshot.SequenceKey, SequenceState]) -> int:
    """``snapshot.restore`` in two round trips: every recorded sequence is read (the
    check's read block: no XML, its locks let go) and those that moved are put back
    exactly; returns how many. Sequences dropped since, or no longer readable, are left
    alone, as ``snapshot.restore`` leaves them. Where the setval fails (a sequence the
    role cannot ``setval``), ``snapshot.restore`` does it again and says which one."""
    if not states:
        return 0
    keys = list(states)
    now = read_sequence_states(session, keys)
    moved = [k for k in keys if not isinstance(now[k.oid], CannotCheck) and now[k.oid] != states[k]]
    if not moved:
        return 0
    params = [
        [k.schema for k in moved],
        [k.name for k in moved],
        [states[k].last_value for k in moved],
        [states[k].is_called for k in moved],
    ]
    (rows,) = session.batch([(_SETVAL_ALL, params)])
    if isinstance(rows, CannotCheck):
        return snapshot.restore(session, states)
    return len(rows)


def _may_draw(verdict: Checked) -> bool:
    """False where probing the column runs no ``nextval`` at all, so that no sequence
    can have moved: a plain default already past the highest value (nothing to insert,
    nothing to draw, unless its table rewrites inserts), or an empty table."""
    if not verdict.column.plain_default:
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
) -> Probed:
    column, seq = verdict.column, verdict.sequence
    expected = _finding_for(report, verdict)
    top = verdict.max_existing if column.plain_default else _top(session, column, seq)
    if top is None:
        return Probed(
            column, seq, mode, 0, None, None, passed_max=True, note="empty: nothing to probe"
        )
    target = _Target(column, seq, top, _distance(verdict, seq), limit, at_least_once)
    first_value = verdict.next_value if column.plain_default else _peek(session, target)
    start = _state(session, seq)
    note = None
    used: Mode = mode
    session.run("SAVEPOINT seqdrift_column")
    try:
        if mode == "insert":
            try:
                probed = _insert(session, target, expected)
            except _CannotCopy as exc:
                session.run("ROLLBACK TO SAVEPOINT seqdrift_column")
                _setval(session, seq, start)  # a rejected batch drew values: draw them again
                used, note = "default", f"fell back to the default probe: {exc}"
                if isinstance(exc.__cause__, session.Error) and sqlstate(exc.__cause__) == (
                    LOCK_NOT_AVAILABLE
                ):
                    holders = session.lock_holders()
                    note += f" ({'; '.join(holders)})" if holders else ""
                probed = _draw(session, target)
        else:
            probed = _draw(session, target)
    finally:
        if not session.broken:
            session.run("ROLLBACK TO SAVEPOINT seqdrift_column")
            session.run("RELEASE SAVEPOINT seqdrift_column")
    until, value, drawn, passed = probed
    if column.plain_default:
        arith = expected.inserts_until_collision if expected else None
        in_reach = arith is not None and arith < drawn
        if (until is not None or in_reach) and until != arith:
            said = "no collision" if arith is None else f"a collision after {arith} inserts"
            saw = "none" if until is None else f"one after {until}"
            note = (note + "; " if note else "") + (
                f"the probe and the arithmetic disagree: the arithmetic says {said}, "
                f"the probe saw {saw} (a trigger or rule changes the inserted value?)"
            )
    return Probed(column, seq, used, drawn, until, value, passed, note, first_value, top)


class _CannotCopy(Exception):
    pass


_Outcome = tuple[int | None, int | None, int, bool]  # until, value, drawn, passed_max


@dataclass(frozen=True)
class _Target:
    column: Column
    sequence: Sequence
    top: int  # the highest existing value (the lowest, for a negative increment)
    distance: int | None  # plain defaults: values it takes to pass ``top``; else unknown
    limit: int
    at_least_one: bool = False  # insert at least once, even with nothing left to pass

    def passes(self, value: int) -> bool:
        return value > self.top if self.sequence.increment > 0 else value < self.top

    def batches(self) -> list[int]:
        """One batch of exactly the distance when it is known; else growing batches."""
        if self.distance is not None:
            n = max(self.distance, 1 if self.at_least_one else 0)
            return [min(n, self.limit)] if n > 0 else []
        sizes, size, done = [], _FIRST_BATCH, 0
        while done < self.limit:
            sizes.append(min(size, self.limit - done))
            done += sizes[-1]
            size *= 2
        return sizes

    def passed_after(self, drawn: int) -> bool:
        return self.distance is not None and drawn >= self.distance


def _distance(verdict: Checked, seq: Sequence) -> int | None:
    """For a plain default: how many values it takes to pass the highest existing one."""
    if not verdict.column.plain_default or verdict.max_existing is None:
        return None
    if verdict.next_value is None:
        return 0
    return max(0, (verdict.max_existing - verdict.next_value) // seq.increment + 1)


def _top(session: Session, column: Column, seq: Sequence) -> int | None:
    agg = sql.SQL("max" if seq.increment > 0 else "min")
    ((top,),) = session.run(
        sql.SQL("SELECT {}({}) FROM {}").format(
            agg, sql.Identifier(column.column), catalog.relation(column)
        )
    )
    return None if top is None else int(top)


def _insert(session: Session, target: _Target, expected: Finding | None) -> _Outcome:
    """Copy a row with the column left to its default until past the max."""
    column = target.column
    key_names, copyable = _prepare_table(session, column)
    col = sql.Identifier(column.column)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in copyable)
    # copy the row that holds the colliding value where there is one: under a composite
    # key such as (id, region) it carries the rest of the key that makes the copy collide
    # values go in as literals, never as parameters: a parameter makes the driver look
    # for placeholders in the whole text, names included ("100% %s" is a table name)
    source: sql.Composable = sql.SQL("TRUE")
    if expected is not None and expected.first_collision is not None:
        source = sql.SQL("{} = {}").format(col, sql.Literal(expected.first_collision))
    pick = sql.SQL("SELECT {cols} FROM {rel} WHERE {source} LIMIT 1").format(
        cols=cols, rel=catalog.relation(column), source=source
    )
    if not session.run(sql.SQL("SELECT EXISTS ({})").format(pick))[0][0]:
        raise _CannotCopy("the table has no row to copy")

    def insert(copies: int) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM ({pick}) AS r "
            "CROSS JOIN generate_series(1, {copies}) RETURNING {col}"
        ).format(
            table=sql.Identifier(column.schema, column.table),
            cols=cols,
            pick=pick,
            copies=sql.Literal(copies),
            col=col,
        )

    drawn = 0
    for n in target.batches():
        start = _state(session, target.sequence)
        session.run("SAVEPOINT seqdrift_batch_insert")
        try:
            values = [row[0] for row in session.run(insert(n))]
        except session.Error as exc:
            if session.broken:
                raise
            session.run("ROLLBACK TO SAVEPOINT seqdrift_batch_insert")
            state = sqlstate(exc)
            if state not in (UNIQUE_VIOLATION, SEQUENCE_LIMIT_EXCEEDED):
                raise _CannotCopy(f"a copied row is rejected: {describe(exc)}") from exc
            if state == UNIQUE_VIOLATION and constraint_name(exc) not in key_names:
                raise _CannotCopy(
                    f"a copied row violates {constraint_name(exc)}, not the key under test"
                ) from exc
            hint = None
            if expected is not None and expected.inserts_until_collision is not None:
                hint = expected.inserts_until_collision - drawn
            until, value, collided = _locate(session, target, start, insert, n, hint)
            if not collided:  # the sequence ran out after ``until`` values: none is left
                return None, None, drawn + until, True
            return drawn + until, value, drawn + until + 1, True
        session.run("RELEASE SAVEPOINT seqdrift_batch_insert")
        drawn += len(values)
        if any(target.passes(int(v)) for v in values if v is not None):
            return None, None, drawn, True
    return None, None, drawn, target.passed_after(drawn)


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


_KEY_IN_DETAIL = re.compile(r"=\((-?\d+)(?:,|\))")


def _locate(
    session: Session,
    target: _Target,
    start: tuple[int, bool],
    insert: Callable[[int], sql.Composed],
    n: int,
    hint: int | None = None,
) -> tuple[int, int | None, bool]:
    """A batch of ``n`` copies collided, or its sequence ran out: replay it from the same
    sequence state, to find which insert collides and with what value (``collided``), or
    after how many inserts the sequence runs out (not ``collided``).

    The replay keeps the rows of every chunk that goes in and halves the chunk that
    fails, until one row fails on its own: a few statements per collision, whatever the
    distance, where one insert at a time took three round trips per value. ``hint``,
    the arithmetic's count of inserts that succeed, is tried first (that many rows, then
    one): where the arithmetic is right, two inserts find the collision."""
    seq = target.sequence
    _setval(session, seq, start)
    state: tuple[int, bool] | None = start  # the sequence's state before the next chunk
    done, bound = 0, n  # ``done`` inserts went in; the one that fails is before ``bound``
    guided = [] if hint is None or not 0 <= hint < n else [hint, 1] if hint else [1]
    while done < bound:
        k = min(guided.pop(0) if guided else max(1, (bound - done) // 2), bound - done)
        if k > 1 and state is None:
            state = _state(session, seq)
        session.run("SAVEPOINT seqdrift_one_insert")
        try:
            session.run(insert(k))
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
                return done, None, False
            # the key is in the detail ("Key (id)=(7) already exists."); for a plain
            # default the sequence's last value is the key, whatever the language
            found = _KEY_IN_DETAIL.search(message_detail(exc) or "")
            keys = target.column.key_columns or ()
            if found and keys and keys[0] == target.column.column:
                return done, int(found.group(1)), True
            if target.column.plain_default:
                return done, _state(session, seq)[0], True
            return done, None, True
        session.run("RELEASE SAVEPOINT seqdrift_one_insert")
        done += k
        state = None
    raise CannotCheck("the probe could not reproduce a collision it saw")  # pragma: no cover


# The table's unique and exclusion constraints and unique indexes. ``covers``: a unique
# key that includes the column, in the order discovery picks the key under test. For a
# partitioned table, the names of the partitions' indexes attached to each one, so that
# a violation reported by a partition is recognised as the key's.
_TABLE_KEYS = """
WITH RECURSIVE keys AS (
    SELECT i.indexrelid, i.indnkeyatts, i.indisprimary, c.conname::text AS conname,
           i.indisunique AND i.indpred IS NULL
             AND %(attnum)s = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]) AS covers
    FROM pg_index i
    LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
    WHERE i.indrelid = %(table)s AND (i.indisunique OR c.contype = 'x')
), attached (root, indexrelid) AS (
    SELECT indexrelid, indexrelid FROM keys
    UNION ALL
    SELECT a.root, h.inhrelid FROM attached a JOIN pg_inherits h ON h.inhparent = a.indexrelid
)
SELECT k.conname, k.covers, ic.relname::text,
       ARRAY(SELECT x.relname::text FROM attached a JOIN pg_class x ON x.oid = a.indexrelid
             WHERE a.root = k.indexrelid) AS names
FROM keys k JOIN pg_class ic ON ic.oid = k.indexrelid
ORDER BY k.indnkeyatts, k.indisprimary DESC, k.indexrelid
"""

_COPYABLE = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = '' AND a.attidentity <> 'a' AND a.attnum <> %s
ORDER BY a.attnum
"""


def _prepare_table(session: Session, column: Column) -> tuple[set[str], list[str]]:
    """Drop, inside the current savepoint, every unique or exclusion constraint and
    unique index of the table but the key under test. Returns the names a violation of
    the key can carry, and the columns a copied row carries."""
    ((attnum,),) = session.run(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s",
        [column.table_oid, column.column],
    )
    rows = session.run(_TABLE_KEYS, {"attnum": attnum, "table": column.table_oid})
    key: set[str] = set()
    table = sql.Identifier(column.schema, column.table)
    for conname, covers, index_name, names in rows:
        if covers and not key:
            key = set(names) | ({conname} if conname else set())
        elif conname is not None:
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
    copyable = [name for (name,) in session.run(_COPYABLE, [column.table_oid, attnum])]
    if not copyable:
        raise _CannotCopy("the table has no other column to copy")
    return key, copyable


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
    None: the default yields NULL, or its sequence has run out."""
    start = _state(session, target.sequence)
    values, _ = _values(session, target, _values_query(target), 1)
    _setval(session, target.sequence, start)
    return values[0] if values else None


def _values_query(target: _Target) -> Callable[[int], sql.Composed]:
    """``n`` values of the column's default (or its identity sequence), in order."""

    def query(n: int) -> sql.Composed:
        return sql.SQL(
            "SELECT v FROM (SELECT g, ({expr}) AS v FROM generate_series(1, {n}) AS g) AS d "
            "ORDER BY g"
        ).format(expr=_default(target), n=sql.Literal(n))

    return query


def _values(
    session: Session, target: _Target, query: Callable[[int], sql.Composed], n: int
) -> tuple[list[int], bool]:
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
    return [int(v) for (v,) in rows if v is not None], ran_out


def _draw(session: Session, target: _Target) -> _Outcome:
    """Evaluate the column's default (or its identity sequence) and look each value up."""
    column = target.column
    values_query = _values_query(target)
    col = sql.Identifier(column.column)

    def hits_query(values: list[int]) -> sql.Composed:
        return sql.SQL("SELECT {col} FROM {rel} WHERE {col} = ANY ({values})").format(
            col=col, rel=catalog.relation(column), values=sql.Literal(values)
        )

    drawn = 0
    for n in target.batches():
        values, ran_out = _values(session, target, values_query, n)
        existing = {int(v) for (v,) in session.run(hits_query(values))} if values else set()
        for i, v in enumerate(values):
            if v in existing:
                return drawn + i, v, drawn + i + 1, True
        drawn += len(values)
        if ran_out or any(target.passes(v) for v in values):
            return None, None, drawn, True
    return None, None, drawn, target.passed_after(drawn)


def _merge(result: ProbeReport) -> None:
    """Add the collisions only the probe saw (defaults or triggers the arithmetic
    cannot judge)."""
    known = {f.column for f in result.report.findings if f.kind == "collision"}
    checked = result.report.checked
    for p in result.probed:
        if p.inserts_until_collision is None or p.column in known:
            continue
        for i, verdict in enumerate(checked):
            if verdict.column == p.column:
                checked[i] = replace(verdict, status="finding", note="collision seen by the probe")
        result.report.findings.append(
            Finding(
                kind="collision",
                column=p.column,
                sequence=p.sequence,
                next_value=p.first_value,
                first_collision=p.value,
                inserts_until_collision=p.inserts_until_collision,
                max_existing=p.top,
                fix_sql=_advice(p),
            )
        )


def _advice(p: Probed) -> str:
    """A collision the arithmetic could not foresee has no exact setval: say what to do."""
    what = p.column.default_expr or "its default"
    return fixsql.comment(
        f"{p.column.label} takes {what} (or a trigger sets it): move "
        f"{p.sequence.qualified} forward, with setval, until it yields values past the "
        "existing ones"
    )
