"""The pytest plugin (``pytest11`` entry point): options, the marker, and -- only when
``--seqdrift`` is on -- the ``SeqdriftPlugin`` that checks the test databases.

With ``--seqdrift`` the plugin

* checks every test database once its set-up is complete, before the first test body
  that receives it: pytest-django's databases once ``django_db_setup`` has migrated
  them, any other database it can locate (pytest-postgresql's, ``alembic_engine``, the
  user's ``seqdrift_connection``) at the end of the first set-up that hands it to a
  test. Drift found there belongs to the set-up: it is reported once, as an error at
  the set-up of the test that first receives it, naming where the database came from;
* follows every Django migration, Alembic revision and pytest-postgresql load
  (``listeners``), checking after each, so that a report names the step that introduced
  the drift;
* probes migration tests after their body (marked, using ``migrator`` or
  ``alembic_runner``, or running migrations themselves), and with
  ``--seqdrift-scope=all`` every test that uses a database.

Off, it costs nothing: no hook of ``SeqdriftPlugin`` is registered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import render
from pytest_seqdrift.checker import check
from pytest_seqdrift.db.adapters import open_session, session_for
from pytest_seqdrift.db.session import DatabaseId, Session, describe
from pytest_seqdrift.errors import CannotCheck, SequenceDriftError
from pytest_seqdrift.model import Finding, Report, printable
from pytest_seqdrift.plugin import advice, compat, summary
from pytest_seqdrift.plugin.fixtures import (
    PG_CLIENTS,
    assert_sequences_consistent,
    seqdrift_connection,
    seqdrift_snapshot,
)
from pytest_seqdrift.plugin.history import ColumnKey, column_key
from pytest_seqdrift.plugin.listeners import Listening
from pytest_seqdrift.plugin.locate import (
    Located,
    django_database_names,
    django_ready,
    django_resets_sequences,
    django_test_databases,
    migration_fixture,
    postgresql_fixture_kind,
    uses_database,
    wrap,
)
from pytest_seqdrift.plugin.options import (
    DSN_OPTION,
    ENABLE,
    EXCLUDE,
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
from pytest_seqdrift.plugin.watch import Run, Watcher, finding_key
from pytest_seqdrift.probe import probe

__all__ = [
    "SeqdriftPlugin",
    "SeqdriftWarning",
    "SequenceDriftError",
    "assert_sequences_consistent",
    "seqdrift_connection",
    "seqdrift_snapshot",
]

MARKER = (
    "seqdrift(*, probe=None, limit=None, schemas=None, exclude_tables=None): a migration "
    "test whose database pytest-seqdrift probes for sequence drift after the test body"
)
_MARKER_KEYWORDS = {"probe", "limit", "schemas", "exclude_tables"}
PROPERTY = "seqdrift"  # report.user_properties key: what travels to the xdist controller
HEADER = "pytest-seqdrift:"


def _driver_errors() -> tuple[type[Exception], ...]:
    """What a failing check may raise: our CannotCheck, psycopg 3's errors, and
    psycopg2's once a test has imported it (a connection of it is then what we got)."""
    found: list[type[Exception]] = [CannotCheck, psycopg.Error]
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
    exclude: tuple[str, ...]

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
            exclude=get_option(config, EXCLUDE),
        )


@dataclass
class Born:
    """Drift found in the set-up of a test database, to report at the set-up of the
    test that receives it first."""

    source: str  # where the database came from, for people
    report: Report  # its findings not reported before (and what was checked)
    database: DatabaseId | None


@dataclass
class _Outcome:
    """What one phase of a test found, for its report and the controller's summary."""

    born: list[Born] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # set-ups that could not be checked
    probed: list[tuple[DatabaseId, Finding]] | None = None  # None: the test was not probed
    probed_text: list[str] = field(default_factory=list)
    why: str = ""  # why it was probed
    cannot: str | None = None  # the test's database could not be probed
    no_database: bool = False
    notes: list[str] = field(default_factory=list)
    reset: set[ColumnKey] = field(default_factory=set)  # drift reset_sequences made


class SeqdriftPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = s = Settings.from_config(config)
        self.run = summary.Run()
        self.watcher = Watcher(
            exclude_tables=s.exclude,
            threshold=s.threshold,
            max_scan_rows=s.max_scan_rows,
            run_context=self._run_context,
        )
        self.listening = Listening(self.watcher)
        self.phase: str | None = None
        self.phase_item: str | None = None  # the test whose phases run now
        self.fixtures: list[str] = []  # the fixtures being set up, innermost last
        self.checked: set[DatabaseId] = set()  # databases whose set-up was checked
        self.connection_ids: weakref.WeakKeyDictionary[Any, DatabaseId] = (
            weakref.WeakKeyDictionary()
        )
        self.templates: dict[tuple[str, str], str] = {}  # (port, database) -> its template
        self.born_keys: set[Any] = set()  # findings reported as a set-up's
        self.pending: _Outcome = _Outcome()  # set-up findings not reported yet
        self.reset_made: dict[str, set[ColumnKey]] = {}  # test -> columns its reset drifted
        self.django_databases: list[Located] = []  # those django_db_setup set up
        # databases a fixture migrated (an `engine` fixture running `alembic upgrade`):
        # the tests that use that fixture use that database
        self.fixture_databases: dict[str, tuple[DatabaseId, dict[str, Any]]] = {}
        self.override: tuple[str, ...] | None = None  # the user's seqdrift_connection's args
        self.born_columns: set[tuple[str, ...]] = set()  # (database name, column) of set-ups
        self.blamed: dict[tuple[Any, ...], str] = {}  # what a probe reported -> at which test
        self.claims: Path | None = None  # under pytest-xdist: which worker reports what
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and "testrunuid" in workerinput:
            self.claims = _claims_folder(str(workerinput["testrunuid"]))
            self.claims.mkdir(parents=True, exist_ok=True)
        self.setups_unsent = 0  # set-up checks made since the last report (for the summary)
        self.steps_sent = 0  # the watcher's step count at the last report

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.listening.stop()
        if self.claims is not None and not hasattr(config, "workerinput"):
            shutil.rmtree(self.claims, ignore_errors=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist, on the controller: the folder its workers claim findings in."""
        self.claims = _claims_folder(str(node.workerinput["testrunuid"]))

    # -- which tests ------------------------------------------------------------------

    def _marked_or_migrating(self, item: pytest.Item) -> str | None:
        """Why the test is a migration test, known before it runs."""
        if item.get_closest_marker("seqdrift") is not None:
            return "it is marked @pytest.mark.seqdrift"
        name = migration_fixture(getattr(item, "fixturenames", ()))
        return None if name is None else f"it uses {name}"

    def _uses_database(self, item: pytest.Item) -> bool:
        names = getattr(item, "fixturenames", ())
        if uses_database(names) or item.get_closest_marker("django_db") is not None:
            return True
        if any(name in self.fixture_databases for name in names):
            return True
        return bool(item.stash.get(PG_CLIENTS, None))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            names = getattr(item, "fixturenames", None)
            if names is None or "seqdrift_connection" in names:
                continue
            defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
            clients = [n for n in names if postgresql_fixture_kind(_func(defs, n)) == "client"]
            if clients:
                item.stash[PG_CLIENTS] = clients
            feeds = any(name in names for name in self._override_arguments(item))
            if self._marked_or_migrating(item) or self._uses_database(item) or feeds:
                names.append("seqdrift_connection")  # set up with the test's own fixtures

    def _override_arguments(self, item: pytest.Item) -> tuple[str, ...]:
        """The fixtures the user's own ``seqdrift_connection`` takes, as this test would
        see it; () where it is ours. A test that uses one of them uses that database."""
        manager = getattr(item.session, "_fixturemanager", None)
        try:
            found = manager.getfixturedefs("seqdrift_connection", item) if manager else None
        except (TypeError, AttributeError):  # another pytest's signature: not known
            return ()
        if not found or found[-1].func.__module__ == "pytest_seqdrift.fixtures":
            return ()
        self.override = tuple(a for a in found[-1].argnames if a != "request")
        return self.override

    def pytest_report_header(self, config: pytest.Config) -> str:
        s = self.settings
        dsn = "set" if get_option(config, DSN_OPTION) else "none"
        return (
            f"seqdrift: probe={s.mode} limit={s.limit} scope={s.scope} "
            f"on-drift={'fail' if s.fail else 'warn'} threshold={s.threshold} dsn={dsn}"
            + (" (probed)" if s.probe_dsn else "")
            + (f" exclude={','.join(s.exclude)}" if s.exclude else "")
        )

    # -- set-up ------------------------------------------------------------------------

    def _run_context(self) -> tuple[str, str | None] | None:
        """Where a migration run that just ended ran, and in which fixture, when its end
        state is wanted: in a fixture (set-up drift), before the tests, or in a test
        body (for a database the test does not hand over); not in a teardown."""
        if self.phase == "teardown" or "django_db_setup" in self.fixtures:
            return None  # nothing to report / its own set-up check follows
        if self.fixtures:
            return f"in fixture {self.fixtures[-1]!r}", self.fixtures[-1]
        return ("in the test body" if self.phase == "call" else "before the tests"), None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        django = fixturedef.argname == "django_db_setup" and django_ready()
        names_before = django_database_names() if django else {}
        self.fixtures.append(fixturedef.argname)
        try:
            value = yield
        finally:
            self.fixtures.pop()
        if postgresql_fixture_kind(fixturedef.func) == "process" and hasattr(
            value, "template_dbname"
        ):
            self.templates[(str(value.port), str(value.dbname))] = str(value.template_dbname)
        if django:
            self._check_django_setup(request, names_before)
        self._take_runs(self.pending)
        return value

    def _check_django_setup(
        self, request: pytest.FixtureRequest, names_before: dict[str, str]
    ) -> None:
        """pytest-django has created and migrated the test databases: check each
        PostgreSQL one now, before any test's own set-up (a ``reset_sequences`` test
        resets every sequence) or body touches it."""
        blocker = request.getfixturevalue("django_db_blocker")
        # an override of django_db_setup that adds to the databases (loads data) finds
        # them set up by the fixture it overrides: it checks the same ones again
        self.django_databases = django_test_databases(names_before) or self.django_databases
        with blocker.unblock():
            for located in self.django_databases:
                self._check_setup(located, self.pending, again=True)

    def _check_setup(self, located: Located, outcome: _Outcome, *, again: bool = False) -> None:
        """Check (on a test database: probe) a database whose set-up is complete, once
        (``again``: once more, after more set-up)."""
        failure = None
        try:
            with open_session(located.connection) as session:
                database = self._database_of(session)
                if database in self.checked and not again:
                    return
                self.checked.add(database)
                report, notes = self._judge(session, located)
        except _driver_errors() as exc:
            failure = describe(exc)
        if failure is not None:  # raised outside the handler: no exception chain shown
            outcome.problems.append(f"could not check {located.source}: {failure}")
            return
        self.setups_unsent += 1
        outcome.notes += [f"{located.source}: {n}" for n in notes]
        fresh = self._claim(self.watcher.new_findings(report), outcome, database)
        if fresh:
            source = self._describe_setup(located, database)
            mine = Report(findings=fresh, checked=report.checked, skipped=report.skipped)
            outcome.born.append(Born(source, mine, database))

    def _database_of(self, session: Session) -> DatabaseId:
        """Which database a session's connection is on, asked once a connection: a
        libpq connection stays on its database, and most tests are handed one they were
        handed before (psycopg 3 connections only: psycopg2's take no weak reference,
        and an id alone could be a new connection's)."""
        conn = session.conn
        if not isinstance(conn, psycopg.Connection):
            return session.database_id()
        found = self.connection_ids.get(conn)
        if found is None:
            found = self.connection_ids[conn] = session.database_id()
        return found

    def _claim(
        self, fresh: list[Finding], outcome: _Outcome, database: DatabaseId
    ) -> list[Finding]:
        """Set-up findings become this process's to report. Under pytest-xdist every
        worker sets up a database of its own from the same migrations and files, and
        finds the same drift: the first worker to claim a finding reports it, the others
        only note it (they write nothing but an empty claim file, shared by the run)."""
        self.born_keys.update(finding_key(f) for f in fresh)
        self.born_columns.update((database.name, *column_key(f.column)) for f in fresh)
        here = self.phase_item or "the set-up"
        for f in fresh:  # a test that runs the same migration again makes the same drift
            if (made_by := self._made_by(database, f))[-1] is not None:
                self.blamed.setdefault(made_by, here)
        if self.claims is None:
            return fresh
        mine = []
        for f in fresh:
            name = hashlib.sha256(repr(finding_key(f)).encode()).hexdigest()[:32]
            try:
                os.close(os.open(self.claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                outcome.notes.append(f"{f.column.label}: the set-up drift another worker reports")
                continue
            mine.append(f)
        return mine

    def _describe_setup(self, located: Located, database: DatabaseId) -> str:
        history = self.watcher.history(database)
        steps = history.steps if history is not None else []
        source = located.source
        details = [f"database {database.name}"]
        if source == "fixture seqdrift_connection" and self.override:
            source += f" (from {', '.join(self.override)})"
        if any(s.kind == "migration" for s in steps):
            details.append("after migrations")
        elif source.startswith("pytest-django"):
            details.append(
                "no migration ran in this set-up (--reuse-db, --no-migrations): run once "
                "with --create-db and migrations to have the one that made it named"
            )
        elif any(s.kind == "revision" for s in steps):
            details.append("after Alembic revisions")
        template = self._template_of(database)
        if template is not None:
            loads = ", ".join(s.name for s in self.watcher.loads(template))
            details.append(f"created from template {template.name}")
            if loads:
                details[-1] += f" loaded with {loads}"
        return f"{source} ({', '.join(details)})"

    def _template_of(self, database: DatabaseId) -> DatabaseId | None:
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

    def _take_runs(self, outcome: _Outcome) -> None:
        """Migration runs that ended in a set-up, on databases no check of ours covers:
        their end state is set-up drift (a fixture upgrading a database of its own)."""
        for run in self.watcher.take_runs():
            if run.owner is not None and run.connect is not None:
                self.fixture_databases[run.owner] = (run.database, run.connect)
            if run.database in self.checked:
                continue
            fresh = self._claim(self.watcher.new_findings(run.report), outcome, run.database)
            if fresh:
                source = f"database {run.database.name} ({run.description})"
                mine = Report(fresh, run.report.checked, run.report.skipped)
                outcome.born.append(Born(source, mine, run.database))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self._marker_kwargs(item)  # a mistyped marker fails before the test's set-up
        self.phase = "setup"
        try:
            yield
        finally:
            self.phase = None
        outcome, self.pending = self.pending, _Outcome()
        for located in self._located(item):
            self._check_setup(located, outcome)  # once a database: django_db_setup's are done
        self._take_runs(outcome)
        if self._resets_before_probe(item):
            self._record_reset(item)
        self._finish(item, "setup", outcome)

    def _located(self, item: pytest.Item) -> list[Located]:
        funcargs = getattr(item, "funcargs", {})
        if "seqdrift_connection" not in funcargs:
            return []
        return wrap(funcargs["seqdrift_connection"], "fixture seqdrift_connection")

    def _resets_before_probe(self, item: pytest.Item) -> bool:
        marker = item.get_closest_marker("django_db")
        names = getattr(item, "fixturenames", ())
        if not django_resets_sequences(marker, names):
            return False
        return bool(self._marked_or_migrating(item) or self.settings.scope == "all")

    def _record_reset(self, item: pytest.Item) -> None:
        """pytest-django's ``reset_sequences=True`` has just set every sequence back to
        its start: the columns drifted now (and not before) are the reset's doing."""
        drifted: set[ColumnKey] = set()
        for located in self._located(item):
            try:
                report = self.watcher.check(located.connection)
            except _driver_errors():
                continue
            drifted |= {
                column_key(f.column)
                for f in report.findings
                if finding_key(f) not in self.born_keys
            }
        self.reset_made[item.nodeid] = drifted

    # -- the probe, right after the test body ------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        steps_before = self.watcher.steps
        self.phase = "call"
        try:
            result = yield  # the test body; raises if it failed, and then there is no probe
        finally:
            self.phase = "teardown"
        outcome, self.pending = self.pending, _Outcome()
        runs = self.watcher.take_runs()  # migrations the body ran, to the end
        why = self._marked_or_migrating(item)
        if why is None and self.watcher.steps > steps_before:
            why = "it ran migrations"
        if why is None and self.settings.scope == "all" and self._uses_database(item):
            why = "scope"
        if why is not None:
            self._probe(item, why, runs, outcome)
        self._finish(item, "call", outcome)
        return result

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.reset_made.pop(item.nodeid, None)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.phase, self.phase_item = None, nodeid

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

    def _probe(self, item: pytest.Item, why: str, runs: list[Run], outcome: _Outcome) -> None:
        """Probe the test's databases after its body. A migration test fails on any drift
        but what the set-up already reported; under ``--seqdrift-scope=all`` a test that
        is not one fails only on drift that outlives its own transaction and that no
        earlier test was failed for."""
        kwargs = self._marker_kwargs(item)
        with contextlib.ExitStack() as stack:
            databases = self._located(item)
            names = set(getattr(item, "fixturenames", ()))
            if names & set(self.fixture_databases):  # else no round trip to ask
                databases += self._fixture_databases(item, stack, _ids(databases))
            self._probe_databases(item, why, runs, databases, kwargs, outcome)

    def _fixture_databases(
        self, item: pytest.Item, stack: contextlib.ExitStack, located: set[DatabaseId]
    ) -> list[Located]:
        """The databases the test's fixtures migrated, but for those ``located``
        already, on connections of our own (closed with ``stack``): probed where they
        live on a server pytest-postgresql started, checked read-only elsewhere."""
        names = set(getattr(item, "fixturenames", ()))
        servers = {port for port, _ in self.templates}
        found = []
        for name, (database, connect) in self.fixture_databases.items():
            if name not in names or database in located:
                continue
            located.add(database)
            try:
                conn = psycopg.connect(
                    **connect, autocommit=True, application_name="pytest-seqdrift"
                )
            except psycopg.Error:
                continue
            stack.callback(conn.close)
            source = f"the database of fixture {name!r} ({database.name})"
            found.append(Located(conn, source, test_database=database.port in servers))
        return found

    def _probe_databases(
        self,
        item: pytest.Item,
        why: str,
        runs: list[Run],
        databases: list[Located],
        kwargs: dict[str, Any],
        outcome: _Outcome,
    ) -> None:
        scope_only = why == "scope"
        outcome.why = "--seqdrift-scope=all" if scope_only else f"a migration test: {why}"
        outcome.probed = []
        reset = self.reset_made.get(item.nodeid, set())
        probed: set[DatabaseId] = set()
        for located in databases:  # pytest-django: every PostgreSQL alias
            prefix = f"{located.source}: " if len(databases) > 1 else ""
            failure = None
            try:
                with open_session(located.connection) as session:
                    database = session.database_id()
                    own_transaction = session.in_transaction
                    found, notes = self._judge(session, located, kwargs)
                    if scope_only:
                        found, more = self._outliving(session, found, own_transaction)
                        notes += more
            except _driver_errors() as exc:
                # a lost connection, a lock or statement timeout the probe cannot work
                # round: this test fails with the reason, and the run goes on
                failure = describe(exc)
            if failure is not None:  # outside the handler: no exception chain is shown
                where = f" ({located.source})" if len(databases) > 1 else ""
                holders = _lock_holders(located) if "lock timeout" in failure else []
                if holders:
                    # most often the test's own transaction, open on a connection of its
                    # own (a SQLAlchemy session the fixture closes after the probe)
                    failure += f"; held by another session's open transaction: {'; '.join(holders)}"
                outcome.cannot = f"{HEADER} could not check the database{where}: {failure}"
                return
            if database in probed:
                continue
            probed.add(database)
            outcome.notes += [prefix + n for n in notes]
            fresh = self._fresh(item, database, found, scope_only, prefix, outcome)
            self._add(item, outcome, prefix, database, found, fresh, reset)
        for run in runs:  # what the body migrated on a database it did not hand us
            if run.database not in probed:
                prefix = f"database {run.database.name} ({run.description}): "
                fresh = self._fresh(item, run.database, run.report, scope_only, prefix, outcome)
                self._add(item, outcome, prefix, run.database, run.report, fresh, reset)
        outcome.no_database = not databases and not runs

    def _fresh(
        self,
        item: pytest.Item,
        database: DatabaseId,
        report: Report,
        scope_only: bool,
        prefix: str,
        outcome: _Outcome,
    ) -> list[Finding]:
        """The findings this test is to be failed for: not the drift its set-up left
        (reported once, where it was found), not drift an earlier test was failed for --
        under ``--seqdrift-scope=all`` on the same column, whatever the sequence's state
        now (a failing insert moves it); for a migration test the same finding made by
        the same step (pytest-alembic's tests each run the same upgrade); drift no
        step made is a migration test's own, every time."""
        fresh = []
        for f in report.findings:
            column = (database.name, *column_key(f.column))
            if finding_key(f) in self.born_keys or scope_only and column in self.born_columns:
                why = "the drift its set-up left, reported once"
            else:
                made_by = self._made_by(database, f)
                # a migration test's drift with no step to blame is its own, every time
                key = column if scope_only else made_by if made_by[-1] is not None else None
                earlier = None if key is None else self.blamed.get(key)
                if earlier is None:
                    fresh.append(f)
                    continue
                why = f"the same drift, reported at {earlier}"
            outcome.notes.append(f"{prefix}{f.column.label}: {why}")
        return fresh

    def _made_by(self, database: DatabaseId, f: Finding) -> tuple[Any, ...]:
        """The drift of one column of one database as one step made it (the step's
        label last: None where no step is to blame)."""
        step = self.watcher.origin(database, f) or self.watcher.origin(
            self._template_of(database), f
        )
        return (database.name, *column_key(f.column), None if step is None else step.label)

    def _add(
        self,
        item: pytest.Item,
        outcome: _Outcome,
        prefix: str,
        database: DatabaseId,
        found: Report,
        fresh: list[Finding],
        reset: set[ColumnKey],
    ) -> None:
        """A probed database's new findings, into the test's outcome."""
        assert outcome.probed is not None
        self.watcher.reported.update(finding_key(f) for f in fresh)
        for f in fresh:
            self.blamed[(database.name, *column_key(f.column))] = item.nodeid
            self.blamed[self._made_by(database, f)] = item.nodeid
        outcome.probed += [(database, f) for f in fresh]
        outcome.reset |= {column_key(f.column) for f in fresh} & reset
        if fresh:
            mine = Report(findings=fresh, checked=found.checked, skipped=found.skipped)
            annotate = self._annotate(database, reset)
            # render.text makes every line of the report printable; the prefix names
            # the database: made printable too
            outcome.probed_text.append(printable(prefix) + render.text(mine, annotate=annotate))

    def _judge(
        self, session: Session, located: Located, kwargs: dict[str, Any] | None = None
    ) -> tuple[Report, list[str]]:
        """Probe a test database (read-only check anything else): its report and notes."""
        s, kwargs = self.settings, kwargs or {}
        exclude = [*s.exclude, *(kwargs.get("exclude_tables") or ())]
        schemas = kwargs.get("schemas")
        if located.test_database or s.probe_dsn:
            result = probe(
                session,
                mode=kwargs.get("probe") or s.mode,  # type: ignore[arg-type]
                limit=kwargs.get("limit") or s.limit,
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
            session,
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

    def _outliving(
        self, session: Session, report: Report, own_transaction: bool
    ) -> tuple[Report, list[str]]:
        """Of what a test's connection sees inside its own transaction, the drift that
        outlives the transaction: what a second connection sees (committed rows, and
        the sequences, which no rollback moves back). Drift that lives only in rows the
        test's transaction holds is a note."""
        if not own_transaction or not report.findings:
            return report, []
        twin = session.twin()
        if twin is None:
            return report, ["no second connection could be opened: every drift counted"]
        failure = None
        try:
            with twin:
                committed = self.watcher.check(twin)
        except _driver_errors() as exc:
            failure = describe(exc)
        if failure is not None:
            return report, [f"what outlives the test's transaction is unknown: {failure}"]
        outlives = {column_key(f.column) for f in committed.findings}
        kept = [f for f in report.findings if column_key(f.column) in outlives]
        notes = [
            f"{f.column.label}: drift only inside this test's own transaction, which its "
            f"rollback takes away: {render.what_happens(f)}"
            for f in report.findings
            if column_key(f.column) not in outlives
        ]
        return Report(findings=kept, checked=report.checked, skipped=report.skipped), notes

    def _annotate(
        self, database: DatabaseId | None, reset: set[ColumnKey], *, setup: bool = False
    ) -> render.Annotate:
        """What a report adds to each finding of ``database``: the step that introduced
        it, or -- in a set-up whose steps were followed -- that it came after them."""
        template = self._template_of(database) if database is not None else None
        steps = [
            s
            for h in (self.watcher.history(database), self.watcher.history(template))
            if h is not None
            for s in h.steps
        ]

        def annotate(f: Finding) -> tuple[list[str], list[str]]:
            step = self.watcher.origin(database, f) or self.watcher.origin(template, f)
            if step is not None:
                return [advice.origin_line(step)], advice.fix_for(step, f)
            if column_key(f.column) in reset:
                return advice.reset_sequences_lines()
            if setup and steps:
                return [advice.after_steps_line(steps[-1])], []
            return [], []

        return annotate

    # -- reporting ---------------------------------------------------------------------

    def _finish(self, item: pytest.Item, phase: str, outcome: _Outcome) -> None:
        """Send what this phase found to the controller, then fail the test (or warn)."""
        outcome.notes += self.watcher.take_notes()
        drift = [self._born_text(b) for b in outcome.born]
        if outcome.probed_text:
            drift.append(
                f"{HEADER} sequence drift after this test ({outcome.why}):\n"
                + "\n".join(outcome.probed_text)
            )
        # one line each, that quotes the server's message (which may quote a name)
        trouble = [printable(f"{HEADER} {p}") for p in outcome.problems]
        if outcome.cannot:
            trouble.append(printable(outcome.cannot))
        steps, self.steps_sent = self.watcher.steps - self.steps_sent, self.watcher.steps
        value: dict[str, Any] = {"phase": phase, "test": item.nodeid}
        if steps:
            value["steps"] = steps
        if self.setups_unsent:
            value["setups"], self.setups_unsent = self.setups_unsent, 0
        if outcome.born:
            value["born"] = [
                {"source": b.source, **self._finding_dict(b.database, f)}
                for b in outcome.born
                for f in b.report.findings
            ]
        if outcome.probed is not None:
            value["probed"] = True
            value["findings"] = [
                self._finding_dict(db, f, column_key(f.column) in outcome.reset)
                for db, f in outcome.probed
            ]
        if outcome.no_database:
            value["no_database"] = True
        if outcome.notes:
            value["notes"] = outcome.notes
        fails = trouble or (drift and self.settings.fail)
        if fails:
            value["failed"] = ["could not check" if trouble else "drift", phase]
        item.user_properties.append((PROPERTY, value))
        if fails:
            pytest.fail("\n\n".join(drift + trouble), pytrace=False)
        if drift:  # seqdrift_fail = false: one line each; the summary has the rest
            lines = [part.splitlines()[0] for part in drift]
            item.warn(SeqdriftWarning("\n".join([*lines, "(details: the sequence drift summary)"])))

    def _born_text(self, born: Born) -> str:
        return (
            f"{HEADER} sequence drift in the set-up of {printable(born.source)}\n"
            "(found at this test's set-up, which built or first received that database: "
            "not the test's doing, and reported here once)\n"
            + render.text(born.report, annotate=self._annotate(born.database, set(), setup=True))
        )

    def _finding_dict(
        self, database: DatabaseId | None, f: Finding, reset: bool = False
    ) -> dict[str, Any]:
        """A finding as it travels to the controller: the CLI's JSON fields, the words
        of its failure, and what introduced it where known."""
        d = render.finding_dict(f)
        d["what"] = render.what_happens(f)
        step = self.watcher.origin(database, f) or self.watcher.origin(
            self._template_of(database) if database is not None else None, f
        )
        if step is not None:
            d["introduced_by"] = step.label
        elif reset:
            d["introduced_by"] = advice.RESET_ORIGIN
        return d

    # -- gathering, on the controller --------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == PROPERTY and isinstance(value, dict) and value.get("phase") == report.when:
                self.run.gather(value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # workers write nothing: the controller has every finding
        self._check_dsn_at_end(session)
        path = self.settings.report_path
        if path:
            findings = self.run.report_findings()
            out = {"version": render.JSON_VERSION, "findings": findings}
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
                    exclude_tables=self.settings.exclude,
                    threshold=self.settings.threshold,
                    max_scan_rows=self.settings.max_scan_rows,
                )
        except (CannotCheck, psycopg.Error) as exc:
            self.run.notes.append(f"end of session: could not check --seqdrift-dsn: {exc}")
            return
        fresh = self.run.end_of_session(report)
        if fresh and self.settings.fail and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        verbose = self.config.getoption("verbose") > 0
        lines = self.run.lines(verbose=verbose, scope_all=self.settings.scope == "all")
        if lines and lines[0] is summary.SECTION:
            terminalreporter.write_sep("=", "sequence drift (pytest-seqdrift)")
            lines = lines[1:]
        for line in lines:
            terminalreporter.write_line(line)


def _claims_folder(run: str) -> Path:
    """Where the workers of one pytest-xdist run claim the set-up findings they report:
    a folder named after the run, which the controller removes at the end."""
    return Path(tempfile.gettempdir()) / f"pytest-seqdrift-{os.getuid()}-{run}"


def _ids(databases: list[Located]) -> set[DatabaseId]:
    """Which databases these are (a database that cannot tell is left out)."""
    found = set()
    for located in databases:
        try:
            with open_session(located.connection) as session:
                found.add(session.database_id())
        except _driver_errors():
            continue
    return found


def _func(defs: Any, name: str) -> Any:
    found = defs.get(name) if hasattr(defs, "get") else None
    return found[-1].func if found else None


def _lock_holders(located: Located) -> list[str]:
    """Who holds locks in this database, asked on a connection of its own (the test's
    may be the one left waiting)."""
    try:
        with open_session(located.connection) as session:
            twin = session.twin()
        if twin is None:
            return []
        with twin:
            return session_for(twin).lock_holders()
    except _driver_errors():
        return []
