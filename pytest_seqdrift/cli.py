"""The ``seqdrift`` command for live databases: ``check`` (strictly read-only) and ``fix``.

Exit codes: 0 no findings, 1 findings, 2 could not check (one line on stderr). The
engine does the work (``api.check``, ``fix.plan`` / ``fix.apply``); this module parses
arguments, connects the way ``psql`` does, and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pytest_seqdrift import __version__, checker, cutover, fix, render
from pytest_seqdrift.db.session import MIN_SERVER_VERSION, error_line
from pytest_seqdrift.errors import CannotFix, SeqdriftError
from pytest_seqdrift.model import Cutover, FindingKind, Report, printable
from pytest_seqdrift.options import (
    DEFAULT_LOCK_TIMEOUT_MS,
    DEFAULT_THRESHOLD,
    CheckOptions,
    parse_duration,
    parse_rows,
    parse_threshold,
)

EXIT_OK, EXIT_FINDINGS, EXIT_CANNOT_CHECK = 0, 1, 2
KINDS: tuple[FindingKind, ...] = ("collision", "overflow", "exhaustion")
CUTOVER_KINDS = ("behind", "missing")  # with --source
ALL_KINDS = (*KINDS, *CUTOVER_KINDS)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 10  # unless the DSN, PGCONNECT_TIMEOUT or a service file says otherwise


class Stop(SeqdriftError):
    """Stop with exit code 2 and this one line on stderr."""


# --- argument types ---------------------------------------------------------------------


def _text(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An option's parser (pytest_seqdrift.options) as an argparse type."""

    def parsed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def _jobs(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of connections: {text!r} (1 or more)")
    return int(text)


def _fail_on(text: str) -> frozenset[str]:
    words = {w.strip() for w in text.split(",") if w.strip()}
    if words == {"all"}:
        return frozenset(ALL_KINDS)
    if words == {"none"}:
        return frozenset()
    unknown = words - set(ALL_KINDS)
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(ALL_KINDS)} (or all, or none), "
            f"not {text!r}"
        )
    return frozenset(words)


def _schema_pair(text: str) -> tuple[str, str]:
    try:
        ((source, target),) = cutover.parse_schema_map([text]).items()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return source, target


def _margin(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


# --- the parser -------------------------------------------------------------------------

_EXIT_CODES = """\
exit codes:
  0  no findings (of the --fail-on kinds)
  1  findings
  2  could not check: bad DSN, refused connection, authentication, not PostgreSQL,
     server too old, no column readable (one line on stderr)"""

_TOP_EXAMPLES = f"""\
examples:
  seqdrift check postgresql://monitor@db.internal/app
  PGHOST=db.internal PGDATABASE=app seqdrift check --format json
  seqdrift fix postgresql://admin@db.internal/app > fix.sql   # review it, then psql -f fix.sql
  seqdrift fix postgresql://admin@db.internal/app --apply --margin 1000

{_EXIT_CODES}"""

_CHECK_EXAMPLES = f"""\
examples:
  seqdrift check postgresql://monitor@db.internal/app
  seqdrift check 'host=localhost dbname=app user=monitor'
  seqdrift check                       # PGHOST, PGPORT, PGUSER, PGDATABASE, ~/.pgpass
  seqdrift check service=prod          # a section of ~/.pg_service.conf
  seqdrift check --schema billing --exclude-table 'audit_*' --format json
  seqdrift check --format github --fail-on collision     # in a GitHub Actions step
  seqdrift check postgresql://new-db/app --source postgresql://old-db/app   # a cutover

{_EXIT_CODES}"""

_FIX_EXAMPLES = f"""\
examples:
  seqdrift fix postgresql://admin@db.internal/app > fix.sql
  psql -v ON_ERROR_STOP=1 -f fix.sql postgresql://admin@db.internal/app
  seqdrift fix postgresql://admin@db.internal/app --apply
  seqdrift fix --apply --margin 1000 --lock-timeout 5s
  seqdrift fix postgresql://new-db/app --source postgresql://old-db/app --apply --margin 1000

Without --apply, fix reads only and prints the script (exit 0 once printed). With
--apply it runs it and checks again: exit 0 when clean, 1 if findings remain (overflow
and exhaustion are never fixed by setval), 2 if it could not check or fix; a table
locked past --lock-timeout stops it before anything is changed.

{_EXIT_CODES}"""


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "dsn",
        nargs="?",
        default="",
        metavar="DSN",
        help="a libpq URL (postgresql://user@host/db) or key=value string (host=... "
        "dbname=...); without it libpq's PG* environment variables, ~/.pgpass and "
        "service files apply, as with psql",
    )
    sub.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        metavar="SCHEMA",
        help="check only this schema (repeatable; default: every user schema)",
    )
    sub.add_argument(
        "--exclude-table",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out tables matching this pattern, as table or schema.table, with * and ? "
        "(repeatable)",
    )
    sub.add_argument(
        "--exhaustion-threshold",
        type=_text(parse_threshold),
        default=DEFAULT_THRESHOLD,
        metavar="SHARE",
        help="share of a column's range used that counts as overflow or exhaustion "
        f"(default {DEFAULT_THRESHOLD})",
    )
    sub.add_argument(
        "--fail-on",
        type=_fail_on,
        default=frozenset(ALL_KINDS),
        metavar="KINDS",
        help="which findings make the exit code 1: a comma-separated list of "
        "collision, overflow, exhaustion, and with --source behind, missing; or all "
        "(default) or none",
    )
    sub.add_argument(
        "--source",
        default=None,
        metavar="SOURCE_DSN",
        help="the database this one was copied from (a logical replication publisher, a "
        "pg_dump's origin, a DMS source): also report every sequence behind the source's "
        "next value, including sequences that back no column, and sequences on one side "
        "only. Read-only on the source, which is read first",
    )
    sub.add_argument(
        "--map-schema",
        action="append",
        default=[],
        type=_schema_pair,
        metavar="SOURCE=TARGET",
        help="with --source: the source's schema SOURCE is called TARGET here (repeatable)",
    )
    sub.add_argument(
        "--lock-timeout",
        type=_text(parse_duration),
        default=DEFAULT_LOCK_TIMEOUT_MS,
        metavar="MS",
        help="give up on a table locked by another session after this long: 500, 500ms, "
        f"5s, 1min (default {DEFAULT_LOCK_TIMEOUT_MS} ms; 0 waits for ever)",
    )
    sub.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N",
        help="read on N connections at once, sharing one snapshot (default 1; 2 reads a "
        "database of thousands of tables faster where the server has the cores)",
    )
    sub.add_argument(
        "--max-scan-rows",
        type=_text(parse_rows),
        default=None,
        metavar="N",
        help="skip a column that no index leads with when its table holds more than about "
        "N rows (the planner's estimate), instead of scanning it (default: scan, and say so)",
    )
    sub.add_argument(
        "--statement-timeout",
        type=_text(parse_duration),
        default=None,
        metavar="MS",
        help="cancel any statement that runs longer than this (default: the server's)",
    )


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="seqdrift",
        description="Find PostgreSQL sequences that will hand out ids their tables already "
        "hold, and move them forward safely.",
        epilog=_TOP_EXAMPLES,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chk = commands.add_parser(
        "check",
        help="report sequence drift (strictly read-only)",
        description="Report every sequence-backed column whose sequence will collide with "
        "existing ids, overflow its column's type or run out. Runs in a READ ONLY "
        "transaction with a lock timeout: it never writes and never waits behind a "
        "migration's lock.",
        epilog=_CHECK_EXAMPLES,
        formatter_class=raw,
    )
    _common(chk)
    chk.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text for people (default), json for tools, github for GitHub Actions annotations",
    )
    chk.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="text: list the columns that are fine too, and every skipped column "
        f"(without it, more than {render.SKIPPED_LISTED} are counted by reason)",
    )
    chk.set_defaults(run=_run_check)

    fx = commands.add_parser(
        "fix",
        help="print the SQL that fixes the drift; run it with --apply",
        description="Print the SQL that moves every drifted sequence past its table's "
        "ids, as one transaction for psql -f. Never moves a sequence backwards. Overflow "
        "and exhaustion are not fixable by setval: the ALTER statements to consider are "
        "printed commented out, and never run.",
        epilog=_FIX_EXAMPLES,
        formatter_class=raw,
    )
    _common(fx)
    fx.add_argument(
        "--apply",
        action="store_true",
        help="run the fix: one transaction; each affected table locked SHARE ROW EXCLUSIVE "
        "while its max is read again and its sequence set; prints old -> new next "
        "values, then checks again",
    )
    fx.add_argument(
        "--margin",
        type=_margin,
        default=0,
        metavar="N",
        help="leave N ids of headroom past each table's max, and past the source's next "
        "value with --source (default 0: the next value is the one after the max)",
    )
    fx.add_argument(
        "--despite-subscriptions",
        action="store_true",
        help="with --source --apply: fix even while a subscription on this database is "
        "enabled (by default that stops the fix: writes may still arrive)",
    )
    fx.set_defaults(run=_run_fix)
    return parser


# --- connecting -------------------------------------------------------------------------

_NOT_POSTGRESQL = (
    "invalid response to ssl negotiation",
    "expected authentication request",
    "lost synchronization with server",
    "unexpected message type",
    "invalid response to gssapi negotiation",
)
_AUTHENTICATION = (
    "authentication failed",
    "no password supplied",
    "pg_hba.conf",
    "not permitted to log in",
    "permission denied for database",
)


def _connect_failure(exc: BaseException) -> str:
    """libpq's reason, in one line, after what kind of failure it is."""
    message = error_line(exc).removeprefix("connection failed: ").replace("FATAL: ", "")
    low = message.lower()
    if any(k in low for k in _NOT_POSTGRESQL):
        return f"not a PostgreSQL server: {message}"
    if "connection refused" in low:
        return f"connection refused: {message}"
    if any(k in low for k in _AUTHENTICATION) or re.search(r'role ".*" does not exist', low):
        return f"authentication failed: {message}"
    if "timeout expired" in low:
        return f"timed out: {message}"
    return message


def connect(dsn: str, *, read_only: bool, what: str = "") -> psycopg.Connection[Any]:
    """Connect like psql: the DSN, then libpq's PG* variables, service files, ~/.pgpass.
    ``what`` names the database in the reason (``the source``)."""
    to = f" to {what}" if what else ""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise Stop(f"cannot connect{to}: invalid DSN: {error_line(exc)}") from None
    extra: dict[str, Any] = {"fallback_application_name": "seqdrift"}
    env = os.environ
    if not any(
        (given.get("connect_timeout"), given.get("service"), env.get("PGCONNECT_TIMEOUT"))
    ) and not env.get("PGSERVICE"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(dsn, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise Stop(f"cannot connect{to}: {_connect_failure(exc)}") from None
    if conn.info.server_version < MIN_SERVER_VERSION:
        version = conn.info.parameter_status("server_version") or str(conn.info.server_version)
        conn.close()
        of = f" {what}" if what else ""
        raise Stop(
            f"cannot check{of}: server too old: PostgreSQL {version} (seqdrift needs 12 or later)"
        )
    if read_only:
        # check() opens a READ ONLY transaction already; make every other one read-only too
        conn.execute("SET default_transaction_read_only = on")
    return conn


def _known_schemas(
    conn: psycopg.Connection[Any], schemas: Seq[str] | None, what: str = "database"
) -> None:
    """A mistyped --schema is an error, not a clean check of nothing."""
    if not schemas:
        return
    rows = conn.execute(
        "SELECT s FROM unnest(%s::text[]) AS s "
        "WHERE s NOT IN (SELECT nspname FROM pg_namespace) ORDER BY 1",
        [schemas],
    ).fetchall()
    if rows:
        missing = ", ".join(str(r[0]) for r in rows)
        raise Stop(f"cannot check: no schema named {missing} in {what} {conn.info.dbname}")


def _colour() -> bool:
    """Colour on a terminal, never when NO_COLOR is set (https://no-color.org)."""
    return (
        sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    )


def emit(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the rest of the output goes nowhere, and Python's exit flush must not fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _exit_code(report: Report, fail_on: frozenset[str], *, hint: str = "") -> int:
    """0 or 1 by the findings; ``Stop`` (exit 2) when not one column could be read."""
    cannot = render.cannot_check(report)
    if cannot is not None:
        raise Stop(cannot + hint)
    return EXIT_FINDINGS if any(f.kind in fail_on for f in report.findings) else EXIT_OK


def _options(args: argparse.Namespace) -> CheckOptions:
    return CheckOptions.of(
        schemas=args.schemas,
        exclude_tables=args.exclude_table,
        threshold=args.exhaustion_threshold,
        lock_timeout_ms=args.lock_timeout,
        statement_timeout_ms=args.statement_timeout,
        max_scan_rows=args.max_scan_rows,
    )


# --- the commands -----------------------------------------------------------------------


@contextmanager
def _source(args: argparse.Namespace) -> Iterator[psycopg.Connection[Any] | None]:
    """The ``--source`` database, read-only (None without the option)."""
    if args.source is None:
        if args.map_schema:
            raise Stop("cannot check: --map-schema needs --source")
        named = sorted(set(CUTOVER_KINDS) & args.fail_on) if args.fail_on != set(ALL_KINDS) else []
        if named:
            raise Stop(f"cannot check: --fail-on {named[0]} needs --source")
        yield None
        return
    if not args.source.strip():
        raise Stop("cannot connect to the source: --source needs a DSN")
    with connect(args.source, read_only=True, what="the source") as conn:
        _known_schemas(conn, [s for s, _ in args.map_schema], "the source's database")
        yield conn


def _schema_map(args: argparse.Namespace) -> dict[str, str]:
    try:
        return cutover.parse_schema_map(f"{s}={t}" for s, t in args.map_schema)
    except ValueError as exc:
        raise Stop(f"cannot check: --map-schema: {exc}") from None


def _cutover_exit(cut: Cutover, fail_on: frozenset[str], *, hint: str = "") -> int:
    code = _exit_code(cut.report, fail_on, hint=hint)
    kinds = {render.CUTOVER_KIND[c.status] for c in cut.differences}
    return EXIT_FINDINGS if code == EXIT_FINDINGS or kinds & fail_on else EXIT_OK


def _run_check(args: argparse.Namespace) -> int:
    schema_map = _schema_map(args)
    with _source(args) as source:
        if source is not None:
            return _run_cutover_check(args, source, schema_map)
    with connect(args.dsn, read_only=True) as conn:
        _known_schemas(conn, args.schemas)
        report = checker.run(conn, _options(args), jobs=args.jobs)
    # not one column readable: the line on stderr says so (exit 2), and nothing says
    # "no drift"; the JSON still lists every skipped column, the text with --verbose
    readable = render.cannot_check(report) is None
    hint = ""
    if args.format == "json":
        emit(render.as_json(report))
    elif args.format == "github":
        emit(render.github(report))  # one ::error when nothing could be read
    elif readable or args.verbose:
        emit(render.for_terminal(report, colour=_colour(), verbose=args.verbose))
    elif len(report.skipped) > 1:
        hint = " (--verbose lists them)"
    return _exit_code(report, args.fail_on, hint=hint)


def _run_cutover_check(
    args: argparse.Namespace, source: psycopg.Connection[Any], schema_map: dict[str, str]
) -> int:
    with connect(args.dsn, read_only=True) as conn:
        _known_schemas(conn, args.schemas)
        _known_schemas(conn, list(schema_map.values()))
        cut = cutover.compare(conn, source, _options(args), schema_map=schema_map)
    readable = render.cannot_check(cut.report) is None
    hint = ""
    if args.format == "json":
        emit(render.cutover_json(cut))
    elif args.format == "github":
        emit(render.cutover_github(cut))
    elif readable or args.verbose:
        emit(render.cutover_for_terminal(cut, colour=_colour(), verbose=args.verbose))
    elif len(cut.report.skipped) > 1:
        hint = " (--verbose lists them)"
    return _cutover_exit(cut, args.fail_on, hint=hint)


def _where(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return f"database {info.dbname} on {info.host}:{info.port} as {info.user}"


def _run_fix(args: argparse.Namespace) -> int:
    schema_map = _schema_map(args)
    if args.despite_subscriptions and args.source is None:
        raise Stop("cannot fix: --despite-subscriptions needs --source")
    with _source(args) as source:
        if not args.apply:
            with connect(args.dsn, read_only=True) as conn:
                _known_schemas(conn, args.schemas)
                _known_schemas(conn, list(schema_map.values()))
                fix_plan = fix.review(
                    conn, _options(args), margin=args.margin, source=source, schema_map=schema_map
                )
                where = _where(conn)
            _exit_code(fix_plan.report, args.fail_on)  # exit 2, no script, when nothing was read
            emit(fix.script(fix_plan, source=where, margin=args.margin))
            return EXIT_OK
        with connect(args.dsn, read_only=False) as conn:
            _known_schemas(conn, args.schemas)
            _known_schemas(conn, list(schema_map.values()))
            applied = fix.apply(
                conn,
                _options(args),
                margin=args.margin,
                source=source,
                schema_map=schema_map,
                despite_subscriptions=args.despite_subscriptions,
            )
    if not applied.changes:
        _exit_code(applied.after, args.fail_on)  # not one column read: stop, print nothing
    emit(_applied(applied))
    cut = applied.after_cutover
    if cut is None:
        emit(render.for_terminal(applied.after, colour=_colour()))
        return _exit_code(applied.after, args.fail_on)
    emit(render.cutover_for_terminal(cut, colour=_colour()))
    return _cutover_exit(cut, args.fail_on)


def _applied(applied: fix.Applied) -> str:
    """What ``fix --apply`` changed (old -> new next value), what it left, then the
    heading of the check that follows."""
    lines: list[str] = []
    if applied.changes:
        n = len(applied.changes)
        lines.append(f"moved {render.plural(n, 'sequence')} forward, in one transaction:")
        for change in applied.changes:
            lines.append(f"  {printable(fix.describe_fix(change.fix, new_next=change.new_next))}")
    elif applied.plan.cutover is not None:
        behind = (
            "none that it can move is behind the source (see below)"
            if applied.plan.beyond_reach
            else "none is behind the source"
        )
        lines.append(f"nothing to move: no sequence hands out ids its tables hold, {behind}")
    else:
        lines.append("nothing to move: no sequence hands out ids its tables hold")
    if applied.plan.advice:
        lines.append(
            "not run (setval cannot fix these; `seqdrift fix` prints the SQL to consider):"
        )
        for f in applied.plan.advice:
            what = f"{f.column.label}: {f.kind}: {render.describe_finding(f)}"
            lines.append(f"  {printable(what)}")
    for s in applied.plan.unread:
        what = (
            f"not considered: {s.schema}.{s.table}.{s.column} also draws from {s.sequence}, "
            f"but it could not be read: {s.reason}"
        )
        lines.append(printable(what))
    for c in applied.plan.beyond_reach:
        lines.append(
            printable(
                f"not moved, its limit lies before the source's next value: "
                f"{render.describe_compared(c)}"
            )
        )
    lines.append("checking again:")
    return "\n".join(lines)


def main(argv: Seq[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # psycopg logs a warning when a pipeline ends on an error the engine has already
    # handled (a locked or unreadable table, reported as skipped); without a handler
    # Python would print it on stderr, where only the one-line reason belongs
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except Stop as exc:
        _say_why(str(exc))
    except CannotFix as exc:
        _say_why(f"cannot fix: {exc}")
    except (SeqdriftError, psycopg.Error) as exc:
        _say_why(f"cannot check: {error_line(exc)}")
    return EXIT_CANNOT_CHECK


def _say_why(reason: str) -> None:
    """The one line on stderr of exit code 2. The server's messages and ours quote
    names, and a name may hold a line break or an escape sequence: made printable."""
    print(printable(f"seqdrift: {reason}"), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
