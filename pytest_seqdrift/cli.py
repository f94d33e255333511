"""The ``seqdrift`` command: check a live database, strictly read-only.

Exit codes: 0 no findings, 1 findings, 2 could not check (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence as Seq

import psycopg

from . import __version__, render
from .api import DEFAULT_LOCK_TIMEOUT_MS, check
from .connections import CannotCheck, describe
from .drift import DEFAULT_THRESHOLD

EXIT_OK, EXIT_FINDINGS, EXIT_CANNOT_CHECK = 0, 1, 2


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("must be a share between 0 (exclusive) and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqdrift",
        description="Find PostgreSQL sequences that will hand out ids their tables already hold.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chk = commands.add_parser(
        "check",
        help="report sequence drift (read-only)",
        description="Report sequence drift. Runs in a READ ONLY transaction: it never writes.",
        epilog="examples:\n  seqdrift check postgresql://app@db/prod\n"
        "  seqdrift check 'dbname=app host=localhost' --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chk.add_argument(
        "dsn",
        nargs="?",
        default="",
        help="a libpq URL or key=value string; empty: the PG* environment variables apply",
    )
    chk.add_argument("--format", choices=("text", "json"), default="text")
    chk.add_argument(
        "--schema", action="append", dest="schemas", help="check only this schema (repeatable)"
    )
    chk.add_argument(
        "--exclude-table",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip tables matching this pattern, as table or schema.table (repeatable)",
    )
    chk.add_argument(
        "--exhaustion-threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD,
        metavar="SHARE",
        help=f"share of a range used that counts as overflow or exhaustion (default {DEFAULT_THRESHOLD})",
    )
    chk.add_argument(
        "--lock-timeout",
        type=int,
        default=DEFAULT_LOCK_TIMEOUT_MS,
        metavar="MS",
        help=f"give up on a locked table after this many milliseconds (default {DEFAULT_LOCK_TIMEOUT_MS})",
    )
    return parser


def main(argv: Seq[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        conn = psycopg.connect(args.dsn, autocommit=True, application_name="seqdrift")
    except psycopg.Error as exc:
        print(f"seqdrift: cannot connect: {describe(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    try:
        with conn:
            report = check(
                conn,
                schemas=args.schemas,
                exclude_tables=args.exclude_table,
                threshold=args.exhaustion_threshold,
                lock_timeout_ms=args.lock_timeout,
            )
    except (CannotCheck, psycopg.Error) as exc:
        print(f"seqdrift: cannot check: {describe(exc)}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    if args.format == "json":
        print(render.as_json(report))
    else:
        print(render.text(report))
    if report.findings:
        return EXIT_FINDINGS
    if report.skipped and not report.checked:
        print("seqdrift: cannot check: no column could be read", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
