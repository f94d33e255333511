"""``check()``: read a database's sequence-backed columns and judge each one.

Statements per check are constant, whatever the number of tables: discovery (one
query), sequence states (one statement), column bounds (one statement), and row counts
for the few columns whose verdict depends on them (one pipelined batch, usually empty).
The per-table reads run on the server (see catalog.ALL_STATES / ALL_BOUNDS); when one of
those statements fails, the same reads are sent per table in one pipeline instead, so
that a locked or unreadable table is reported on its own and the rest still checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from typing import Any, TypeVar

from . import catalog, drift
from .connections import CannotCheck, Session, open_session
from .model import Bounds, Checked, Column, Plan, Report, Sequence, SequenceState, Skipped

DEFAULT_LOCK_TIMEOUT_MS = 1000
# Columns (sequences) read per statement: each read holds an AccessShareLock on a table
# and its index until its chunk's savepoint is rolled back; PostgreSQL's default lock
# table holds 64 x max_connections (6,400) locks for all sessions together.
CHUNK = 1000

T = TypeVar("T")


def check(
    conn: Any,
    *,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
    threshold: float = drift.DEFAULT_THRESHOLD,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    statement_timeout_ms: int | None = None,
) -> Report:
    """Check every sequence-backed column the connection can see; never writes.

    ``conn`` is a psycopg 3 or psycopg2 connection, a SQLAlchemy ``Engine`` or
    ``Connection``, or a Django connection; anything else (SQLite, MySQL) raises
    ``NotSupported``, a ``CannotCheck`` and ``TypeError``.

    ``schemas`` limits the check to those schemas; ``exclude_tables`` takes fnmatch
    patterns matched against ``table`` and ``schema.table``; ``threshold`` is the share
    of a column's range that, once used, counts as overflow or exhaustion.

    Raises ``CannotCheck`` when the database cannot be checked at all. A column that
    cannot be read (privileges, a lock held past the lock timeout) is listed in
    ``Report.skipped`` with the reason, and the rest is still checked.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold!r}")
    with (
        open_session(conn) as session,
        session.read_only(
            lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms
        ),
    ):
        rows = session.query_dicts(catalog.DISCOVERY, catalog.discovery_params(schemas))
        columns, sequences = catalog.parse_discovery(rows, exclude_tables)
        report = Report()
        readable = [c for c in columns if c.skip_reason is None]
        for c in columns:
            if c.skip_reason is not None:
                report.skipped.append(_skipped(c, sequences[c.sequence_oid], c.skip_reason))

        # 1. sequence states, read after the snapshot that the discovery query took
        wanted = sorted({c.sequence_oid for c in readable})
        states = read_sequence_states(session, [sequences[oid] for oid in wanted])

        # 2. column bounds, planned from the states
        todo: list[tuple[Column, Sequence, SequenceState]] = []
        for c in readable:
            seq, state = sequences[c.sequence_oid], states[c.sequence_oid]
            if isinstance(state, CannotCheck):
                report.skipped.append(_skipped(c, seq, state.args[0]))
            elif not c.plain_default:
                report.checked.append(Checked(c, seq, "unchecked", note=_unplain(c)))
            elif c.type_range is None and c.data_type != "numeric":
                report.checked.append(
                    Checked(
                        c,
                        seq,
                        "unchecked",
                        note=f"a {c.data_type} column is not compared with a sequence",
                    )
                )
            else:
                todo.append((c, seq, state))
        answers = _read_bounds(session, [(c, drift.plan(c, s, st)) for c, s, st in todo])
        bounded: list[tuple[Column, Sequence, SequenceState, Bounds]] = []
        for (c, seq, state), answer in zip(todo, answers, strict=True):
            if isinstance(answer, CannotCheck):
                report.skipped.append(_skipped(c, seq, answer.args[0]))
            else:
                bounded.append((c, seq, state, answer))

        # 3. row counts, only where "fewer values left than rows" could decide
        counting = [
            (i, limit)
            for i, (c, seq, state, _) in enumerate(bounded)
            if (limit := drift.row_count_wanted(c, seq, state, threshold)) is not None
        ]
        counted = session.batch(
            [catalog.row_count_query(bounded[i][0], limit) for i, limit in counting],
            release_locks=True,
        )
        rows_by_index: dict[int, int] = {}
        for (i, _), count in zip(counting, counted, strict=True):
            if not isinstance(count, CannotCheck):
                rows_by_index[i] = int(count[0][0])

        for i, (c, seq, state, bounds) in enumerate(bounded):
            found, verdict = drift.assess(
                c, seq, state, bounds, threshold=threshold, rows=rows_by_index.get(i)
            )
            report.findings.extend(found)
            report.checked.append(verdict)
    report.checked.sort(
        key=lambda v: (v.column.schema, v.column.table, v.column.column, v.sequence.qualified)
    )
    return report


def _chunks(items: Seq[T]) -> Iterator[Seq[T]]:
    """Reads go in chunks, each under a savepoint rolled back once its rows are in (see
    ``Session.batch(release_locks=True)``): the locks of one chunk are let go before the
    next is read, so a database of any size fits PostgreSQL's shared lock table."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def read_sequence_states(
    session: Session, wanted: Seq[catalog.SequenceRef]
) -> dict[int, SequenceState | CannotCheck]:
    """Every given sequence's state by OID (``last_value`` and ``is_called``), a
    statement per chunk; per sequence where one fails, which then maps to its
    ``CannotCheck``. check(), the snapshots and the fix all read states through here."""
    states: dict[int, SequenceState | CannotCheck] = {}
    for chunk in _chunks(wanted):
        query = (catalog.ALL_STATES, catalog.all_states_params(chunk))
        (rows,) = session.batch([query], release_locks=True)
        if not isinstance(rows, CannotCheck):
            states.update(catalog.parse_all_states(rows))
            continue
        answers = session.batch(
            [(catalog.state_query(seq), ()) for seq in chunk], release_locks=True
        )
        for seq, answer in zip(chunk, answers, strict=True):
            states[seq.oid] = (
                answer if isinstance(answer, CannotCheck) else catalog.parse_state(answer)
            )
    return states


def _read_bounds(session: Session, items: list[tuple[Column, Plan]]) -> list[Bounds | CannotCheck]:
    """Two reads: every column's max first, then the rest of the plan only for the
    columns whose max reaches the sequence's next value (or whose sequence cycles) —
    in a database without drift, one index probe per column."""
    answers = _read_windows(session, [(c, drift.top_only(plan)) for c, plan in items])
    deeper = [
        i
        for i, (_, plan) in enumerate(items)
        if not isinstance(b := answers[i], CannotCheck) and drift.may_collide(plan, b.top)
    ]
    for i, answer in zip(deeper, _read_windows(session, [items[i] for i in deeper]), strict=True):
        answers[i] = answer
    return answers


def _read_windows(session: Session, items: list[tuple[Column, Plan]]) -> list[Bounds | CannotCheck]:
    """The plans' windows, a statement per chunk; per column where one fails."""
    out: list[Bounds | CannotCheck] = []
    for chunk in _chunks(items):
        query = (catalog.ALL_BOUNDS, catalog.all_bounds_params(chunk))
        (rows,) = session.batch([query], release_locks=True)
        if not isinstance(rows, CannotCheck):
            out += catalog.parse_all_bounds(rows, len(chunk))
            continue
        answers = session.batch(
            [catalog.bounds_query(c, plan) for c, plan in chunk], release_locks=True
        )
        out += [a if isinstance(a, CannotCheck) else catalog.parse_bounds(a) for a in answers]
    return out


def _skipped(column: Column, seq: Sequence, reason: str) -> Skipped:
    return Skipped(column.schema, column.table, column.column, seq.qualified, reason)


def _unplain(column: Column) -> str:
    return (
        f"default {column.default_expr} is more than the sequence's next value: "
        "the arithmetic cannot judge it (the --seqdrift probe can)"
    )
