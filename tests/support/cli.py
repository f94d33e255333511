"""Helpers for the tests of the ``seqdrift`` command: run the installed console script,
make roles, read back sequence states and table contents, stand in for servers that are
not PostgreSQL (or too old to be one we can check)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]

_found = shutil.which("seqdrift", path=os.path.dirname(sys.executable))
assert _found is not None, f"the seqdrift console script is not installed next to {sys.executable}"
SEQDRIFT: str = _found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without libpq's PG* variables or NO_COLOR from outside, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("NO_COLOR", "TERM")
    }
    env.update(extra)
    return env


def seqdrift(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``seqdrift`` console script."""
    return subprocess.run(
        [SEQDRIFT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else clean_env(),
    )


def dsn(conn: Conn, **override: str) -> str:
    info = conn.info
    params = {"host": info.host, "port": str(info.port), "user": info.user, "dbname": info.dbname}
    params.update(override)
    return " ".join(f"{k}={v}" for k, v in params.items())


@contextmanager
def app_connection(db: Conn, schema: str) -> Iterator[Conn]:
    """``schema`` made on the test's database, then a session-long connection to it in
    autocommit, an application's; no discovery remembered before it or after."""
    from pytest_seqdrift.read import remembered

    db.execute(schema)
    remembered.forget()
    try:
        with psycopg.connect(dsn(db), autocommit=True) as conn:
            yield conn
    finally:
        remembered.forget()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@contextmanager
def login_role(db: Conn) -> Iterator[str]:
    """A role that can log in (the test server trusts local connections). Roles are
    cluster-wide: a unique name, and everything it was granted dropped afterwards."""
    role = f"seqdrift_cli_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        yield role
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.execute(sql.SQL("DROP ROLE {}").format(ident))


def sequence_states(db: Conn) -> dict[str, tuple[int, int, bool]]:
    """Every sequence's (last_value, log_cnt, is_called), read from the sequence itself."""
    names = [
        r[0]
        for r in db.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' ORDER BY 1"
        )
    ]
    states: dict[str, tuple[int, int, bool]] = {}
    for name in names:  # schema-qualified, quoted where needed
        query = sql.SQL("SELECT last_value, log_cnt, is_called FROM {}").format(sql.SQL(name))
        row = db.execute(query).fetchone()
        assert row is not None
        states[name] = (int(row[0]), int(row[1]), bool(row[2]))
    return states


def table_contents(db: Conn) -> dict[str, str]:
    """An md5 of every user table's rows, in a stable order."""
    tables = [
        (r[0], r[1])
        for r in db.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        )
    ]
    out: dict[str, str] = {}
    for schema, table in tables:
        ident = sql.Identifier(schema, table)
        row = db.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} AS t"
            ).format(ident)
        ).fetchone()
        out[f"{schema}.{table}"] = f"{row}"
    return out


def next_value(db: Conn, sequence: str) -> int:
    """The value the sequence's next nextval returns (it must not be exhausted)."""
    row = db.execute(
        sql.SQL(
            "SELECT CASE WHEN s.is_called THEN s.last_value + q.seqincrement ELSE s.last_value END "
            "FROM {} AS s, pg_sequence q WHERE q.seqrelid = %s::regclass"
        ).format(sql.SQL(sequence)),
        [sequence],
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- servers that are not the PostgreSQL we can check ----------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _serve(sock: socket.socket, reply: str, stop: threading.Event) -> None:
    """Answer each connection like an HTTP server (``reply == "http"``) or like a
    PostgreSQL 9.6 that lets everyone in (``reply == "9.6"``)."""
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(5)
        with conn:
            while True:
                head = conn.recv(8)
                if len(head) < 8:
                    break
                length, code = struct.unpack("!ii", head)
                if length > 8:
                    conn.recv(length - 8)
                if reply == "http":
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                    break
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: "no"
                    conn.sendall(b"N")
                    continue
                out = _message(b"R", struct.pack("!i", 0))  # AuthenticationOk
                for key, value in (
                    ("server_version", "9.6.24"),
                    ("server_encoding", "UTF8"),
                    ("client_encoding", "UTF8"),
                    ("standard_conforming_strings", "on"),
                    ("integer_datetimes", "on"),
                    ("DateStyle", "ISO, MDY"),
                ):
                    out += _message(b"S", key.encode() + b"\0" + value.encode() + b"\0")
                out += _message(b"K", struct.pack("!ii", 1, 2)) + _message(b"Z", b"I")
                conn.sendall(out)
                conn.recv(64)  # Terminate, or the connection closing
                break


@contextmanager
def fake_server(reply: str) -> Iterator[int]:
    """A local port where something that is not a checkable PostgreSQL answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(sock, reply, stop), daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def psql_path() -> str | None:
    """psql next to the server the tests run on, else on PATH; None where there is none."""
    from pytest_seqdrift.testbed import find_pg_ctl

    near_server = os.path.join(os.path.dirname(find_pg_ctl()), "psql")
    return near_server if os.access(near_server, os.X_OK) else shutil.which("psql")


def run_psql_file(psql: str, path: str, conn: Conn) -> subprocess.CompletedProcess[str]:
    """Run a script as a person would: ``psql -X -v ON_ERROR_STOP=1 -f``."""
    return subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", path, dsn(conn)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )


# The seed story's finding (tests/examples/seed_story) as the JSON contract spells it,
# its fix_sql aside: the copied ids 7, 9, 12, 14, 16 and a sequence left at 1.
SEED_FINDING: dict[str, Any] = {
    "kind": "collision",
    "schema": "public",
    "table": "profile_billingaddress",
    "column": "id",
    "sequence": "public.profile_billingaddress_id_seq",
    "next_value": 1,
    "first_collision": 7,
    "inserts_until_collision": 6,
    "max_existing": 16,
}
