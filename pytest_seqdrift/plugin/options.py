"""The plugin's options, declared once: each is a command-line flag and an ini setting.

The command line wins over the ini file, tested with ``is None`` (an explicit
``--seqdrift-fail=false`` beats ``seqdrift_fail = true``). Values are validated here,
so a typo in ``pytest.ini`` is a usage error, not a silent default: the threshold, the
row count and the table patterns by the parsers the CLI uses too
(``pytest_seqdrift.options``), after the name of the flag or ini option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_seqdrift import probe
from pytest_seqdrift.options import (
    DEFAULT_THRESHOLD,
    parse_pattern,
    parse_rows,
    parse_threshold,
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, not {text!r}")
    return value


@dataclass(frozen=True)
class Option:
    flag: str  # --seqdrift-...
    ini: str  # seqdrift_...
    default: Any
    help: str
    parse: Any = str  # text -> value; raises ValueError on bad input
    choices: tuple[str, ...] = ()
    env: str | None = None  # an environment variable consulted after the ini file
    many: bool = False  # a list: the flag may be repeated, the ini value lists them

    @property
    def dest(self) -> str:
        return self.ini


ENABLE = Option(
    "--seqdrift",
    "seqdrift",
    False,
    "check every test database once its set-up is complete, follow every migration, "
    "and probe migration tests: fail the run on sequence drift, naming its cause",
    parse_bool,
)
DSN_OPTION = Option(
    "--seqdrift-dsn",
    "seqdrift_dsn",
    None,
    "database to check when a test has no test-database fixture (read-only unless "
    "--seqdrift-probe-dsn)",
    env="SEQDRIFT_DSN",
)
PROBE_DSN = Option(
    "--seqdrift-probe-dsn",
    "seqdrift_probe_dsn",
    False,
    "the --seqdrift-dsn database is a test database: probe it (it writes and undoes)",
    parse_bool,
)
SCOPE = Option(
    "--seqdrift-scope",
    "seqdrift_scope",
    "migrations",
    "which tests are probed: 'migrations' (marked with @pytest.mark.seqdrift or using a "
    "migration fixture) or 'all' (every test that uses a database)",
    choices=("migrations", "all"),
)
PROBE = Option(
    "--seqdrift-probe",
    "seqdrift_probe",
    "insert",
    "'insert': copy rows past each column's max and let PostgreSQL raise; 'default': "
    "evaluate the column's default and look each value up",
    choices=("insert", "default"),
)
PROBE_LIMIT = Option(
    "--seqdrift-probe-limit",
    "seqdrift_probe_limit",
    probe.DEFAULT_LIMIT,
    "most values the probe draws per column; beyond it the arithmetic's answer stands",
    parse_positive,
)
FAIL = Option(
    "--seqdrift-fail",
    "seqdrift_fail",
    True,
    "fail the test that causes drift; false: warn and list it in the summary",
    parse_bool,
)
THRESHOLD = Option(
    "--seqdrift-threshold",
    "seqdrift_threshold",
    DEFAULT_THRESHOLD,
    "share of a column's range used that counts as overflow or exhaustion",
    parse_threshold,
)


MAX_SCAN_ROWS = Option(
    "--seqdrift-max-scan-rows",
    "seqdrift_max_scan_rows",
    None,
    "in read-only checks, skip a column that no index leads with when its table holds "
    "more than about this many rows, instead of scanning it",
    parse_rows,
)


EXCLUDE = Option(
    "--seqdrift-exclude",
    "seqdrift_exclude",
    (),
    "tables whose explicit ids are intentional: leave them out of every check "
    "(`table` or `schema.table`, with * and ?; repeat the flag, or list them in the ini "
    "option separated by spaces)",
    parse_pattern,
    many=True,
)
REPORT = Option(
    "--seqdrift-report",
    "seqdrift_report",
    None,
    "write the run's findings to this file as JSON (the seqdrift CLI's format)",
)

OPTIONS = (
    ENABLE,
    DSN_OPTION,
    PROBE_DSN,
    SCOPE,
    PROBE,
    PROBE_LIMIT,
    FAIL,
    THRESHOLD,
    MAX_SCAN_ROWS,
    EXCLUDE,
    REPORT,
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("seqdrift", "sequence drift (pytest-seqdrift)")
    for opt in OPTIONS:
        if opt.many:
            group.addoption(
                opt.flag, action="append", dest=opt.dest, metavar="PATTERN", help=opt.help
            )
            parser.addini(opt.ini, type="args", default=[], help=opt.help)
            continue
        default = "" if opt.default is None else str(opt.default).lower()
        if opt is ENABLE:
            group.addoption(
                opt.flag, action="store_const", const="true", dest=opt.dest, help=opt.help
            )
        else:
            metavar = (
                "|".join(opt.choices) if opt.choices else opt.ini.removeprefix("seqdrift_").upper()
            )
            group.addoption(
                opt.flag,
                dest=opt.dest,
                metavar=metavar,
                help=f"{opt.help} (default: {default or 'none'})",
            )
        parser.addini(opt.ini, type="string", default=default, help=opt.help)


def get_option(config: pytest.Config, opt: Option) -> Any:
    """The option's value: command line, else ini, else environment, else default."""
    if opt.many:
        return _get_many(config, opt)
    raw = config.getoption(opt.dest, default=None)
    where = opt.flag
    if raw is None:
        raw = str(config.getini(opt.ini) or "") or None
        where = f"ini option {opt.ini}"
    if raw is None and opt.env:
        raw = os.environ.get(opt.env) or None
        where = f"environment variable {opt.env}"
    if raw is None:
        return opt.default
    if opt.choices and raw not in opt.choices:
        raise pytest.UsageError(f"{where}: expected one of {', '.join(opt.choices)}, not {raw!r}")
    try:
        return opt.parse(raw)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


def _get_many(config: pytest.Config, opt: Option) -> tuple[Any, ...]:
    """A list option: the flag's values when it is given at all, else the ini's."""
    raw: list[str] | None = config.getoption(opt.dest, default=None)
    where = opt.flag
    if raw is None:
        raw = list(config.getini(opt.ini) or ())
        where = f"ini option {opt.ini}"
    try:
        return tuple(opt.parse(value) for value in raw)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None
