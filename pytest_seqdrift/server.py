"""Find PostgreSQL's ``pg_ctl`` and make it safe to run as root.

PostgreSQL refuses to run as root. As root, the server is started through
``unshare --user``: inside a new user namespace root appears as an unprivileged user,
and no system user has to be created. Used by the test bed and the demo.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from .connections import SeqdriftError


class ServerNotFound(SeqdriftError):
    """No usable PostgreSQL server binaries were found."""


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parts
    for part in reversed(parts):
        if part.replace(".", "").isdigit():
            return tuple(int(p) for p in part.split("."))
    return ()


def find_pg_ctl() -> str:
    """``SEQDRIFT_PG_CTL``, then ``pg_config --bindir``, ``PATH``, ``/usr/lib/postgresql/*/bin``."""
    looked: list[str] = []
    env = os.environ.get("SEQDRIFT_PG_CTL")
    if env:
        if os.access(env, os.X_OK):
            return env
        looked.append(f"SEQDRIFT_PG_CTL={env} (not executable)")
    else:
        looked.append("SEQDRIFT_PG_CTL (not set)")
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        candidate = os.path.join(bindir, "pg_ctl")
        if os.access(candidate, os.X_OK):
            return candidate
        looked.append(f"pg_config --bindir: {candidate} (missing)")
    except (OSError, subprocess.SubprocessError):
        looked.append("pg_config --bindir (no pg_config)")
    on_path = shutil.which("pg_ctl")
    if on_path:
        return on_path
    looked.append("pg_ctl on PATH (none)")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if found:
        return found[-1]
    looked.append("/usr/lib/postgresql/*/bin/pg_ctl (none)")
    raise ServerNotFound(
        "no PostgreSQL server binaries found; looked at: "
        + "; ".join(looked)
        + ". Install PostgreSQL (e.g. apt-get install postgresql) or set SEQDRIFT_PG_CTL."
    )


def root_safe(pg_ctl: str) -> str:
    """``pg_ctl`` itself, or as root a wrapper that runs it in a user namespace."""
    if os.geteuid() != 0:
        return pg_ctl
    unshare = shutil.which("unshare")
    works = unshare is not None and (
        subprocess.run([unshare, "--user", "true"], capture_output=True, check=False).returncode
        == 0
    )
    if not works:
        raise ServerNotFound(
            "running as root, and PostgreSQL refuses to run as root; user namespaces "
            "(unshare --user) are not available here to work around it. Run as a "
            "non-root user, or point --seqdrift-dsn at a running server."
        )
    digest = hashlib.sha256(pg_ctl.encode()).hexdigest()[:12]
    wrapper_dir = Path(tempfile.gettempdir()) / f"seqdrift-pgctl-{digest}"
    wrapper_dir.mkdir(mode=0o755, exist_ok=True)
    wrapper = wrapper_dir / "pg_ctl"
    script = f'#!/bin/sh\nexec {unshare} --user {pg_ctl} "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != script:
        tmp = wrapper_dir / f".pg_ctl.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(wrapper)
    return str(wrapper)


@contextmanager
def throwaway_server(dbname: str = "seqdrift_demo", postgres_options: str = "") -> Iterator[str]:
    """Start a private PostgreSQL in a temporary directory and yield a DSN for a fresh
    database on it; stop it and remove everything on exit. For demos and scripts."""
    import port_for
    from pytest_postgresql.executors import PostgreSQLExecutor

    pg_ctl = root_safe(find_pg_ctl())
    with tempfile.TemporaryDirectory(prefix="seqdrift-pg-") as tmp:
        os.chmod(tmp, 0o755)  # the server may run as another uid (see root_safe)
        port = port_for.select_random()
        executor = PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=port,
            datadir=os.path.join(tmp, "data"),
            unixsocketdir=tmp,
            logfile=os.path.join(tmp, "postgresql.log"),
            startparams="-w",
            postgres_options=postgres_options,
            dbname=dbname,
        )
        executor.start()
        try:
            executor.wait_for_postgres()
            base = f"host=127.0.0.1 port={port} user={executor.user}"
            with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            yield f"{base} dbname={dbname}"
        finally:
            executor.stop()
