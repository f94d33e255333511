"""What the plugin knows for a whole run, shared by its parts: the settings, the
watcher that follows the migrations, and what was checked, reported and blamed.

``hooks.SeqdriftPlugin`` holds one ``State``; the set-up checks (``setups``), the probe
after a test (``probing``) and the reports (``outcome``) read and add to it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import drift
from pytest_seqdrift.db.session import DatabaseId
from pytest_seqdrift.errors import CannotCheck
from pytest_seqdrift.model import Finding
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.plugin.history import ColumnKey, column_key
from pytest_seqdrift.plugin.options import (
    EXCLUDE,
    FAIL,
    MAX_SCAN_ROWS,
    PROBE,
    PROBE_DSN,
    PROBE_LIMIT,
    REPORT,
    SCOPE,
    THRESHOLD,
    Option,
    get_option,
)
from pytest_seqdrift.plugin.watch import Watcher
from pytest_seqdrift.probe.since import Mark


def driver_errors() -> tuple[type[Exception], ...]:
    """What a failing check may raise: our CannotCheck, psycopg 3's errors, and
    psycopg2's and asyncpg's once a test has imported them (a connection of theirs is
    then what we got)."""
    found: list[type[Exception]] = [CannotCheck, psycopg.Error]
    for module, name in (
        ("psycopg2", "Error"),
        ("asyncpg", "PostgresError"),
        ("asyncpg", "InterfaceError"),
    ):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, Exception):
            found.append(error)
    return tuple(found)


@dataclass(frozen=True)
class Settings:
    scope: str
    mode: str
    limit: int
    fail: bool
    probe_dsn: bool
    report_path: str | None
    # every check's options: --seqdrift-exclude, --seqdrift-threshold and
    # --seqdrift-max-scan-rows (a marker's schemas and exclude_tables add to them)
    options: CheckOptions

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def get(opt: Option) -> Any:
            return get_option(config, opt)

        # read in this order: a usage error names the first bad option
        scope, mode, limit, fail = get(SCOPE), get(PROBE), get(PROBE_LIMIT), get(FAIL)
        threshold, max_scan_rows = get(THRESHOLD), get(MAX_SCAN_ROWS)
        probe_dsn, report_path, exclude = get(PROBE_DSN), get(REPORT), get(EXCLUDE)
        options = CheckOptions.of(
            exclude_tables=exclude, threshold=threshold, max_scan_rows=max_scan_rows
        )
        return cls(scope, mode, limit, fail, probe_dsn, report_path, options)


@dataclass
class State:
    settings: Settings
    watcher: Watcher
    phase_item: str | None = None  # the test whose phases run now
    # databases whose set-up was checked
    checked: set[DatabaseId] = field(default_factory=set)
    # (port, database) -> its template
    templates: dict[tuple[str, str], str] = field(default_factory=dict)
    born_keys: set[Any] = field(default_factory=set)  # findings reported as a set-up's
    # (database name, column) of set-ups
    born_columns: set[tuple[str, ...]] = field(default_factory=set)
    # what a probe reported -> at which test
    blamed: dict[tuple[Any, ...], str] = field(default_factory=dict)
    # (database name, column) -> the furthest existing id a collision reported on it
    # had, in the order its sequence walks (a set-up's or a test's): rows past it are new
    # drift, which a later test is failed for
    furthest: dict[tuple[str, ...], int] = field(default_factory=dict)
    # test -> columns its reset drifted
    reset_made: dict[str, set[ColumnKey]] = field(default_factory=dict)
    # databases a fixture migrated (an `engine` fixture running `alembic upgrade`):
    # the tests that use that fixture use that database
    fixture_databases: dict[str, tuple[DatabaseId, dict[str, Any]]] = field(default_factory=dict)
    override: tuple[str, ...] | None = None  # the user's seqdrift_connection's args
    claims: Path | None = None  # under pytest-xdist: which worker reports what
    setups_unsent: int = 0  # set-up checks made since the last report (for the summary)
    # --seqdrift-scope=all: each database's last probe, where the next one starts from
    marks: dict[DatabaseId, Mark] = field(default_factory=dict)

    def template_of(self, database: DatabaseId) -> DatabaseId | None:
        """The pytest-postgresql template a database was created from, where known."""
        name = self.templates.get((database.port, database.name))
        if name is None:
            return None
        found = [
            d
            for d in self.watcher.histories
            if (d.server_started, d.port, d.name) == (database.server_started, database.port, name)
        ]
        return found[-1] if found else None

    def reported(self, database_name: str, finding: Finding) -> None:
        """Keep how far the rows of a reported collision went (``furthest``)."""
        if finding.kind != "collision" or finding.max_existing is None:
            return
        column = (database_name, *column_key(finding.column))
        further = drift.forward(finding.sequence, finding.max_existing)
        self.furthest[column] = max(further, self.furthest.get(column, further))

    def past_reported(self, database_name: str, finding: Finding) -> bool:
        """Whether a collision has rows past every one reported on its column."""
        column = (database_name, *column_key(finding.column))
        if finding.kind != "collision" or finding.max_existing is None:
            return False
        known = self.furthest.get(column)
        return known is not None and drift.forward(finding.sequence, finding.max_existing) > known

    def made_by(self, database: DatabaseId, f: Finding) -> tuple[Any, ...]:
        """The drift of one column of one database as one step made it (the step's
        label last: None where no step is to blame)."""
        step = self.watcher.origin(database, f) or self.watcher.origin(
            self.template_of(database), f
        )
        return (database.name, *column_key(f.column), None if step is None else step.label)
