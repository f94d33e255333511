"""``check()``: read a database's sequence-backed columns and judge each one.

Statements per check are constant, whatever the number of tables: the transaction and
its lock timeout, discovery (one query), one PL/pgSQL block that reads every sequence's
state and every column's max (catalog.READ_BLOCK), a second block for the columns whose
max reaches their sequence's next value (none, in a database without drift), and row
counts for the few columns whose verdict depends on them (usually none). Where the
block cannot run, the same reads go as statements of their own, pipelined; a table
that cannot be read (a lock held past the lock timeout, a privilege) is reported on its
own either way, and the rest still checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from . import catalog, drift, inserts, keys
from .connections import CannotCheck, Session, open_session
from .model import (
    Bounds,
    Checked,
    Column,
    Finding,
    Plan,
    Report,
    Sequence,
    SequenceState,
    Skipped,
)

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
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, not {jobs!r}")
    if max_scan_rows is not None and max_scan_rows < 0:
        raise ValueError(f"max_scan_rows must be 0 or more, not {max_scan_rows!r}")
    with (
        open_session(conn) as session,
        session.read_only(
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
            share=jobs > 1,
        ) as snapshot,
    ):
        columns, sequences = discover(session, schemas, exclude_tables)
        report = Report()
        readable = [c for c in columns if c.skip_reason is None]
        for c in columns:
            if c.skip_reason is not None:
                report.skipped.append(_skipped(c, sequences[c.sequence_oid], c.skip_reason))

        # 1. every sequence's state and every column's max (min), in one read
        judged: list[Column] = []
        for c in readable:
            seq = sequences[c.sequence_oid]
            if c.unjudged is not None:
                report.checked.append(Checked(c, seq, "unchecked", note=c.unjudged))
            elif not c.plain_default:
                report.checked.append(Checked(c, seq, "unchecked", note=_unplain(c)))
            elif c.type_range is None and c.data_type != "numeric":
                note = f"a {c.data_type} column is not compared with a sequence"
                report.checked.append(Checked(c, seq, "unchecked", note=note))
            elif _too_big_to_scan(c, max_scan_rows):
                reason = (
                    f"no index leads with {c.column} and the table holds about "
                    f"{c.estimated_rows:,} rows: not scanned (max_scan_rows={max_scan_rows})"
                )
                report.skipped.append(_skipped(c, seq, reason))
            else:
                judged.append(c)
        wanted = sorted({c.sequence_oid for c in judged})  # the states judging needs
        tops = [_top_slot(c, inserts.per_insert(c, sequences[c.sequence_oid])) for c in judged]
        # the maxima before the states: inside a caller's READ COMMITTED transaction each
        # read sees rows committed up to its start, so this order keeps every max older
        # than the state it is compared with (in the check's own REPEATABLE READ
        # transaction, the snapshot taken by discovery already does)
        first: list[catalog.Read] = [
            catalog.ColumnRead(c, (None, None, top, None))
            for c, top in zip(judged, tops, strict=True)
        ]
        first += [catalog.StateRead(sequences[oid]) for oid in wanted]
        timeouts = {
            "lock_timeout_ms": lock_timeout_ms,
            "statement_timeout_ms": statement_timeout_ms,
        }
        answers = _read_shared(session, first, snapshot, jobs, timeouts)
        states = {
            oid: a if isinstance(a, CannotCheck) else catalog.as_state(a)
            for oid, a in zip(wanted, answers[len(judged) :], strict=True)
        }

        # 2. the plan's other windows, only where the max (min) says they can matter
        todo: list[tuple[Column, Sequence, SequenceState]] = []
        results: list[Bounds | CannotCheck | None] = []
        for c, top, answer in zip(judged, tops, answers[: len(judged)], strict=True):
            seq, state = sequences[c.sequence_oid], states[c.sequence_oid]
            if isinstance(state, CannotCheck):
                report.skipped.append(_skipped(c, seq, state.args[0]))
                continue
            if c.draws[0] > 1:  # the column sees every k-th value (inserts.py)
                walk = inserts.per_insert(c, seq)
                state = inserts.per_insert_state(c, seq, walk, state)
                seq = walk
            todo.append((c, seq, state))
            if isinstance(answer, CannotCheck):
                results.append(answer)
                continue
            known, value = _top_from(top, catalog.as_int(answer[2]))
            if known and not drift.may_collide_at(c, seq, state, value):
                results.append(Bounds(None, None, value, None))
            else:
                results.append(None)
        deeper = [i for i, r in enumerate(results) if r is None]
        plans = [(todo[i][0], drift.plan(*todo[i])) for i in deeper]
        for i, bounds in zip(deeper, read_bounds(session, plans), strict=True):
            results[i] = bounds
        bounded: list[tuple[Column, Sequence, SequenceState, Bounds]] = []
        for (c, seq, state), result in zip(todo, results, strict=True):
            if isinstance(result, CannotCheck):
                report.skipped.append(_skipped(c, seq, result.args[0]))
            else:
                assert result is not None
                bounded.append((c, seq, state, result))

        # 3. row counts, only where "fewer values left than rows" could decide
        counting = [
            (i, limit)
            for i, (c, seq, state, b) in enumerate(bounded)
            if (limit := drift.row_count_wanted(c, seq, state, threshold, b)) is not None
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
    report.checked.sort(
        key=lambda v: (v.column.schema, v.column.table, v.column.column, v.sequence.qualified)
    )
    _one_fix_per_sequence(report)
    return report


def _one_fix_per_sequence(report: Report) -> None:
    """Where one sequence collides in several columns (shared by tables, or drawn twice
    per insert), each finding's setval goes as far as the furthest one: any of them,
    run alone, clears them all."""
    furthest: dict[int, Finding] = {}
    for f in report.findings:
        if f.kind != "collision" or f.max_existing is None or not f.fix_sql.startswith("SELECT"):
            continue
        best = furthest.get(f.sequence.oid)
        sign = 1 if f.sequence.increment > 0 else -1
        if best is None or sign * f.max_existing > sign * (best.max_existing or 0):
            furthest[f.sequence.oid] = f
    for i, f in enumerate(report.findings):
        best = furthest.get(f.sequence.oid)
        if best is not None and f.kind == "collision" and f.fix_sql.startswith("SELECT"):
            report.findings[i] = replace(f, fix_sql=best.fix_sql)


def discover(
    session: Session, schemas: Iterable[str] | None = None, exclude_tables: Seq[str] = ()
) -> tuple[list[Column], dict[int, Sequence]]:
    """Every sequence-backed column and its sequence, with what an insert meets."""
    rows = session.query_dicts(catalog.DISCOVERY, catalog.discovery_params(schemas))
    columns, sequences = catalog.parse_discovery(rows, exclude_tables)
    return _shaped(session, columns, sequences), sequences


def _shaped(
    session: Session, columns: list[Column], sequences: dict[int, Sequence]
) -> list[Column]:
    """The columns with what an insert into their table meets: the keys that count and
    the rows they count (keys.py), how many values it draws, and the triggers and rules
    that may change them (inserts.py). Two catalog queries in one round trip; the texts
    of partial and expression keys, where there are any, in one read block."""
    if not columns:
        return columns
    found = session.batch([keys.keys_query(columns), inserts.triggers_query(columns)])
    for answer in found:
        if isinstance(answer, CannotCheck):
            raise answer
    key_rows, hook_rows = found
    candidates = keys.parse_candidates(key_rows)  # type: ignore[arg-type]
    wanted = keys.texts_wanted(columns, candidates)
    texts: dict[keys.KeyText, tuple[str | None, ...] | str] = {}
    if wanted:
        answers = _read(session, [catalog.TextRead(w.statement()) for w in wanted])
        for w, a in zip(wanted, answers, strict=True):
            texts[w] = a.args[0] if isinstance(a, CannotCheck) else a
    columns = keys.attach(columns, candidates, texts)
    return inserts.attach(columns, sequences, inserts.parse_hooks(hook_rows))  # type: ignore[arg-type]


def _chunks(items: Seq[T]) -> Iterator[Seq[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _read(session: Session, reads: Seq[catalog.Read]) -> list[catalog.Answer | CannotCheck]:
    """Every read's answer, in order: one PL/pgSQL block on the server for all of them
    (catalog.READ_BLOCK, one round trip), or where that block cannot run, the reads as
    statements of their own."""
    if not reads:
        return []
    statements = [
        (catalog.SET_WORK, catalog.work_params(reads, CHUNK)),
        (catalog.READ_BLOCK, ()),
        (catalog.GET_RESULT, ()),
    ]
    *_, result = session.batch(statements, replay=False)
    if isinstance(result, CannotCheck):
        return _read_one_by_one(session, reads)
    out: list[catalog.Answer | CannotCheck] = []
    retry: list[int] = []
    for i, answer in enumerate(catalog.parse_result(result[0][0], len(reads))):
        if isinstance(answer, catalog.ReadError):
            if answer.out_of_resources:
                retry.append(i)
            out.append(CannotCheck(answer.message))
        else:
            out.append(answer)
    for i, again in zip(retry, _read_one_by_one(session, [reads[i] for i in retry]), strict=True):
        out[i] = again
    return out


def _read_one_by_one(
    session: Session, reads: Seq[catalog.Read]
) -> list[catalog.Answer | CannotCheck]:
    """The reads as statements, pipelined per chunk, each chunk's locks let go once its
    rows are in (``Session.batch(release_locks=True)``); a failing read is reported on
    its own."""
    out: list[catalog.Answer | CannotCheck] = []
    for chunk in _chunks(reads):
        answers = session.batch([catalog.read_statement(r) for r in chunk], release_locks=True)
        out += [a if isinstance(a, CannotCheck) else a[0] for a in answers]
    return out


# Fewer reads than this go on one connection: a second one costs its connection.
PARALLEL_MIN_READS = 400


def _read_shared(
    session: Session,
    reads: Seq[catalog.Read],
    snapshot: str | None,
    jobs: int,
    timeouts: dict[str, Any],
) -> list[catalog.Answer | CannotCheck]:
    """``_read``, split between ``jobs`` connections on the same snapshot: one read
    block on each, at once (each block runs on a server process, and so on a core, of
    its own)."""
    if snapshot is None or jobs < 2 or len(reads) < PARALLEL_MIN_READS:
        return _read(session, reads)
    siblings: list[Session] = []
    try:
        for _ in range(jobs - 1):
            sibling = session.sibling(snapshot, **timeouts)
            if sibling is None:
                break
            siblings.append(sibling)
        if not siblings:
            return _read(session, reads)
        size = -(-len(reads) // (len(siblings) + 1))
        parts = [reads[i : i + size] for i in range(0, len(reads), size)]
        with ThreadPoolExecutor(len(siblings)) as pool:
            futures = [
                pool.submit(_read, s, part) for s, part in zip(siblings, parts[1:], strict=False)
            ]
            out = _read(session, parts[0])
            for future in futures:
                out += future.result()
        return out
    finally:
        for sibling in siblings:
            sibling.conn.close()


def read_sequence_states(
    session: Session, wanted: Seq[catalog.SequenceRef]
) -> dict[int, SequenceState | CannotCheck]:
    """Every given sequence's state by OID (``last_value`` and ``is_called``), or why it
    could not be read. check(), the snapshots and the fix all read states through here."""
    answers = _read(session, [catalog.StateRead(seq) for seq in wanted])
    return {
        seq.oid: a if isinstance(a, CannotCheck) else catalog.as_state(a)
        for seq, a in zip(wanted, answers, strict=True)
    }


def read_bounds(session: Session, items: Seq[tuple[Column, Plan]]) -> list[Bounds | CannotCheck]:
    """Each plan's windows, read in full."""
    answers = _read(session, [catalog.ColumnRead(c, catalog.plan_slots(p)) for c, p in items])
    return [a if isinstance(a, CannotCheck) else catalog.as_bounds(a) for a in answers]


def _top_slot(column: Column, seq: Sequence) -> catalog.Slot:
    """The first read of a column: its max (min) over all rows, a single index probe.
    The planner estimates a range condition at the ends of the type by probing the index
    for the actual extremes, which made a windowed max three probes, not one. A numeric
    column keeps its window: its max may be a fraction."""
    window = drift.top_window(column, seq)
    if window is None or column.type_range is None:
        return window
    return catalog.Extreme(window)


def _top_from(slot: catalog.Slot, extreme: int | None) -> tuple[bool, int | None]:
    """The top window's answer from the column's extreme: (known, value). Unknown only
    when the extreme lies past the window's far end (ids beyond what the sequence and
    the type allow): then the window itself is read."""
    if not isinstance(slot, catalog.Extreme):
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


def _skipped(column: Column, seq: Sequence, reason: str) -> Skipped:
    return Skipped(column.schema, column.table, column.column, seq.qualified, reason)


def _unplain(column: Column) -> str:
    return (
        f"default {column.default_expr} is more than the sequence's next value: "
        "the arithmetic cannot judge it (on a test database, pytest --seqdrift's probe judges it by inserting)"
    )
