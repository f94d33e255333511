"""The hooks: the options and the marker always; with ``--seqdrift``, the
``SeqdriftPlugin`` whose hooks follow each test's phases -- its set-up checked
(``setups``), its body probed (``probing``), each phase's outcome reported
(``outcome``) -- and gather the run's summary on the controller (``summary``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import shutil
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import checker, render
from pytest_seqdrift.db.adapters import is_async_object
from pytest_seqdrift.errors import CannotCheck
from pytest_seqdrift.plugin import compat, fixtures, summary
from pytest_seqdrift.plugin.asynchronous import (
    asynchronous,
    in_sync_test,
    with_sessions,
    wrappable,
    wrapped_body,
)
from pytest_seqdrift.plugin.fixtures import PG_CLIENTS
from pytest_seqdrift.plugin.history import ColumnKey, column_key
from pytest_seqdrift.plugin.listeners import Listening
from pytest_seqdrift.plugin.locate import (
    Located,
    django_database_names,
    django_ready,
    django_resets_sequences,
    django_test_case_databases,
    migration_fixture,
    postgresql_fixture_kind,
    uses_database,
)
from pytest_seqdrift.plugin.options import DSN_OPTION, ENABLE, add_options, get_option
from pytest_seqdrift.plugin.outcome import PROPERTY, Outcome, Reporter
from pytest_seqdrift.plugin.probing import MARKER, Prober, handed_databases, marker_kwargs
from pytest_seqdrift.plugin.setups import SetupChecks, claims_folder
from pytest_seqdrift.plugin.state import Settings, State, driver_errors
from pytest_seqdrift.plugin.watch import Watcher, finding_key


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    compat.mend_pytest_alembic()  # before collection; see compat.py
    if get_option(config, ENABLE):
        config.pluginmanager.register(SeqdriftPlugin(config), "seqdrift-plugin")


class SeqdriftPlugin:
    """Registered with ``--seqdrift`` only: follows which phase of which test runs,
    and hands each phase's work to its parts, which share one ``State``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = s = Settings.from_config(config)
        self.run = summary.Run()
        self.watcher = Watcher(options=s.options, run_context=self._run_context)
        self.state = State(s, self.watcher)
        self.setups = SetupChecks(self.state)
        self.reporter = Reporter(self.state)
        self.prober = Prober(self.state, self.reporter)
        self.listening = Listening(self.watcher)
        self.phase: str | None = None
        self.fixtures: list[str] = []  # the fixtures being set up, innermost last
        self.pending: Outcome = Outcome()  # set-up findings not reported yet
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and "testrunuid" in workerinput:
            self.state.claims = claims_folder(str(workerinput["testrunuid"]))
            self.state.claims.mkdir(parents=True, exist_ok=True)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.listening.stop()
        if self.state.claims is not None and not hasattr(config, "workerinput"):
            shutil.rmtree(self.state.claims, ignore_errors=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist, on the controller: the folder its workers claim findings in."""
        self.state.claims = claims_folder(str(node.workerinput["testrunuid"]))

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
        if any(name in self.state.fixture_databases for name in names):
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
            override = self._override_arguments(item)
            # a user's override that takes no fixture hands its database to every test
            feeds = override is not None and (
                not override or any(name in names for name in override)
            )
            if self._marked_or_migrating(item) or self._uses_database(item) or feeds:
                names.append("seqdrift_connection")  # set up with the test's own fixtures

    def _override_arguments(self, item: pytest.Item) -> tuple[str, ...] | None:
        """The fixtures the user's own ``seqdrift_connection`` takes, as this test would
        see it; None where it is ours. A test that uses one of them uses that database."""
        manager = getattr(item.session, "_fixturemanager", None)
        try:
            found = manager.getfixturedefs("seqdrift_connection", item) if manager else None
        except (TypeError, AttributeError):  # another pytest's signature: not known
            return None
        if not found or found[-1].func.__module__ == fixtures.__name__:
            return None
        self.state.override = tuple(a for a in found[-1].argnames if a != "request")
        return self.state.override

    def pytest_report_header(self, config: pytest.Config) -> str:
        s, exclude = self.settings, self.settings.options.exclude_tables
        dsn = "set" if get_option(config, DSN_OPTION) else "none"
        return (
            f"seqdrift: probe={s.mode} limit={s.limit} scope={s.scope} "
            f"on-drift={'fail' if s.fail else 'warn'} threshold={s.options.threshold} dsn={dsn}"
            + (" (probed)" if s.probe_dsn else "")
            + (f" exclude={','.join(exclude)}" if exclude else "")
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
            templates = self.state.templates
            templates[(str(value.port), str(value.dbname))] = str(value.template_dbname)
        if django:
            self.setups.check_django(request, names_before, self.pending)
        self.setups.take_runs(self.pending)
        return value

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        marker_kwargs(item)  # a mistyped marker fails before the test's set-up
        self.phase = "setup"
        try:
            yield
        finally:
            self.phase = None
        outcome, self.pending = self.pending, Outcome()
        for located in handed_databases(item):
            if not is_async_object(located.connection):
                self.setups.check(located, outcome)  # once a database: django_db_setup's are done
            elif not wrappable(item):  # its async tests check it; this one is told
                outcome.notes.append(f"not checked here: {in_sync_test(located)}")
            # else on the test's event loop, as its call begins (see pytest_runtest_call)
        self.setups.take_runs(outcome)
        if self._resets_before_probe(item):
            self._record_reset(item)
        self.reporter.finish(item, "setup", outcome)

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
        for located in handed_databases(item):
            try:
                report = self.watcher.check(located.connection)
            except driver_errors():
                continue
            drifted |= {
                column_key(f.column)
                for f in report.findings
                if finding_key(f) not in self.state.born_keys
            }
        self.state.reset_made[item.nodeid] = drifted

    # -- the probe, right after the test body ------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        steps_before = self.watcher.steps
        self.phase = "call"
        handed = handed_databases(item)
        later = asynchronous(handed)
        done: list[Outcome] = []  # the probe's, where it ran inside the call
        as_it_returns = False  # probed as a Django test case's method returns
        try:
            if later and wrappable(item):
                with wrapped_body(
                    item,
                    before=lambda: self._async_setup(item, later),
                    after=lambda: self._async_probe(item, steps_before, handed, done),
                ):
                    result = yield
            else:
                # the test body; raises if it failed, and then no probe
                with before_django_teardown(
                    item, after=lambda: done.append(self._after_body(item, steps_before))
                ) as as_it_returns:
                    result = yield
        finally:
            self.phase = "teardown"
        # (a unittest method that raised did not return: no probe, as for a failed body)
        outcome = done[0] if done else self._after_body(item, steps_before, not as_it_returns)
        self.reporter.finish(item, "call", outcome)
        return result

    def _after_body(
        self,
        item: pytest.Item,
        steps_before: int,
        probe: bool = True,
        databases: list[Located] | None = None,
    ) -> Outcome:
        """The probe after the body, when the test is a migration test (or under
        ``--seqdrift-scope=all`` uses a database) and ``probe``."""
        outcome, self.pending = self.pending, Outcome()
        runs = self.watcher.take_runs()  # migrations the body ran, to the end
        why = self._why_probed(item, steps_before) if probe else None
        if why is not None:
            self.prober.probe(item, why, runs, outcome, databases)
        return outcome

    def _why_probed(self, item: pytest.Item, steps_before: int) -> str | None:
        why = self._marked_or_migrating(item)
        if why is None and self.watcher.steps > steps_before:
            why = "it ran migrations"
        # a Django TestCase method uses its class's ``databases`` (no fixture is added
        # to it: unittest's tests take none)
        if (
            why is None
            and self.settings.scope == "all"
            and (self._uses_database(item) or django_test_case_databases(item))
        ):
            why = "scope"
        return why

    async def _async_setup(self, item: pytest.Item, databases: list[Located]) -> None:
        """The set-up check of the databases handed as async objects, as the test's
        coroutine starts; drift found fails the test before its body runs."""

        def check(sessions: list[Located]) -> Outcome:
            outcome = Outcome()
            for located in sessions:
                self.setups.check(located, outcome)
            return outcome

        outcome = await with_sessions(databases, check)
        self.reporter.finish(item, "call", outcome)

    async def _async_probe(
        self, item: pytest.Item, steps_before: int, handed: list[Located], done: list[Outcome]
    ) -> None:
        """The probe after the body, on the test's event loop and connections (opened
        only when there is a probe: an engine lends a new connection each time)."""
        if self._why_probed(item, steps_before) is None:
            done.append(self._after_body(item, steps_before))
            return
        later = asynchronous(handed)

        def probe(sessions: list[Located]) -> Outcome:
            swapped = iter(sessions)
            databases = [next(swapped) if any(d is x for x in later) else d for d in handed]
            return self._after_body(item, steps_before, databases=databases)

        done.append(await with_sessions(later, probe))

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.state.reset_made.pop(item.nodeid, None)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.phase, self.state.phase_item = None, nodeid

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
                report = checker.run(conn, self.settings.options)
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


@contextlib.contextmanager
def before_django_teardown(item: pytest.Item, after: Callable[[], object]) -> Iterator[bool]:
    """For a test written as a Django ``TransactionTestCase`` (or ``TestCase``) method:
    ``after()`` as its method returns, before ``tearDown`` and Django's
    ``_post_teardown``, which flushes the rows it committed (or rolls its transaction
    back) -- where a pytest-style test is probed, before its fixtures' teardown. Not
    when the method raised. Yields whether it is so (an ``async def`` method, and any
    other test, is probed after the call)."""
    test = sys.modules.get("django.test")  # not imported: no Django test case
    instance = getattr(item, "instance", None) if test is not None else None
    name = getattr(instance, "_testMethodName", None)
    original = getattr(instance, name, None) if isinstance(name, str) else None
    if (
        test is None
        or not isinstance(instance, test.TransactionTestCase)
        or original is None
        or inspect.iscoroutinefunction(original)
    ):
        yield False
        return

    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        result = original(*args, **kwargs)
        after()
        return result

    setattr(instance, str(name), method)
    try:
        yield True
    finally:
        with contextlib.suppress(AttributeError):
            delattr(instance, str(name))


def _func(defs: Any, name: str) -> Any:
    found = defs.get(name) if hasattr(defs, "get") else None
    return found[-1].func if found else None
