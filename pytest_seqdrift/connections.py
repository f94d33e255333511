"""Connection adapters: the engine talks to a ``Session``, whatever the driver.

A session runs the check inside a transaction it owns, and leaves the connection as it
found it:

* an idle connection gets its own ``REPEATABLE READ, READ ONLY`` transaction, rolled
  back at the end. The snapshot is taken by the first (discovery) query, before any
  sequence is read, so every column bound is older than the sequence state it is
  compared with: concurrent inserts cannot produce a false finding;
* a connection inside the user's own transaction gets a savepoint, rolled back at the
  end: the user's transaction, its settings and its snapshot are left alone, and the
  check sees the user's uncommitted rows;
* a connection in a failed transaction cannot be checked: that is an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

Query = str | sql.SQL | sql.Composed
Statement = tuple[Query, Seq[Any]]


class SeqdriftError(Exception):
    """Base class of the errors pytest-seqdrift raises."""


class CannotCheck(SeqdriftError):
    """The database could not be checked at all (connection, privilege, server)."""


MIN_SERVER_VERSION = 110000  # pg_index.indnkeyatts appeared in PostgreSQL 11


def describe(exc: BaseException) -> str:
    """One line for an error: the server's primary message, without its detail."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) or str(exc) or type(exc).__name__
    return " ".join(message.split())


class PsycopgSession:
    """A psycopg 3 connection, driven by the engine."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.statements = 0  # statements sent, for benchmarks and tests
        self.round_trips = 0  # waits for the server: one per statement, one per pipeline

    @contextmanager
    def read_only(
        self, *, lock_timeout_ms: int, statement_timeout_ms: int | None = None
    ) -> Iterator[None]:
        conn = self.conn
        if conn.closed:
            raise CannotCheck("the connection is closed")
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise CannotCheck(
                "the connection is in a failed transaction: roll it back before checking sequences"
            )
        if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
            raise CannotCheck(f"the connection is busy ({status.name}): cannot check it now")
        if conn.info.server_version < MIN_SERVER_VERSION:
            raise CannotCheck(
                f"PostgreSQL {conn.info.server_version} is too old: 11 or later is needed"
            )
        own = status == TransactionStatus.IDLE
        autocommit = conn.autocommit
        try:
            if own:
                conn.autocommit = True
                self.run("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            else:
                self.run("SAVEPOINT seqdrift_check")
            self.run(
                sql.SQL("SELECT set_config('lock_timeout', %s, true)"),
                [f"{int(lock_timeout_ms)}ms"],
            )
            if statement_timeout_ms is not None:
                self.run(
                    sql.SQL("SELECT set_config('statement_timeout', %s, true)"),
                    [f"{int(statement_timeout_ms)}ms"],
                )
            yield
        except psycopg.Error as exc:
            raise CannotCheck(describe(exc)) from exc
        finally:
            self._finish(own, autocommit)

    def _finish(self, own: bool, autocommit: bool) -> None:
        conn = self.conn
        if conn.closed or conn.broken:
            return
        try:
            if own:
                self.run("ROLLBACK")
            else:
                self.run("ROLLBACK TO SAVEPOINT seqdrift_check")
                self.run("RELEASE SAVEPOINT seqdrift_check")
        finally:
            if own and conn.info.transaction_status == TransactionStatus.IDLE:
                conn.autocommit = autocommit

    def run(
        self, query: Query, params: Seq[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        self.statements += 1
        self.round_trips += 1
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []

    def query_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.statements += 1
        self.round_trips += 1
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def batch(self, statements: Seq[Statement]) -> list[list[tuple[Any, ...]] | CannotCheck]:
        """Run statements in one round trip (pipeline mode). When one fails (a lock
        timeout, a privilege), run them again one by one, each under a savepoint, so
        that the failure is reported against its statement and the rest still answer."""
        if not statements:
            return []
        conn = self.conn
        if conn.info.transaction_status == TransactionStatus.IDLE:
            # savepoints need a transaction: open one for the batch
            with conn.transaction():
                return self.batch(statements)
        self.run("SAVEPOINT seqdrift_batch")
        try:
            with conn.pipeline():
                cursors = [conn.execute(q, p) for q, p in statements]
            self.statements += len(statements)
            self.round_trips += 1
            results: list[list[tuple[Any, ...]] | CannotCheck] = [c.fetchall() for c in cursors]
        except psycopg.Error:
            if conn.broken:
                raise
            self.run("ROLLBACK TO SAVEPOINT seqdrift_batch")
            results = [self._one(q, p) for q, p in statements]
        self.run("RELEASE SAVEPOINT seqdrift_batch")
        return results

    def _one(self, query: Query, params: Seq[Any]) -> list[tuple[Any, ...]] | CannotCheck:
        self.run("SAVEPOINT seqdrift_one")
        try:
            rows = self.run(query, params)
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            self.run("ROLLBACK TO SAVEPOINT seqdrift_one")
            return CannotCheck(describe(exc))
        self.run("RELEASE SAVEPOINT seqdrift_one")
        return rows


def session_for(conn: Any) -> PsycopgSession:
    """The session for a connection object. psycopg 3 for now; psycopg2, SQLAlchemy and
    Django connections come with the integrations."""
    if isinstance(conn, PsycopgSession):
        return conn
    if isinstance(conn, psycopg.Connection):
        return PsycopgSession(conn)
    raise TypeError(
        f"cannot check a {type(conn).__module__}.{type(conn).__qualname__}: "
        "pass a psycopg 3 connection"
    )
