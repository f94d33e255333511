"""What a user hands us -- a driver's connection, a SQLAlchemy Engine or Connection, a
Django connection -- unwrapped to a session."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg

from pytest_seqdrift.db.aio import async_session, in_greenlet, is_async_connection, on_loop
from pytest_seqdrift.db.drivers import Psycopg2Session, PsycopgSession
from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import CannotCheck, NotSupported


def _loaded(module: str, name: str) -> Any:
    """A class of an optional library, only when the library is already imported (a
    user who hands us one of its objects has imported it)."""
    mod = sys.modules.get(module)
    found = getattr(mod, name, None) if mod is not None else None
    return found if isinstance(found, type) else None


def _kind(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


_ACCEPTED = (
    "pass a psycopg 3 or psycopg2 connection, a SQLAlchemy Engine or Connection, "
    "or a Django connection"
)


def _not_postgresql(database: str, what: str) -> NotSupported:
    return NotSupported(
        f"cannot check a {database} database: pytest-seqdrift checks PostgreSQL only "
        f"(this is {what})"
    )


def _driver_session(raw: Any, what: str) -> Session:
    if isinstance(raw, psycopg.Connection):
        return PsycopgSession(raw)
    cls = _loaded("psycopg2.extensions", "connection")
    if cls is not None and isinstance(raw, cls):
        return Psycopg2Session(raw)
    if is_async_connection(raw):
        return _in_greenlet(raw, f"{what} ({_kind(raw)})")
    raise NotSupported(
        f"cannot check through {_kind(raw)} ({what}): pytest-seqdrift drives PostgreSQL "
        "through psycopg 3, psycopg2 or asyncpg"
    )


def _in_greenlet(raw: Any, what: str) -> Session:
    """An async driver's connection handed to the synchronous API: usable where
    SQLAlchemy runs the caller synchronously on the event loop (``run_sync``, Alembic's
    async ``env.py``), refused elsewhere with what to call instead."""
    wait = in_greenlet()
    if wait is None:
        raise NotSupported(f"{what} is asynchronous: use `await pytest_seqdrift.acheck(conn)`")
    return async_session(raw, wait)


def _sqlalchemy_dialect(obj: Any) -> None:
    dialect = obj.dialect
    what = f"a SQLAlchemy {type(obj).__name__} with the {dialect.name}+{dialect.driver} dialect"
    if dialect.name != "postgresql":
        raise _not_postgresql(_DATABASE_NAMES.get(dialect.name, dialect.name), what)


_DATABASE_NAMES = {"sqlite": "SQLite", "mysql": "MySQL", "mariadb": "MariaDB", "oracle": "Oracle"}


def _django_wrapper(obj: Any) -> Any | None:
    """A Django ``DatabaseWrapper`` for ``connections[alias]`` or ``django.db.connection``
    (a proxy to the default alias), else None."""
    wrapper_cls = _loaded("django.db.backends.base.base", "BaseDatabaseWrapper")
    if wrapper_cls is None:
        return None
    if isinstance(obj, wrapper_cls):
        return obj
    proxy_cls = _loaded("django.utils.connection", "ConnectionProxy")
    if proxy_cls is not None and isinstance(obj, proxy_cls):
        return importlib.import_module("django.db").connections[obj.alias]
    return None


def session_for(conn: Any) -> Session:
    """The session for a connection that needs no opening: a psycopg 3 or psycopg2
    connection, a SQLAlchemy ``Connection``, a Django connection. (An ``Engine`` lends a
    connection from its pool: use ``open_session``.)"""
    if isinstance(conn, Session):
        return conn
    if isinstance(conn, psycopg.Connection):
        return PsycopgSession(conn)
    pg2 = _loaded("psycopg2.extensions", "connection")
    if pg2 is not None and isinstance(conn, pg2):
        return Psycopg2Session(conn)
    if is_async_connection(conn):
        return _in_greenlet(conn, _kind(conn))
    if _async_sqlalchemy(conn) is not None:
        raise NotSupported(
            f"a SQLAlchemy {type(conn).__name__} is asynchronous: "
            "use `await pytest_seqdrift.acheck(conn)`"
        )
    sa_connection = _loaded("sqlalchemy.engine", "Connection")
    if sa_connection is not None and isinstance(conn, sa_connection):
        _sqlalchemy_dialect(conn)
        if conn.closed:
            raise CannotCheck("the SQLAlchemy Connection is closed")
        return _driver_session(conn.connection.driver_connection, "a SQLAlchemy Connection")
    wrapper = _django_wrapper(conn)
    if wrapper is not None:
        what = f"Django's connections[{wrapper.alias!r}], engine {wrapper.settings_dict['ENGINE']}"
        if wrapper.vendor != "postgresql":
            raise _not_postgresql(wrapper.display_name, what)
        wrapper.ensure_connection()
        return _driver_session(wrapper.connection, what)
    sa_engine = _loaded("sqlalchemy.engine", "Engine")
    if sa_engine is not None and isinstance(conn, sa_engine):
        raise TypeError("a SQLAlchemy Engine lends a connection: use open_session(engine)")
    if type(conn).__module__ == "sqlite3":
        raise _not_postgresql("SQLite", f"a {_kind(conn)}")
    if type(conn).__module__.split(".")[0] in ("MySQLdb", "pymysql", "mysql"):
        raise _not_postgresql("MySQL", f"a {_kind(conn)}")
    raise NotSupported(f"cannot check a {_kind(conn)}: {_ACCEPTED}")


@contextmanager
def open_session(conn: Any) -> Iterator[Session]:
    """The session for anything ``session_for`` takes, and for a SQLAlchemy ``Engine``:
    a connection is borrowed from its pool for the block and given back after."""
    sa_engine = _loaded("sqlalchemy.engine", "Engine")
    if sa_engine is not None and isinstance(conn, sa_engine):
        _sqlalchemy_dialect(conn)
        raw = conn.raw_connection()
        try:
            yield _driver_session(raw.driver_connection, "a SQLAlchemy Engine")
        finally:
            raw.close()
        return
    yield session_for(conn)


# -- what an async caller hands us ---------------------------------------------------------

T = TypeVar("T")

_ASYNC_SQLALCHEMY = ("AsyncEngine", "AsyncConnection", "AsyncSession")


def _async_sqlalchemy(obj: Any) -> str | None:
    """Which of SQLAlchemy's asyncio classes ``obj`` is, if any."""
    for name in _ASYNC_SQLALCHEMY:
        cls = _loaded("sqlalchemy.ext.asyncio", name)
        if cls is not None and isinstance(obj, cls):
            return name
    return None


def is_async_object(obj: Any) -> bool:
    """Something only ``open_async_session`` takes: an async driver's connection or
    pool, or one of SQLAlchemy's asyncio objects."""
    pool = _loaded("asyncpg.pool", "Pool")
    return (
        is_async_connection(obj)
        or (pool is not None and isinstance(obj, pool))
        or _async_sqlalchemy(obj) is not None
    )


_ACCEPTED_ASYNC = (
    "pass an asyncpg connection or pool, a psycopg 3 AsyncConnection, or a SQLAlchemy "
    "AsyncEngine, AsyncConnection or AsyncSession"
)


@asynccontextmanager
async def open_async_session(conn: Any) -> AsyncIterator[Session]:
    """The session for what an async caller hands us, for the engine to run in a worker
    thread (``in_thread``): each statement runs on the caller's event loop, on the
    caller's connection -- inside its transaction where one is open. A pool or an
    engine lends a connection for the block."""
    if isinstance(conn, Session):
        yield conn
        return
    loop = asyncio.get_running_loop()
    if is_async_connection(conn):
        yield async_session(conn, on_loop(loop))
        return
    pool = _loaded("asyncpg.pool", "Pool")
    if pool is not None and isinstance(conn, pool):
        async with conn.acquire() as raw:
            yield async_session(raw, on_loop(loop))
        return
    kind = _async_sqlalchemy(conn)
    if kind == "AsyncEngine":
        _sqlalchemy_dialect(conn)
        async with conn.connect() as connection:
            try:
                yield await _sqlalchemy_session(connection, loop, "a SQLAlchemy AsyncEngine")
            finally:
                # not back into the pool: its connections belong to the loop they were
                # made on, and the engine's next user may run on another (pytest-asyncio
                # gives each test a loop of its own)
                await connection.invalidate()
        return
    if kind == "AsyncConnection":
        _sqlalchemy_dialect(conn)
        if conn.closed:
            raise CannotCheck("the SQLAlchemy AsyncConnection is closed")
        yield await _sqlalchemy_session(conn, loop, "a SQLAlchemy AsyncConnection")
        return
    if kind == "AsyncSession":
        # the session's connection (begun by it, as its next statement would)
        connection = await conn.connection()
        _sqlalchemy_dialect(connection)
        yield await _sqlalchemy_session(connection, loop, "a SQLAlchemy AsyncSession")
        return
    if _synchronous(conn):
        raise NotSupported(f"a {_kind(conn)} is synchronous: use pytest_seqdrift.check(conn)")
    raise NotSupported(f"cannot check a {_kind(conn)} asynchronously: {_ACCEPTED_ASYNC}")


def _synchronous(conn: Any) -> bool:
    if isinstance(conn, psycopg.Connection) or _django_wrapper(conn) is not None:
        return True
    classes = (
        _loaded("psycopg2.extensions", "connection"),
        _loaded("sqlalchemy.engine", "Engine"),
        _loaded("sqlalchemy.engine", "Connection"),
    )
    return any(cls is not None and isinstance(conn, cls) for cls in classes)


async def _sqlalchemy_session(
    connection: Any, loop: asyncio.AbstractEventLoop, what: str
) -> Session:
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if not is_async_connection(driver):
        raise NotSupported(
            f"cannot check through {_kind(driver)} ({what}): pytest-seqdrift drives "
            "PostgreSQL asynchronously through asyncpg or psycopg 3"
        )
    return async_session(driver, on_loop(loop))


async def in_thread(conn: Any, work: Callable[[Session], T]) -> T:
    """``work(session)`` on what an async caller hands us: the engine's synchronous code
    in a worker thread, the driver's coroutines on the caller's loop.

    Cancelled (``asyncio.wait_for``, a test timeout), it still lets the work end first:
    midway, the caller's connection holds a transaction or savepoint of ours, which only
    the work's own end undoes -- the connection is handed back as it was found."""
    async with open_async_session(conn) as session:
        task = asyncio.ensure_future(asyncio.to_thread(work, session))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise
