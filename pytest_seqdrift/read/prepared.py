"""Reads that repeat on a connection, answered by one statement prepared on it.

The plugin checks the same database on the same connection again and again: after each
migration on the migrating connection, and after each test under
``--seqdrift-scope=all``. Those checks send the same reads (the first read of every
column and every sequence's state), and the read block (``block.READ_BLOCK``) plans each
of them again every time: planning is most of the block's time. Here a list of reads
that the connection was given before becomes one statement, ``PREPARE``d on the
connection the second time it is seen, and from then on only ``EXECUTE``d: planned once.

Not the first time: one statement of a hundred subqueries costs about twice the block to
plan, so a read that is never repeated (the ``seqdrift check`` command, a test's own
database) stays with the block.

The statement is one row: an array of one text per read, the read's four texts joined
by tabs as the block answers them (an empty text for SQL NULL; a read with no row is
NULL, which ``answers`` turns into four NULLs, as the block's ``EXECUTE ... INTO`` does).
It reads every table at the statement's snapshot and every sequence while the statement
runs, after that snapshot was taken, so no insert of another session can make a state
older than a max: what the block keeps by reading the maxima first.

A prepared statement outlives the transaction and the check, on a connection that may be
the caller's, so:

* its name is a digest of its text (``seqdrift_`` and 24 hex digits): a name always
  stands for the same text, also on a server connection that a pool hands to another
  client;
* it is prepared on psycopg 3 and psycopg2 connections (``Session.may_prepare``), also
  where psycopg's ``prepare_threshold`` is None, which Django sets by default "to keep
  connection poolers working": a statement this module prepared that is gone when it
  is executed (a transaction-pooling PgBouncer's other server connection, a ``DISCARD
  ALL``) makes it prepare nothing more on that connection, after one block's worth of
  time lost; not through asyncpg, whose users turn its statement cache off for poolers;
* every column it returns is text, so a table dropped and made again with other types
  cannot make "cached plan must not change result type": PostgreSQL plans again after
  DDL on what the statement reads, and where that fails (a table is gone) the reads go
  through the block;
* at most ``KEPT`` are kept per connection; the oldest is ``DEALLOCATE``d;
* a failure of the statement (a lock timeout, a privilege) sends the reads through the
  block, which answers each read on its own;
* it reads no more than the block's chunk, in a savepoint rolled back once its row is
  in, so it holds no more locks than the block does (``Session.batch(release_locks=)``).
  PREPARE and DEALLOCATE are not undone by a rollback, and are allowed in a READ ONLY
  transaction and on a replica.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.read import block

# statements kept prepared per connection, the most recently used last
KEPT = 8
# lists of reads remembered as seen once per connection (only their digests)
SEEN = 32
# at most this many reads seen once are one statement, not the block (``direct``)
DIRECT = 16
# SQLSTATEs that say the connection's prepared statements are not what ``_known`` says
_NOT_THERE = "26000"  # invalid_sql_statement_name: no such statement
_THERE = "42P05"  # duplicate_prepared_statement


@dataclass
class _Known:
    """What this process did on one connection: the digests of the statements it
    prepared there, and of those it saw once."""

    ready: OrderedDict[str, None] = field(default_factory=OrderedDict)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # a statement prepared here vanished: a pooler's server connections, or a DISCARD
    # ALL; nothing more is prepared on this connection
    lost: bool = False


_known: weakref.WeakKeyDictionary[Any, _Known] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def statement(reads: Seq[block.Read]) -> str:
    """One statement that answers every read: an array of one text per read."""
    return "SELECT ARRAY[" + ", ".join(_cell(r) for r in reads) + "]::text[]"


_TAB = "E'\\t'"


def _cell(read: block.Read) -> str:
    """A read's four answers as one text, joined by tabs: a scalar expression without
    the read's own statement around it where the read is of a known kind (half the
    cost of a subquery of that statement)."""
    if isinstance(read, block.StateRead):
        return (
            f"(SELECT last_value::text || {_TAB} || is_called::text || E'\\t\\t' "
            f"FROM {block.sequence_name(read.seq)})"
        )
    if isinstance(read, block.ColumnRead):
        parts = ("''" if p == "NULL" else f"coalesce({p}, '')" for p in block.column_parts(read))
        return f"concat_ws({_TAB}, {', '.join(parts)})"
    return (
        f"(SELECT concat_ws({_TAB}, coalesce(a::text, ''), coalesce(b::text, ''), "
        f"coalesce(c::text, ''), coalesce(d::text, '')) FROM ({block.read_text(read)} LIMIT 1) "
        "AS q (a, b, c, d))"
    )


def name_of(text: str) -> str:
    return "seqdrift_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def answers(cells: Seq[str | None], count: int) -> list[block.Answer] | None:
    """The statement's array as the reads' answers (None if it is not one)."""
    if len(cells) != count:
        return None
    out: list[block.Answer] = []
    for cell in cells:
        if cell is None:  # the read found no row
            out.append((None, None, None, None))
            continue
        values = cell.split("\t")
        if len(values) != 4:
            return None
        out.append(tuple(v or None for v in values))
    return out


def read(session: Session, reads: Seq[block.Read], most: int) -> list[block.Answer] | None:
    """Every read's answer from the connection's prepared statement for them, or None
    where the reads are to go through the block: the first time they are seen on this
    connection, and whenever the statement fails. ``most``: the reads one statement may
    hold the locks of (the block's chunk)."""
    if not reads or len(reads) > most or not session.may_prepare:
        return None
    conn = session.conn
    text = statement(reads)
    name = name_of(text)
    with _lock:
        try:
            known = _known.setdefault(conn, _Known())
        except TypeError:  # a connection that takes no weak reference
            return None
        if known.lost:
            return None
        if name in known.ready:
            known.ready.move_to_end(name)
            evicted = None
        elif name in known.seen:
            del known.seen[name]
            evicted = _evicted(known)
        else:
            _remember(known.seen, name, SEEN)
            return None
    if evicted is not None and not _prepare(session, known, [(name, f"AS {text}")], evicted):
        return None
    (result,) = session.batch([(f"EXECUTE {name}", ())], release_locks=True, replay=False)
    if isinstance(result, ReadFailure):
        vanished(session, result)
        return None
    if len(result) != 1 or not isinstance(result[0][0], list):
        return None
    return answers(result[0][0], len(reads))


def ready(
    session: Session, statements: Seq[tuple[str, Seq[str]]], *, once_seen: bool = False
) -> list[str] | None:
    """The names of statements prepared on the connection, one for each text and the
    types of its parameters (written ``$1``, ``$2``... in the text), prepared now where
    they are not yet, in one round trip: for statements that repeat by design
    (``read.changes``' look after every test), not only once seen twice. None where
    nothing may be prepared on the connection, or preparing failed: then the caller
    runs its statements as they are. ``once_seen``: not the first time they are asked
    for on the connection (as the reads): a statement that a connection runs once, as
    a ``seqdrift check`` does, costs its planning either way."""
    if not session.may_prepare:
        return None
    named = [_named(text, tuple(types)) for text, types in statements]
    with _lock:
        try:
            known = _known.setdefault(session.conn, _Known())
        except TypeError:  # a connection that takes no weak reference
            return None
        if known.lost:
            return None
        missing = [(n, t) for n, t in named if n not in known.ready]
        if once_seen and missing:
            unseen = [n for n, _ in missing if n not in known.seen]
            for n, _ in missing:
                known.seen.pop(n, None)
            if unseen:
                for n in unseen:
                    _remember(known.seen, n, SEEN)
                return None
        for n, _ in named:
            if n in known.ready:
                known.ready.move_to_end(n)
        evicted = _evicted(known, len(missing)) if missing else []
    if missing and not _prepare(session, known, missing, evicted):
        return None
    return [n for n, _ in named]


@functools.lru_cache(maxsize=32)
def _named(text: str, types: tuple[str, ...]) -> tuple[str, str]:
    """A statement's name and what follows it in its PREPARE (``ready``'s statements
    repeat, and are long: the look's is some ten thousand characters at 1,000 tables)."""
    signature = f"({', '.join(types)})"
    return name_of(f"{signature} {text}"), f"{signature} AS {text}" if types else f"AS {text}"


def vanished(session: Session, failure: ReadFailure) -> bool:
    """Whether ``failure`` says a statement prepared here is gone (a pooler's other
    server connection, a ``DISCARD ALL``); then nothing more is prepared on it."""
    if failure.sqlstate != _NOT_THERE:
        return False
    with _lock:
        known = _known.get(session.conn)
        if known is not None:
            known.ready.clear()
            known.lost = True
    return True


def direct(session: Session, reads: Seq[block.Read]) -> list[block.Answer] | None:
    """Every read's answer from the same statement, not prepared: for a few reads it is
    planned faster than the block is compiled and run (``DIRECT``). None where it fails:
    then the block answers each read on its own."""
    (result,) = session.batch([(statement(reads), ())], release_locks=True, replay=False)
    if isinstance(result, ReadFailure) or len(result) != 1 or not isinstance(result[0][0], list):
        return None
    return answers(result[0][0], len(reads))


def _prepare(
    session: Session, known: _Known, named: Seq[tuple[str, str]], evicted: list[str]
) -> bool:
    """Prepare the statements (names and what follows the name in ``PREPARE``, after
    deallocating those ``evicted``); True once they are
    there, also when one was already (prepared by this process before it forgot)."""
    work = [(f"DEALLOCATE {n}", ()) for n in evicted]
    work += [(f"PREPARE {n} {t}", ()) for n, t in named]
    # replayed one by one on a failure: a statement already deallocated fails alone
    answers = session.batch(work, release_locks=True)
    there = all(
        not isinstance(a, ReadFailure) or a.sqlstate == _THERE for a in answers[len(evicted) :]
    )
    if there:
        with _lock:
            for n, _ in named:
                known.ready[n] = None  # _evicted made room
                known.ready.move_to_end(n)
    return there


def _remember(names: OrderedDict[str, None], name: str, most: int) -> None:
    names[name] = None
    names.move_to_end(name)
    while len(names) > most:
        names.popitem(last=False)


def _evicted(known: _Known, adding: int = 1) -> list[str]:
    """The oldest statements past ``KEPT`` once ``adding`` more are added, forgotten here
    (the caller deallocates them)."""
    out = []
    while known.ready and len(known.ready) + adding > KEPT:
        out.append(known.ready.popitem(last=False)[0])
    return out


def forget(conn: Any) -> None:
    """Forget what was prepared on ``conn`` (for tests and benchmarks)."""
    with _lock:
        _known.pop(conn, None)
