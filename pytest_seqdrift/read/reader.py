"""The reader that check(), the snapshots, the probe and the fix share: discovery, and
every later read through the read block."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pytest_seqdrift.db.session import Session, error_line, sqlstate
from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import Bounds, Column, PgSequence, Search, SequenceState
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.read import block, discovery, inserts, keys, prepared, remembered

# Columns (sequences) read per statement: each read holds an AccessShareLock on a table
# and its index until its chunk's savepoint is rolled back; PostgreSQL's default lock
# table holds 64 x max_connections (6,400) locks for all sessions together.
CHUNK = 1000

T = TypeVar("T")


def discover(
    session: Session, schemas: Iterable[str] | None = None, exclude_tables: Seq[str] = ()
) -> tuple[list[Column], dict[int, PgSequence]]:
    """Every sequence-backed column and its sequence, with what an insert meets: as
    the catalog says now, or as a discovery of the same database said while the catalog
    has not changed since (``remembered``)."""
    names = None if schemas is None else tuple(schemas)

    def fresh() -> tuple[list[Column], dict[int, PgSequence]]:
        columns, sequences = discovery.parse_discovery(_discovered(session, names), exclude_tables)
        return _shaped(session, columns, sequences), sequences

    return remembered.discover(session, (names, tuple(exclude_tables)), fresh)


def _discovered(session: Session, schemas: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """Discovery's rows: from the second discovery on a connection, from a statement
    prepared on it (``prepared.ready``), planned once, not at every discovery afresh
    (planning is more than half of it at 100 tables, and every check after a
    migration's DDL discovers afresh); else as a query of its own."""
    named = prepared.ready(session, [(discovery.discovery_text(schemas), ())], once_seen=True)
    if named is not None:
        try:
            with session.savepoint("seqdrift_discovery"):
                return session.query_dicts(f"EXECUTE {named[0]}", {})
        except session.Error as exc:
            if session.broken:
                raise
            prepared.vanished(session, ReadFailure(error_line(exc), sqlstate(exc)))
    return session.query_dicts(discovery.DISCOVERY, discovery.discovery_params(schemas))


def _shaped(
    session: Session, columns: list[Column], sequences: dict[int, PgSequence]
) -> list[Column]:
    """The columns with what an insert into their table meets: the keys that count and
    the rows they count (keys.py), how many values it draws, and the triggers and rules
    that may change them (inserts.py). Two catalog queries in one round trip; the texts
    of partial and expression keys, where there are any, in one read block."""
    if not columns:
        return columns
    found = session.batch([keys.keys_query(columns), inserts.triggers_query(columns)])
    for answer in found:
        if isinstance(answer, ReadFailure):
            raise CannotCheck(answer.message)
    key_rows, hook_rows = found
    candidates = keys.parse_candidates(key_rows)  # type: ignore[arg-type]
    wanted = keys.texts_wanted(columns, candidates)
    texts: dict[keys.KeyText, tuple[str | None, ...] | str] = {}
    if wanted:
        answers = _read(session, [block.TextRead(w.statement()) for w in wanted])
        for w, a in zip(wanted, answers, strict=True):
            texts[w] = a.message if isinstance(a, ReadFailure) else a
    columns = keys.attach(columns, candidates, texts)
    return inserts.attach(columns, sequences, inserts.parse_hooks(hook_rows))  # type: ignore[arg-type]


def _chunks(items: Seq[T]) -> Iterator[Seq[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _read(session: Session, reads: Seq[block.Read]) -> list[block.Answer | ReadFailure]:
    """Every read's answer, in order: where the connection was given the same reads
    before, and they fit in one chunk, from the statement prepared for them
    (``prepared``: one statement, as the block is, whatever the number of tables); else
    in one PL/pgSQL block on the server (block.READ_BLOCK, one round trip), or where
    that block cannot run, as statements of their own."""
    if not reads:
        return []
    answered = prepared.read(session, reads, CHUNK)
    if answered is None and len(reads) <= prepared.DIRECT:
        answered = prepared.direct(session, reads)
    if answered is not None:
        return list(answered)
    return _read_block(session, reads)


def _read_block(session: Session, reads: Seq[block.Read]) -> list[block.Answer | ReadFailure]:
    """The reads (at least one) in one PL/pgSQL block, or as statements of their own
    where it cannot run."""
    statements = [
        (block.SET_WORK, block.work_params(reads, CHUNK, last_values=session.own_transaction)),
        (block.READ_BLOCK, ()),
        (block.GET_RESULT, ()),
    ]
    *_, result = session.batch(statements, replay=False)
    if isinstance(result, ReadFailure):
        return _read_one_by_one(session, reads)
    out: list[block.Answer | ReadFailure] = []
    retry: list[int] = []
    for i, answer in enumerate(block.parse_result(result[0][0], len(reads))):
        if answer is None or (isinstance(answer, ReadFailure) and answer.out_of_resources):
            retry.append(i)  # read again on its own, once the chunk's locks are gone
        out.append(answer or ReadFailure("not answered"))
    for i, again in zip(retry, _read_one_by_one(session, [reads[i] for i in retry]), strict=True):
        out[i] = again
    return out


def _read_one_by_one(session: Session, reads: Seq[block.Read]) -> list[block.Answer | ReadFailure]:
    """The reads as statements, pipelined per chunk, each chunk's locks let go once its
    rows are in (``Session.batch(release_locks=True)``); a failing read is reported on
    its own."""
    out: list[block.Answer | ReadFailure] = []
    for chunk in _chunks(reads):
        answers = session.batch([block.read_statement(r) for r in chunk], release_locks=True)
        out += [a if isinstance(a, ReadFailure) else a[0] for a in answers]
    return out


# Fewer reads than this go on one connection: a second one costs its connection.
PARALLEL_MIN_READS = 400


def read_shared(
    session: Session,
    reads: Seq[block.Read],
    snapshot: str | None,
    jobs: int,
    options: CheckOptions,
) -> list[block.Answer | ReadFailure]:
    """``_read``, split between ``jobs`` connections on the same snapshot: one read
    block on each, at once (each block runs on a server process, and so on a core, of
    its own)."""
    if snapshot is None or jobs < 2 or len(reads) < PARALLEL_MIN_READS:
        return _read(session, reads)
    siblings: list[Session] = []
    try:
        for _ in range(jobs - 1):
            sibling = session.sibling(
                snapshot,
                lock_timeout_ms=options.lock_timeout_ms,
                statement_timeout_ms=options.statement_timeout_ms,
            )
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
    session: Session, wanted: Seq[block.SequenceRef]
) -> dict[int, SequenceState | ReadFailure]:
    """Every given sequence's state by OID (``last_value`` and ``is_called``), or why it
    could not be read. check(), the snapshots and the fix all read states through here."""
    answers = _read(session, [block.StateRead(seq) for seq in wanted])
    return {
        seq.oid: a if isinstance(a, ReadFailure) else block.as_state(a)
        for seq, a in zip(wanted, answers, strict=True)
    }


def read_bounds(session: Session, items: Seq[tuple[Column, Search]]) -> list[Bounds | ReadFailure]:
    """Each search's windows, read in full."""
    answers = _read(session, [block.ColumnRead(c, block.search_slots(p)) for c, p in items])
    return [a if isinstance(a, ReadFailure) else block.as_bounds(a) for a in answers]
