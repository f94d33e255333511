"""The drivers a session runs on: psycopg 3 and psycopg2."""

from __future__ import annotations

import importlib
from collections.abc import Sequence as Seq
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from pytest_seqdrift.db.session import Params, Query, Rows, Session, Statement, _timeouts


class _Psycopg(Session):
    """What psycopg 3 tells without a round trip, alike for its sync and async
    connections (``conn.info`` and the flags)."""

    Error = psycopg.Error
    conn: Any

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    @property
    def broken(self) -> bool:
        return bool(self.conn.broken)

    def _status(self) -> int:
        return int(self.conn.info.transaction_status)

    def _server_version(self) -> int:
        return int(self.conn.info.server_version)

    def _get_autocommit(self) -> bool:
        return bool(self.conn.autocommit)

    def connect_params(self) -> dict[str, Any]:
        info = self.conn.info
        return {"conninfo": info.dsn, "password": info.password or None}


class PsycopgSession(_Psycopg):
    """A psycopg 3 connection. Batches go in one round trip (pipeline mode). Cursors are
    made here, not by the connection's ``cursor_factory``: Django's psycopg 3 backend sets
    client-side binding cursors, which have no pipeline."""

    conn: psycopg.Connection[Any]

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)

    def _set_autocommit(self, value: bool) -> None:
        if self.conn.autocommit != value:
            self.conn.autocommit = value

    def _execute(self, query: Query, params: Params) -> Rows:
        with psycopg.Cursor(self.conn, row_factory=tuple_row) as cur:
            # never prepared: the connection is the caller's, and its next user may have
            # dropped and made again, with other types, the tables a statement reads
            # ("cached plan must not change result type")
            cur.execute(query, params or None, prepare=False)
            return cur.fetchall() if cur.description is not None else []

    def _execute_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with psycopg.Cursor(self.conn, row_factory=dict_row) as cur:
            # prepared as the connection prepares (``prepare_threshold``): it reads only
            # the catalogs, whose types never change (see ``Session.query_dicts``)
            cur.execute(query, params)
            return cur.fetchall()

    def sibling(
        self, snapshot: str, *, lock_timeout_ms: int, statement_timeout_ms: int | None = None
    ) -> PsycopgSession | None:
        try:
            conn = psycopg.connect(**self.connect_params(), autocommit=True)
        except psycopg.Error:
            return None  # e.g. a password that came from a callback: read on one connection
        other = PsycopgSession(conn)
        try:
            other._send_batch(
                [
                    ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", ()),
                    (sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)), ()),
                    *_timeouts(lock_timeout_ms, statement_timeout_ms),
                ]
            )
        except psycopg.Error:
            conn.close()
            return None
        other.own_transaction = True  # the caller closes it, which ends its transaction
        return other

    def _send_batch(self, statements: Seq[Statement]) -> list[Rows]:
        conn = self.conn
        cursors: list[psycopg.Cursor[tuple[Any, ...]]] = []
        try:
            with conn.pipeline():
                for q, p in statements:
                    cur = psycopg.Cursor(conn, row_factory=tuple_row)
                    cursors.append(cur)
                    # never prepared: psycopg would take a statement of a pipeline the
                    # server aborted for prepared, and later name a statement that does
                    # not exist
                    cur.execute(q, p or None, prepare=False)
            self.statements += len(statements)
            self.round_trips += 1
            return [c.fetchall() if c.description is not None else [] for c in cursors]
        finally:
            for c in cursors:
                c.close()


class Psycopg2Session(Session):
    """A psycopg2 connection. psycopg2 has no pipeline: a batch costs one round trip per
    statement, under the same savepoint as psycopg 3's. ``psycopg.sql`` compositions are
    rendered to text first (identifiers quoted by psycopg, values passed as parameters)."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        psycopg2 = importlib.import_module("psycopg2")  # optional, and untyped
        self.Error = psycopg2.Error
        self._cursor = importlib.import_module("psycopg2.extensions").cursor

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    @property
    def broken(self) -> bool:
        return int(self.conn.closed) == 2

    def _status(self) -> int:
        return int(self.conn.get_transaction_status())

    def _server_version(self) -> int:
        return int(self.conn.server_version)

    def _get_autocommit(self) -> bool:
        return bool(self.conn.autocommit)

    def _set_autocommit(self, value: bool) -> None:
        if bool(self.conn.autocommit) != value:
            self.conn.autocommit = value

    @staticmethod
    def _text(query: Query) -> str:
        return query if isinstance(query, str) else query.as_string(None)

    def _execute(self, query: Query, params: Params) -> Rows:
        with self.conn.cursor(cursor_factory=self._cursor) as cur:
            cur.execute(self._text(query), params or None)
            return list(cur.fetchall()) if cur.description is not None else []

    def _execute_dicts(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.conn.cursor(cursor_factory=self._cursor) as cur:
            cur.execute(query, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _send_batch(self, statements: Seq[Statement]) -> list[Rows]:
        return [self.run(q, p) for q, p in statements]

    def connect_params(self) -> dict[str, Any]:
        params = dict(self.conn.get_dsn_parameters())
        params.pop("password", None)
        return {**params, "password": self.conn.info.password or None}
