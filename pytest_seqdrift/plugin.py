"""The pytest plugin (``pytest11`` entry point): options, the marker, and — only when
``--seqdrift`` is on — the ``SeqdriftPlugin`` that probes migration tests.

Off, it costs nothing: no hook of ``SeqdriftPlugin`` is registered.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from . import compat, render
from .api import check
from .connections import CannotCheck, describe
from .fixtures import (
    SequenceDriftError,
    assert_sequences_consistent,
    seqdrift_connection,
    seqdrift_snapshot,
)
from .locate import NO_DATABASE_HELP, Located, is_migration_test, uses_database, wrap
from .model import Report
from .options import (
    DSN_OPTION,
    ENABLE,
    FAIL,
    MAX_SCAN_ROWS,
    PROBE,
    PROBE_DSN,
    PROBE_LIMIT,
    REPORT,
    SCOPE,
    THRESHOLD,
    add_options,
    get_option,
)
from .probe import probe

__all__ = [
    "SeqdriftPlugin",
    "SeqdriftWarning",
    "assert_sequences_consistent",
    "seqdrift_connection",
    "seqdrift_snapshot",
]

MARKER = (
    "seqdrift(*, probe=None, limit=None, schemas=None, exclude_tables=None): a migration "
    "test whose database pytest-seqdrift probes for sequence drift after the test body"
)
_MARKER_KEYWORDS = {"probe", "limit", "schemas", "exclude_tables"}
PROPERTY = "seqdrift"  # report.user_properties key: findings travel to the xdist controller


def _driver_errors() -> tuple[type[Exception], ...]:
    """The database drivers' base error classes: psycopg 3's, and psycopg2's once a
    test has imported it (a connection of it is then what the probe was given)."""
    found: list[type[Exception]] = [psycopg.Error]
    psycopg2 = sys.modules.get("psycopg2")
    error = getattr(psycopg2, "Error", None)
    if isinstance(error, type) and issubclass(error, Exception):
        found.append(error)
    return tuple(found)


class SeqdriftWarning(UserWarning):
    """Base class of pytest-seqdrift's warnings: drift found while not failing on it."""


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    compat.mend_pytest_alembic()  # before collection; see compat.py
    if get_option(config, ENABLE):
        config.pluginmanager.register(SeqdriftPlugin(config), "seqdrift-plugin")


@dataclass(frozen=True)
class Settings:
    scope: str
    mode: str
    limit: int
    fail: bool
    threshold: float
    max_scan_rows: int | None
    probe_dsn: bool
    report_path: str | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        return cls(
            scope=get_option(config, SCOPE),
            mode=get_option(config, PROBE),
            limit=get_option(config, PROBE_LIMIT),
            fail=get_option(config, FAIL),
            threshold=get_option(config, THRESHOLD),
            max_scan_rows=get_option(config, MAX_SCAN_ROWS),
            probe_dsn=get_option(config, PROBE_DSN),
            report_path=get_option(config, REPORT),
        )


@dataclass
class _Run:
    """What the controller gathers from every test report (xdist workers included)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probed_tests: int = 0
    no_database: list[str] = field(default_factory=list)


class SeqdriftPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = Settings.from_config(config)
        self.run = _Run()

    # -- which tests ------------------------------------------------------------------

    def _probed(self, item: pytest.Item) -> bool:
        names = getattr(item, "fixturenames", ())
        if item.get_closest_marker("seqdrift") is not None or is_migration_test(names):
            return True
        return self.settings.scope == "all" and uses_database(names)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            names = getattr(item, "fixturenames", None)
            if self._probed(item) and names is not None and "seqdrift_connection" not in names:
                names.append("seqdrift_connection")  # set up with the test's own fixtures

    def pytest_report_header(self, config: pytest.Config) -> str:
        s = self.settings
        dsn = "set" if get_option(config, DSN_OPTION) else "none"
        return (
            f"seqdrift: probe={s.mode} limit={s.limit} scope={s.scope} "
            f"on-drift={'fail' if s.fail else 'warn'} threshold={s.threshold} dsn={dsn}"
            + (" (probed)" if s.probe_dsn else "")
        )

    # -- the probe, right after the test body ------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield  # the test body; raises if it failed, and then there is no probe
        if self._probed(item):
            self._probe(item)
        return result

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """A mistyped marker fails its test before the test runs."""
        self._marker_kwargs(item)

    def _marker_kwargs(self, item: pytest.Item) -> dict[str, Any]:
        marker = item.get_closest_marker("seqdrift")
        if marker is None:
            return {}
        problems = []
        unknown = sorted(set(marker.kwargs) - _MARKER_KEYWORDS)
        if marker.args or unknown:
            problems.append(
                f"takes only the keywords {', '.join(sorted(_MARKER_KEYWORDS))}; got "
                f"positional {marker.args!r} and unknown {unknown}"
            )
        kwargs = dict(marker.kwargs)
        if kwargs.get("probe") not in (None, "insert", "default"):
            problems.append(f"probe must be 'insert' or 'default', not {kwargs['probe']!r}")
        limit = kwargs.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            problems.append(f"limit must be a whole number of at least 1, not {limit!r}")
        for key in ("schemas", "exclude_tables"):
            value = kwargs.get(key)
            if value is not None and (
                isinstance(value, str) or not all(isinstance(v, str) for v in value)
            ):
                problems.append(f"{key} must be a list of strings, not {value!r}")
        if problems:
            pytest.fail(f"@pytest.mark.seqdrift {'; '.join(problems)}", pytrace=False)
        return kwargs

    def _probe(self, item: pytest.Item) -> None:
        __tracebackhide__ = True
        kwargs = self._marker_kwargs(item)
        databases = wrap(
            getattr(item, "funcargs", {}).get("seqdrift_connection"), "fixture seqdrift_connection"
        )
        if not databases:
            item.user_properties.append((PROPERTY, {"no_database": item.nodeid}))
            return
        s = self.settings
        mode = kwargs.get("probe") or s.mode
        limit = kwargs.get("limit") or s.limit
        schemas, exclude = kwargs.get("schemas"), kwargs.get("exclude_tables") or ()
        report, notes, texts = Report(), [], []
        cannot: tuple[type[Exception], ...] = (CannotCheck, *_driver_errors())
        for located in databases:  # pytest-django: every PostgreSQL alias
            try:
                found, found_notes = self._examine(located, mode, limit, schemas, exclude)
            except cannot as exc:
                # a lost connection, a lock or statement timeout the probe cannot
                # work round: this test fails with the reason, and the run goes on
                where = f" ({located.source})" if len(databases) > 1 else ""
                pytest.fail(
                    f"pytest-seqdrift could not check the database{where}: {describe(exc)}",
                    pytrace=False,
                )
            prefix = f"{located.source}: " if len(databases) > 1 else ""
            report.findings.extend(found.findings)
            report.checked.extend(found.checked)
            report.skipped.extend(found.skipped)
            notes += [prefix + n for n in found_notes]
            if found.findings:
                texts.append(prefix + render.text(found))
        item.user_properties.append(
            (
                PROPERTY,
                {
                    "test": item.nodeid,
                    "findings": [render.finding_dict(f) for f in report.findings],
                    "text": "\n".join(texts),
                    "notes": notes,
                },
            )
        )
        if not report.findings:
            return
        if s.fail:
            raise SequenceDriftError(report, "\n".join(texts))
        warnings.warn(SeqdriftWarning("\n".join(texts)), stacklevel=1)

    def _examine(
        self, located: Located, mode: str, limit: int, schemas: Any, exclude: Any
    ) -> tuple[Report, list[str]]:
        s = self.settings
        if located.test_database or s.probe_dsn:
            result = probe(
                located.connection,
                mode=mode,  # type: ignore[arg-type]
                limit=limit,
                schemas=schemas,
                exclude_tables=exclude,
                threshold=s.threshold,
            )
            notes = [
                f"{p.column.label}: {p.note}"
                for p in result.probed
                if p.note and "empty" not in p.note
            ]
            notes += [
                f"{p.column.label}: the probe stopped at its limit ({p.drawn} values) before "
                "passing the highest existing value; the arithmetic's answer stands"
                for p in result.probed
                if not p.passed_max
            ]
            return result.report, notes
        report = check(
            located.connection,
            schemas=schemas,
            exclude_tables=exclude,
            threshold=s.threshold,
            max_scan_rows=s.max_scan_rows,
        )
        note = (
            f"{located.source} is not known to be a test database: checked read-only, "
            "not probed (--seqdrift-probe-dsn opts in)"
        )
        return report, [note]

    # -- gathering, on the controller --------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":  # the teardown report carries the same properties
            return
        for key, value in report.user_properties:
            if key != PROPERTY or not isinstance(value, dict):
                continue
            if "no_database" in value:
                self.run.no_database.append(value["no_database"])
                continue
            self.run.probed_tests += 1
            self.run.notes += [f"{value['test']}: {n}" for n in value.get("notes", ())]
            for finding in value.get("findings", ()):
                self.run.findings.append({"test": value["test"], **finding})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # workers write nothing: the controller has every finding
        self._check_dsn_at_end(session)
        path = self.settings.report_path
        if path:
            out = {"version": render.JSON_VERSION, "findings": self.run.findings}
            Path(path).write_text(json.dumps(out, indent=2) + "\n")

    def _check_dsn_at_end(self, session: pytest.Session) -> None:
        """The --seqdrift-dsn database outlives the tests: check it once more, read-only."""
        dsn = get_option(self.config, DSN_OPTION)
        if not dsn:
            return
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="pytest-seqdrift") as conn:
                report = check(
                    conn,
                    threshold=self.settings.threshold,
                    max_scan_rows=self.settings.max_scan_rows,
                )
        except (CannotCheck, psycopg.Error) as exc:
            self.run.notes.append(f"end of session: could not check --seqdrift-dsn: {exc}")
            return
        self.run.findings += [
            {"test": "(end of session)", **render.finding_dict(f)} for f in report.findings
        ]
        if report.findings and self.settings.fail and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.run
        verbose = self.config.getoption("verbose") > 0
        if not (run.findings or run.no_database or (verbose and (run.probed_tests or run.notes))):
            return
        tr = terminalreporter
        tr.write_sep("=", "sequence drift (pytest-seqdrift)")
        if run.no_database:
            tr.write_line(NO_DATABASE_HELP)
            tr.write_line(f"  tests without a database: {', '.join(run.no_database)}")
        for f in run.findings:
            where = f"{f['schema']}.{f['table']}.{f['column']}"
            if f["kind"] == "collision":
                what = f"the {render.ordinal(f['inserts_until_collision'] + 1)} insert collides with {f['first_collision']}"
            else:
                what = f"{f['kind']}: {f['values_left']} values left"
            tr.write_line(f"{f['test']}: {where}: {what}")
            tr.write_line(f"    fix: {f['fix_sql'].splitlines()[0] if f['fix_sql'] else '-'}")
        if verbose:
            for note in run.notes:
                tr.write_line(f"note: {note}")
        elif run.notes:
            tr.write_line(f"({render.plural(len(run.notes), 'note')}: add -v to show them)")
        tr.write_line(
            f"{render.plural(len(run.findings), 'finding')} in "
            f"{render.plural(run.probed_tests, 'probed test')}"
        )
