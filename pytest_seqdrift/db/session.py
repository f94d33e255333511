"""The ``Session``: what the engine runs queries through, whatever the driver.

Queries are composed with ``psycopg.sql`` for every driver, and a database error is told
apart by its SQLSTATE (``sqlstate(exc)``), never by its class. A session leaves the
connection as it found it:

* an idle connection gets a ``REPEATABLE READ, READ ONLY`` transaction of the session's
  own, rolled back at the end. Its snapshot is taken by discovery, before any sequence is
  read, so every bound read is older than the sequence state it is compared with:
  concurrent inserts cannot make a false finding;
* inside the caller's transaction (a SQLAlchemy ``Connection``'s, a Django ``atomic``
  block's) it works in a savepoint that it rolls back: the caller's settings and
  snapshot are untouched, and the caller's uncommitted rows are seen;
* a connection in a failed transaction is refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import printable

Query = str | sql.SQL | sql.Composed
Params = Seq[Any] | Mapping[str, Any] | None
Statement = tuple[Query, Seq[Any]]
Rows = list[tuple[Any, ...]]


MIN_SERVER_VERSION = 120000  # pg_attribute.attgenerated appeared in PostgreSQL 12

# SQLSTATEs the engine tells apart
UNIQUE_VIOLATION = "23505"
SEQUENCE_LIMIT_EXCEEDED = "2200H"  # nextval past MAXVALUE (MINVALUE) without CYCLE
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout
OBJECT_IN_USE = "55006"  # e.g. ALTER TABLE with the transaction's trigger events pending
IN_FAILED_TRANSACTION = "25P02"  # asyncpg's only way of telling a failed transaction

# libpq's PQtransactionStatus, which psycopg 3 and psycopg2 both report
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = range(5)


def version_text(server_version: int) -> str:
    """libpq's number as people write it: 150018 -> 15.18, 90624 -> 9.6.24."""
    major, rest = divmod(server_version, 10000)
    if major >= 10:
        return f"{major}.{rest}"
    return f"{major}.{rest // 100}.{rest % 100}"


def error_line(exc: BaseException) -> str:
    """One line for an error: the server's primary message, without its detail."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None)
    if message is None and isinstance(getattr(exc, "sqlstate", None), str):
        message = getattr(exc, "message", None)  # asyncpg's, whose str() adds the detail
    message = message if isinstance(message, str) and message else str(exc)
    return " ".join((message or type(exc).__name__).split())


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error from either driver (None for a client error)."""
    diag = getattr(exc, "diag", None)
    state = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None)
    return state or getattr(exc, "pgcode", None)


def _names_without_parameters(query: Query, params: Params) -> None:
    """A statement composed with names (``sql.Identifier``) carries its values as
    ``sql.Literal``, never as parameters: given parameters, the driver looks for
    placeholders in the whole text, names included, and a table may be called
    ``100% %s``. Without parameters the text is sent as it is."""
    if params and isinstance(query, sql.Composed):
        raise TypeError(f"a statement with names takes no parameters: {query!r}")


def _in_failed_transaction(what: str) -> str:
    return f"the connection is in a failed transaction: roll it back before {what}"


def _failure(exc: BaseException) -> ReadFailure:
    return ReadFailure(error_line(exc), sqlstate(exc))


def constraint_name(exc: BaseException) -> str | None:
    diag = getattr(exc, "diag", None)  # psycopg; asyncpg has the fields on the error
    return getattr(diag, "constraint_name", None) or getattr(exc, "constraint_name", None)


def message_detail(exc: BaseException) -> str | None:
    diag = getattr(exc, "diag", None)
    return getattr(diag, "message_detail", None) or getattr(exc, "detail", None)


class Session(ABC):
    """A driver's connection, driven by the engine. Subclasses supply the primitives
    (execute, transaction status, autocommit); the transaction rules live here, once."""

    #: the driver's base class of errors
    Error: type[Exception] = Exception

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements = 0  # statements sent, for benchmarks and tests
        self.round_trips = 0  # waits for the server: one per statement, one per pipeline
        # inside read_only() in a transaction of its own (not the caller's), which its
        # end rolls back
        self.own_transaction = False
        # a savepoint and its settings (``read_only(lazy=True)``) not sent yet: they go
        # ahead of the next statement, in its round trip
        self._ahead: list[Statement] = []

    # -- the driver's primitives ---------------------------------------------------------

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @property
    @abstractmethod
    def broken(self) -> bool:
        """The connection to the server is lost."""

    @abstractmethod
    def _status(self) -> int:
        """libpq's transaction status."""

    @abstractmethod
    def _server_version(self) -> int: ...

    @abstractmethod
    def _get_autocommit(self) -> bool: ...

    @abstractmethod
    def _set_autocommit(self, value: bool) -> None: ...

    @abstractmethod
    def _execute(self, query: Query, params: Params) -> Rows: ...

    @abstractmethod
    def _execute_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _send_batch(self, statements: Seq[Statement]) -> list[Rows]:
        """Every statement's rows; raises ``Error`` when one fails."""

    # -- the interface the engine uses ---------------------------------------------------

    def run(self, query: Query, params: Params = None) -> Rows:
        _names_without_parameters(query, params)
        if self._ahead:
            if not isinstance(params, Mapping):
                return self._send([(query, params or ())])[-1]
            self._send([])
        self.statements += 1
        self.round_trips += 1
        return self._execute(query, params)

    def query_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows as dicts, for a query of the catalogs only (discovery): a driver may
        prepare it as it prepares the caller's own statements (psycopg after
        ``prepare_threshold`` runs, never with ``prepare_threshold=None``, which users
        of a transaction-pooling PgBouncer set). Planning discovery costs more than
        running it on a small database, and a catalog's column types never change, so
        the plan never goes stale ("cached plan must not change result type" comes from
        user tables, which every other statement names and none is prepared for)."""
        if self._ahead:
            self._send([])
        self.statements += 1
        self.round_trips += 1
        return self._execute_dicts(query, params)

    def _send(self, statements: Seq[Statement]) -> list[Rows]:
        """``_send_batch``, what waits to go ahead (``_ahead``) first, in the same round
        trip; the rows of ``statements`` only. What goes ahead is a savepoint and
        settings in a transaction known not to have failed: nothing in it fails but on a
        lost connection, so a failure of the round trip is one of ``statements``'."""
        ahead, self._ahead = self._ahead, []
        return self._send_batch([*ahead, *statements])[len(ahead) :]

    @property
    def may_prepare(self) -> bool:
        """Whether the engine may leave statements of its own prepared on the connection
        (``read.prepared``): also where psycopg's ``prepare_threshold`` is None, which
        Django sets by default; a pooler that loses them stops it there."""
        return True

    @property
    def in_transaction(self) -> bool:
        return self._status() == _INTRANS

    def _usable(self, what: str) -> bool:
        """Raise unless the connection can be used now; True when it is idle."""
        if self.closed:
            raise CannotCheck("the connection is closed")
        status = self._status()
        if status == _INERROR:
            raise CannotCheck(_in_failed_transaction(what))
        if status not in (_IDLE, _INTRANS):
            raise CannotCheck(f"the connection is busy: cannot {what} now")
        return status == _IDLE

    @contextmanager
    def read_only(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int | None = None,
        share: bool = False,
        lazy: bool = False,
        then: Then | None = None,
    ) -> Iterator[str | None]:
        """Read inside a transaction or savepoint that is rolled back, with timeouts.

        ``share``: in a transaction of its own, export its snapshot and yield its id, so
        that ``sibling`` sessions read the very same rows (None where the connection is
        inside the caller's transaction, or the server refuses to export).

        ``lazy``: inside the caller's transaction, the savepoint and its settings travel
        with the block's first statement (a round trip less); none at all where the block
        sends nothing. ``then``: statements that only read, run as the block ends, in the
        round trip that ends it (``Then``)."""
        own = self._usable("checking sequences")
        version = self._server_version()
        if version < MIN_SERVER_VERSION:
            raise CannotCheck(
                f"PostgreSQL {version_text(version)} is too old: 12 or later is needed"
            )
        autocommit = self._get_autocommit()
        opened = own  # a savepoint is undone only once it exists
        done = False  # the block ended without raising: ``then`` is run
        try:
            # the transaction and its settings travel together: one round trip
            opening: list[Statement] = []
            if own:
                self._set_autocommit(True)
                opening.append(("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", ()))
            else:
                opening.append(("SAVEPOINT seqdrift_check", ()))
            opening += _timeouts(lock_timeout_ms, statement_timeout_ms)
            snapshot: str | None = None
            if own and share:
                try:
                    *_, exported = self._send_batch([*opening, ("SELECT pg_export_snapshot()", ())])
                    snapshot = str(exported[0][0])
                except self.Error:
                    if self.broken:
                        raise
                    self.run("ROLLBACK")  # then as without share
                    self._send_batch(opening)
            elif lazy and not own:
                self._ahead = opening
            else:
                self._send_batch(opening)
            opened = True
            self.own_transaction = own
            yield snapshot
            done = True
        except self.Error as exc:
            if sqlstate(exc) == IN_FAILED_TRANSACTION and not opened:
                raise CannotCheck(_in_failed_transaction("checking sequences")) from None
            raise CannotCheck(error_line(exc)) from exc
        finally:
            self.own_transaction = False
            unsent, self._ahead = bool(self._ahead), []
            then = then if done else None
            if opened and unsent:  # nothing was sent: no savepoint to undo
                if then is not None:
                    then.rows = _rows(self.batch(then.statements, release_locks=True))
            elif opened:
                self._undo(own, autocommit, "seqdrift_check", then)

    def sibling(
        self, snapshot: str, *, lock_timeout_ms: int, statement_timeout_ms: int | None = None
    ) -> Session | None:
        """A second connection to the same database, in a ``READ ONLY`` transaction on
        ``snapshot`` (from ``read_only(share=True)``), to read in parallel; the caller
        closes it. None where this driver cannot open one."""
        return None

    def connect_params(self) -> dict[str, Any] | None:
        """What a new psycopg 3 connection to the same database takes (None where the
        driver does not tell: the password came from a callback, say)."""
        return None

    def twin(self) -> psycopg.Connection[Any] | None:
        """A new connection to the same database, in autocommit mode, outside whatever
        transaction this one is in: it sees what is committed, and the sequences (which
        no transaction holds). The caller closes it; None where none can be opened."""
        params = self.connect_params()
        if params is None:
            return None
        try:
            return psycopg.connect(**params, autocommit=True, application_name="pytest-seqdrift")
        except psycopg.Error:
            return None

    def database_id(self) -> DatabaseId:
        """Which database this is, whatever host name or socket reached it: the server
        (its start time and port) and the database's name."""
        ((started, port, name, oid),) = self.run(_DATABASE_ID)
        return DatabaseId(str(started), str(port), str(name), int(oid))

    def lock_holders(self) -> list[str]:
        """The other sessions of this database that hold a lock in an open transaction,
        one line each (pid, state, since when, what they ran last): who a lock timeout
        waited for."""
        return [
            f"pid {pid} ({state}{f' for {age:.1f} s' if age is not None else ''}"
            f"{f', last: {printable(query)}' if query else ''})"
            for pid, state, age, query in self.run(_LOCK_HOLDERS)
        ]

    @contextmanager
    def scratch(self, *, lock_timeout_ms: int) -> Iterator[None]:
        """A place to write that is undone: the caller's transaction gets a savepoint, an
        idle connection a transaction of its own; both are rolled back on exit.
        (``nextval`` is not rolled back: restoring sequences is the caller's job.)"""
        own = self._usable("probing it")
        autocommit = self._get_autocommit()
        if own:
            self._set_autocommit(True)
            self.run("BEGIN")
        else:
            try:
                self.run("SAVEPOINT seqdrift_probe")
            except self.Error as exc:
                if sqlstate(exc) == IN_FAILED_TRANSACTION:
                    raise CannotCheck(_in_failed_transaction("probing it")) from None
                raise
        timeout = ("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"])
        try:
            self.run(*timeout)
            if not own:
                self._fire_deferred(timeout)
            yield
        finally:
            self._undo(own, autocommit, "seqdrift_probe")

    def _fire_deferred(self, timeout: Statement) -> None:
        """Inside the caller's transaction, run its pending deferred constraint checks
        now (Django makes every foreign key ``DEFERRABLE INITIALLY DEFERRED``): while a
        table has such events pending, PostgreSQL refuses to ALTER it ("pending trigger
        events"), and the probe drops constraints. Rolling the probe's savepoint back
        marks those events pending again and restores the constraints' modes -- which
        only that savepoint's own level remembers, so the mode is set right there, not
        in a savepoint of its own -- and the caller's COMMIT checks them as it would
        have. A check that fails now is left for the COMMIT; the tables it concerns are
        then probed without ALTER."""
        try:
            self.run("SET CONSTRAINTS ALL IMMEDIATE")
        except self.Error:
            if self.broken:
                raise
            self.run("ROLLBACK TO SAVEPOINT seqdrift_probe")
            self.run(*timeout)

    def _undo(self, own: bool, autocommit: bool, savepoint: str, then: Then | None = None) -> None:
        if self.closed or self.broken:
            return
        try:
            if then is not None and then.statements:
                then.rows = self._read_then_undo(own, savepoint, then.statements)
            elif own:
                self.run("ROLLBACK")
            else:
                self._end_savepoint(savepoint, rollback=True)
        finally:
            if own and not self.closed and self._status() == _IDLE:
                self._set_autocommit(autocommit)

    def _read_then_undo(
        self, own: bool, savepoint: str, reads: Seq[Statement]
    ) -> list[Rows] | None:
        """``reads``, then the rollback of the transaction or savepoint, in one round
        trip; their rows (None where one failed: the rollback is sent again alone)."""
        ending: list[Statement] = (
            [("ROLLBACK", ())]
            if own
            else [
                (f"ROLLBACK TO SAVEPOINT {savepoint}", ()),
                (f"RELEASE SAVEPOINT {savepoint}", ()),
            ]
        )
        try:
            return self._send([*reads, *ending])[: len(reads)]
        except self.Error:
            if self.broken:
                raise
        if own:
            self.run("ROLLBACK")
        else:
            self._end_savepoint(savepoint, rollback=True)
        return None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The caller's transaction, or on an idle connection one of our own, committed at
        the end (what runs in it reads, or sets sequences, which no rollback undoes). Never
        leaves behind a transaction the driver opened implicitly."""
        if self._status() != _IDLE:
            yield
            return
        autocommit = self._get_autocommit()
        self._set_autocommit(True)
        self.run("BEGIN")
        try:
            yield
        except BaseException:
            if not (self.closed or self.broken) and self._status() != _IDLE:
                self.run("ROLLBACK")
            raise
        else:
            self.run("COMMIT")
        finally:
            if not self.closed and self._status() == _IDLE:
                self._set_autocommit(autocommit)

    def batch(
        self, statements: Seq[Statement], *, release_locks: bool = False, replay: bool = True
    ) -> list[Rows | ReadFailure]:
        """Run statements in as few round trips as the driver allows. When one fails (a
        lock timeout, a privilege), run them again one by one, each under a savepoint, so
        that the failure is reported against its statement and the rest still answer --
        or, with ``replay=False`` (statements that only work together), answer every
        statement with the failure.

        ``release_locks``: the statements only read; roll their savepoint back once their
        rows are in, which releases the locks they took (a transaction holds every lock
        until it ends, and the lock table is shared and finite: reading thousands of
        tables in one transaction fails with "out of shared memory"). The snapshot of the
        enclosing transaction is not affected."""
        if not statements:
            return []
        for query, params in statements:
            _names_without_parameters(query, params)
        if self._status() == _IDLE:
            # savepoints need a transaction: open one for the batch
            with self.transaction():
                return self.batch(statements, release_locks=release_locks, replay=replay)
        # the savepoint's commands travel with the statements: one round trip in all
        closing: list[Statement] = [("RELEASE SAVEPOINT seqdrift_batch", ())]
        if release_locks:
            closing.insert(0, ("ROLLBACK TO SAVEPOINT seqdrift_batch", ()))
        try:
            answers = self._send([("SAVEPOINT seqdrift_batch", ()), *statements, *closing])
        except self.Error as exc:
            if self.broken:
                raise
            self.run("ROLLBACK TO SAVEPOINT seqdrift_batch")
            if not replay:
                self.run("RELEASE SAVEPOINT seqdrift_batch")
                return [_failure(exc)] * len(statements)
            results = [self._one(q, p, release_locks) for q, p in statements]
            self._end_savepoint("seqdrift_batch", rollback=release_locks)
            return results
        return list(answers[1 : 1 + len(statements)])

    def _one(self, query: Query, params: Seq[Any], release_locks: bool) -> Rows | ReadFailure:
        try:
            with self.savepoint("seqdrift_one", rollback=release_locks):
                return self.run(query, params)
        except self.Error as exc:
            if self.broken:
                raise
            return _failure(exc)

    @contextmanager
    def savepoint(self, name: str, *, rollback: bool = False) -> Iterator[None]:
        """A savepoint around the block, released at its end; rolled back to first when
        the block raises, or always with ``rollback`` (which undoes what the block wrote
        and lets go of the locks it took). A lost connection is left alone."""
        self.run(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if not (self.closed or self.broken):
                self._end_savepoint(name, rollback=True)
            raise
        self._end_savepoint(name, rollback=rollback)

    def _end_savepoint(self, name: str, *, rollback: bool) -> None:
        """Release the savepoint (one of ours, named without quotes), rolled back to
        first with ``rollback``: one round trip."""
        if rollback:
            self._send([(f"ROLLBACK TO SAVEPOINT {name}", ()), (f"RELEASE SAVEPOINT {name}", ())])
        else:
            self.run(f"RELEASE SAVEPOINT {name}")


@dataclass
class Then:
    """Statements that only read, run as a ``read_only`` block ends, with the round trip
    that ends it; their rows once it has (None: one failed, or the block raised)."""

    statements: Seq[Statement]
    rows: list[Rows] | None = None


def _rows(answers: Seq[Rows | ReadFailure]) -> list[Rows] | None:
    """A batch's rows, None where one statement failed."""
    if any(isinstance(a, ReadFailure) for a in answers):
        return None
    return [a for a in answers if not isinstance(a, ReadFailure)]


@dataclass(frozen=True)
class DatabaseId:
    """One database of one server, however it was reached."""

    server_started: str
    port: str
    name: str
    oid: int  # a database dropped and created again under the same name is another one


_DATABASE_ID = """
SELECT pg_postmaster_start_time()::text, current_setting('port'), d.datname::text, d.oid::int8
FROM pg_database d WHERE d.datname = current_database()
"""

_LOCK_HOLDERS = r"""
SELECT a.pid, a.state,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), 80)
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.xact_start IS NOT NULL
  AND EXISTS (SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.relation IS NOT NULL)
ORDER BY a.xact_start
"""


def _timeouts(lock_timeout_ms: int, statement_timeout_ms: int | None) -> list[Statement]:
    setting = "SELECT set_config(%s, %s, true)"
    # and no JIT: the catalog queries over thousands of tables have costs that make the
    # server compile them, which takes a second to save a few milliseconds
    out: list[Statement] = [
        (
            "SELECT set_config('lock_timeout', %s, true), set_config('jit', 'off', true)",
            [f"{int(lock_timeout_ms)}ms"],
        )
    ]
    if statement_timeout_ms is not None:
        out.append((setting, ["statement_timeout", f"{int(statement_timeout_ms)}ms"]))
    return out
