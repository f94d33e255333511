"""What a user hands us -- a driver's connection, a SQLAlchemy Engine or Connection, a
Django connection -- unwrapped to a session."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

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
    raise NotSupported(
        f"cannot check through {_kind(raw)} ({what}): pytest-seqdrift drives PostgreSQL "
        "through psycopg 3 or psycopg2"
    )


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
