"""The asynchronous drivers: asyncpg and psycopg 3's ``AsyncConnection``.

The engine is written once, as plain functions over a ``Session``. An async driver's
session is the same ``Session``, whose primitives hand each coroutine to a ``Waiter``
that returns its result:

* ``on_loop(loop)``: the engine runs in a worker thread (``asyncio.to_thread``), and
  each of the driver's coroutines runs on the caller's own event loop -- the loop the
  connection belongs to, while the caller's task awaits the thread. No loop of our own.
* ``in_greenlet()``: code that SQLAlchemy runs synchronously on the loop's thread (an
  ``AsyncConnection.run_sync`` callable, Alembic's async ``env.py``) awaits each
  coroutine through SQLAlchemy's own greenlet bridge.

What differs between the drivers' protocols stays here: asyncpg's numbered ``$1``
parameters, its lack of pipeline mode and of an "idle in failed transaction" status,
its statement cache. (The types it returns are psycopg's for every column the engine
reads -- all its queries cast ``"char"`` and the like to text; tests/test_shapes.py
compares the two drivers' reports over its whole corpus.)
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Sequence as Seq
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row, tuple_row

from pytest_seqdrift.db.drivers import _Psycopg
from pytest_seqdrift.db.session import _IDLE, _INTRANS, Params, Query, Rows, Session, Statement

T = TypeVar("T")
Waiter = Callable[[Awaitable[Any]], Any]


def on_loop(loop: asyncio.AbstractEventLoop) -> Waiter:
    """Run each coroutine on ``loop`` from a worker thread, and wait for its result."""
    owner = threading.get_ident()

    def wait(awaitable: Awaitable[T]) -> T:
        if threading.get_ident() == owner:
            _close(awaitable)
            raise RuntimeError(
                "an async connection's session runs in a worker thread: "
                "await pytest_seqdrift.acheck(conn), not check(conn), on the event loop"
            )
        return asyncio.run_coroutine_threadsafe(_coroutine(awaitable), loop).result()

    return wait


def in_greenlet() -> Waiter | None:
    """SQLAlchemy's bridge, when the caller runs inside it (``run_sync``), else None."""
    concurrency = sys.modules.get("sqlalchemy.util.concurrency")
    if concurrency is None or not concurrency.in_greenlet():
        return None
    wait: Waiter = getattr(concurrency, "await_", None) or concurrency.await_only
    return wait


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _close(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning on top of the error


def is_async_connection(conn: Any) -> bool:
    """An asyncpg connection or psycopg 3 ``AsyncConnection``."""
    return isinstance(conn, psycopg.AsyncConnection) or _asyncpg_class(conn, "Connection")


def _asyncpg_class(obj: Any, name: str) -> bool:
    module = sys.modules.get("asyncpg")
    cls = getattr(module, name, None) if module is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def async_session(conn: Any, wait: Waiter) -> Session:
    """The session for an asyncpg connection or a psycopg ``AsyncConnection``."""
    if isinstance(conn, psycopg.AsyncConnection):
        return AsyncPsycopgSession(conn, wait)
    return AsyncpgSession(conn, wait)


# -- psycopg 3, async --------------------------------------------------------------------


class AsyncPsycopgSession(_Psycopg):
    """A psycopg 3 ``AsyncConnection``: as ``PsycopgSession``, batches in one round trip
    (pipeline mode), each driver call awaited through the waiter."""

    conn: psycopg.AsyncConnection[Any]

    def __init__(self, conn: psycopg.AsyncConnection[Any], wait: Waiter) -> None:
        super().__init__(conn)
        self.wait = wait

    def _set_autocommit(self, value: bool) -> None:
        if self.conn.autocommit != value:
            self.wait(self.conn.set_autocommit(value))

    def _execute(self, query: Query, params: Params) -> Rows:
        rows: Rows = self.wait(self._fetch(query, params))
        return rows

    async def _fetch(self, query: Query, params: Params) -> Rows:
        async with psycopg.AsyncCursor(self.conn, row_factory=tuple_row) as cur:
            await cur.execute(query, params or None, prepare=False)  # see PsycopgSession
            return await cur.fetchall() if cur.description is not None else []

    def _execute_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.wait(self._fetch_dicts(query, params))
        return rows

    async def _fetch_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with psycopg.AsyncCursor(self.conn, row_factory=dict_row) as cur:
            # prepared as the connection prepares (see ``Session.query_dicts``)
            await cur.execute(query, params)
            return await cur.fetchall()

    def _send_batch(self, statements: Seq[Statement]) -> list[Rows]:
        answers: list[Rows] = self.wait(self._pipeline(statements))
        self.statements += len(statements)
        self.round_trips += 1
        return answers

    async def _pipeline(self, statements: Seq[Statement]) -> list[Rows]:
        conn = self.conn
        cursors: list[psycopg.AsyncCursor[tuple[Any, ...]]] = []
        try:
            async with conn.pipeline():
                for q, p in statements:
                    cur = psycopg.AsyncCursor(conn, row_factory=tuple_row)
                    cursors.append(cur)
                    await cur.execute(q, p or None, prepare=False)  # see PsycopgSession
            return [await c.fetchall() if c.description is not None else [] for c in cursors]
        finally:
            for c in cursors:
                await c.close()


# -- asyncpg -----------------------------------------------------------------------------

# psycopg's placeholders, as the engine writes its statements: %s, %(name)s, and %% for
# a percent sign (only in a statement sent with parameters, as psycopg reads them)
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]+)\))?(?P<kind>[sbt%])")


def numbered(query: str, params: Params) -> tuple[str, list[Any]]:
    """A psycopg statement and its parameters as asyncpg takes them: ``$1``, ``$2``..."""
    if not params:
        return query, []
    args: list[Any] = []
    names: dict[str, int] = {}
    values = list(params) if not isinstance(params, Mapping) else []

    def replace(match: re.Match[str]) -> str:
        if match["kind"] == "%":
            return "%"
        name = match["name"]
        if name is None:
            args.append(values[len(args)])
            return f"${len(args)}"
        if name not in names:
            assert isinstance(params, Mapping)
            args.append(params[name])
            names[name] = len(args)
        return f"${names[name]}"

    text = _PLACEHOLDER.sub(replace, query)
    if not isinstance(params, Mapping) and len(args) != len(values):
        raise TypeError(f"{len(values)} parameters for {len(args)} placeholders: {query!r}")
    return text, args


class AsyncpgSession(Session):
    """An asyncpg connection. asyncpg has no pipeline: a batch costs a round trip per
    statement, as psycopg2's does. Statements are composed with ``psycopg.sql`` like
    every other driver's, rendered to text, their placeholders numbered.

    asyncpg reports only whether a transaction is open, not whether it failed: a
    failed one is told by the server's answer to the session's first statement
    (``Session.read_only`` and ``scratch`` turn that into the usual error)."""

    @property
    def may_prepare(self) -> bool:
        return False  # its users turn asyncpg's statement cache off for poolers; we cannot tell

    def __init__(self, conn: Any, wait: Waiter) -> None:
        super().__init__(conn)
        self.wait = wait
        asyncpg = importlib.import_module("asyncpg")  # optional: a user who has one has it
        self.Error = (asyncpg.PostgresError, asyncpg.InterfaceError)  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return bool(self.conn.is_closed())

    @property
    def broken(self) -> bool:
        return bool(self.conn.is_closed())

    def _status(self) -> int:
        return _INTRANS if self.conn.is_in_transaction() else _IDLE

    def _server_version(self) -> int:
        v = self.conn.get_server_version()  # PostgreSQL 10+: (major, 0, minor, ...)
        return int(v.major) * 10000 + (int(v.micro) if v.major >= 10 else int(v.minor) * 100)

    def _get_autocommit(self) -> bool:
        return True  # outside a transaction every statement commits on its own

    def _set_autocommit(self, value: bool) -> None:
        pass  # a transaction is only ever opened with BEGIN

    @staticmethod
    def _text(query: Query) -> str:
        return query if isinstance(query, str) else query.as_string(None)

    def _execute(self, query: Query, params: Params) -> Rows:
        records = self._fetch(self._text(query), params)
        return [tuple(r) for r in records]

    def _execute_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(r.items()) for r in self._fetch(query, params)]

    def _fetch(self, query: str, params: Params) -> list[Any]:
        text, args = numbered(query, params)
        self.round_trips += 1  # asyncpg prepares, then executes
        records: list[Any] = self.wait(self._prepared(text, args))
        return records

    async def _prepared(self, text: str, args: list[Any]) -> list[Any]:
        # a statement of its own, not one of the connection's statement cache: that is
        # the caller's, and a cached statement fails inside a transaction once the
        # tables it read were made again with other types
        statement = await self.conn.prepare(text)
        return list(await statement.fetch(*args))

    def _send_batch(self, statements: Seq[Statement]) -> list[Rows]:
        return [self.run(q, p) for q, p in statements]

    def connect_params(self) -> dict[str, Any] | None:
        """From what asyncpg connected with (its ``_addr`` and ``_params``; None where it
        does not tell, or the password came from a callable)."""
        addr, params = getattr(self.conn, "_addr", None), getattr(self.conn, "_params", None)
        if addr is None or params is None:
            return None
        password = getattr(params, "password", None)
        if password is not None and not isinstance(password, str):
            return None
        if isinstance(addr, str):  # a Unix socket: /dir/.s.PGSQL.5432
            host, port = os.path.dirname(addr), addr.rsplit(".", 1)[-1]
        else:
            host, port = str(addr[0]), str(addr[1])
        found = {"host": host, "port": port, "user": params.user, "dbname": params.database}
        sslmode = getattr(getattr(params, "sslmode", None), "name", None)
        if sslmode:
            found["sslmode"] = sslmode.replace("_", "-")
        return {**found, "password": password}
