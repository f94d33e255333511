"""The probe after a test's body: which databases the test used, what each holds now,
and which of its drift is the test's to be failed for -- not its set-up's (reported
once, where it was found), not what an earlier test was failed for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import checker, render
from pytest_seqdrift.db.adapters import open_session, session_for
from pytest_seqdrift.db.session import DatabaseId, Session, error_line
from pytest_seqdrift.model import Finding, Report
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.plugin.asynchronous import asynchronous, in_sync_test
from pytest_seqdrift.plugin.history import column_key
from pytest_seqdrift.plugin.locate import Located, django_test_case_databases, wrap
from pytest_seqdrift.plugin.outcome import HEADER, Outcome, Reporter
from pytest_seqdrift.plugin.state import Settings, State, driver_errors
from pytest_seqdrift.plugin.watch import Run, finding_key
from pytest_seqdrift.probe import probe
from pytest_seqdrift.probe.since import Mark, probe_since

# marks kept at once: a database made for each test (pytest-postgresql's ``postgresql``)
# is never probed again, and a mark holds a copy of its discovery and its answers
MARKS_KEPT = 8

MARKER = (
    "seqdrift(*, probe=None, limit=None, schemas=None, exclude_tables=None): a migration "
    "test whose database pytest-seqdrift probes for sequence drift after the test body"
)
_MARKER_KEYWORDS = {"probe", "limit", "schemas", "exclude_tables"}


def marker_kwargs(item: pytest.Item) -> dict[str, Any]:
    """The keywords of the test's ``seqdrift`` marker; a mistyped one fails the test."""
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


def handed_databases(item: pytest.Item) -> list[Located]:
    """The databases the test's ``seqdrift_connection`` handed it."""
    funcargs = getattr(item, "funcargs", {})
    if "seqdrift_connection" not in funcargs:
        return []
    return wrap(funcargs["seqdrift_connection"], "fixture seqdrift_connection")


def judge(
    settings: Settings,
    session: Session,
    located: Located,
    kwargs: dict[str, Any] | None = None,
    marks: dict[DatabaseId, Mark] | None = None,
    database: DatabaseId | None = None,
) -> tuple[Report, list[str]]:
    """Probe a test database (read-only check anything else): its report and notes.
    With ``marks`` (``--seqdrift-scope=all``), a database probed before on the same
    connection is judged again only where the test could have changed it."""
    s, kwargs = settings, kwargs or {}
    exclude = [*s.options.exclude_tables, *(kwargs.get("exclude_tables") or ())]
    schemas = kwargs.get("schemas")
    if located.test_database or s.probe_dsn:
        mode = kwargs.get("probe") or s.mode
        limit = kwargs.get("limit") or s.limit
        if marks is not None:
            options = CheckOptions.of(
                schemas=schemas, exclude_tables=exclude, threshold=s.options.threshold
            )
            database = database or session.database_id()
            done = probe_since(session, mode, limit, options, marks.pop(database, None))  # type: ignore[arg-type]
            if done.mark is not None:
                marks[database] = done.mark  # the newest last: the oldest go first
                while len(marks) > MARKS_KEPT:
                    del marks[next(iter(marks))]
            result = done.result
        else:
            result = probe(
                session,
                mode=mode,  # type: ignore[arg-type]
                limit=limit,
                schemas=schemas,
                exclude_tables=exclude,
                threshold=s.options.threshold,
            )
        notes = [
            f"{p.column.label}: {p.note}" for p in result.probed if p.note and "empty" not in p.note
        ]
        notes += [
            f"{p.column.label}: the probe stopped at its limit ({p.drawn} values) before "
            "passing the highest existing value; the arithmetic's answer stands"
            for p in result.probed
            if not p.passed_max
        ]
        return result.report, notes
    options = dataclasses.replace(
        s.options,
        schemas=None if schemas is None else tuple(schemas),
        exclude_tables=tuple(exclude),
    )
    report = checker.run(session, options)
    note = (
        f"{located.source} is not known to be a test database: checked read-only, "
        "not probed (--seqdrift-probe-dsn opts in)"
    )
    return report, [note]


class Prober:
    """Probes a test's databases after its body, into the phase's ``Outcome``."""

    def __init__(self, state: State, reporter: Reporter) -> None:
        self.state = state
        self.reporter = reporter

    def probe(
        self,
        item: pytest.Item,
        why: str,
        runs: list[Run],
        outcome: Outcome,
        handed: list[Located] | None = None,
    ) -> None:
        """Probe the test's databases after its body. A migration test fails on any drift
        but what the set-up already reported; under ``--seqdrift-scope=all`` a test that
        is not one fails only on drift that outlives its own transaction and that no
        earlier test was failed for."""
        kwargs = marker_kwargs(item)
        with contextlib.ExitStack() as stack:
            # ``handed``: with sessions on the test's event loop for its async objects
            databases = handed_databases(item) if handed is None else list(handed)
            if not databases:  # a Django TestCase method: no fixture hands it over
                databases = django_test_case_databases(item)
            for located in asynchronous(databases):  # a synchronous test's
                outcome.cannot = f"{HEADER} could not probe: {in_sync_test(located)}"
                return
            names = set(getattr(item, "fixturenames", ()))
            if names & set(self.state.fixture_databases):  # else no round trip to ask
                databases += self._fixture_databases(item, stack, _ids(databases))
            self._probe_databases(item, why, runs, databases, kwargs, outcome)

    def _fixture_databases(
        self, item: pytest.Item, stack: contextlib.ExitStack, located: set[DatabaseId]
    ) -> list[Located]:
        """The databases the test's fixtures migrated, but for those ``located``
        already, on connections of our own (closed with ``stack``): probed where they
        live on a server pytest-postgresql started, checked read-only elsewhere."""
        names = set(getattr(item, "fixturenames", ()))
        servers = {port for port, _ in self.state.templates}
        found = []
        for name, (database, connect) in self.state.fixture_databases.items():
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
        outcome: Outcome,
    ) -> None:
        scope_only = why == "scope"
        outcome.why = "--seqdrift-scope=all" if scope_only else f"a migration test: {why}"
        outcome.probed = []
        reset = self.state.reset_made.get(item.nodeid, set())
        add = self.reporter.add_probed
        probed: set[DatabaseId] = set()
        for located in databases:  # pytest-django: every PostgreSQL alias
            prefix = f"{located.source}: " if len(databases) > 1 else ""
            failure = None
            try:
                with open_session(located.connection) as session:
                    database = session.database_id()
                    own_transaction = session.in_transaction
                    marks = self.state.marks if scope_only else None
                    found, notes = judge(
                        self.state.settings, session, located, kwargs, marks, database
                    )
                    # a second connection's check only where the test could be failed
                    if scope_only and self._any_fresh(database, found):
                        found, more = self._outliving(session, found, own_transaction)
                        notes += more
            except driver_errors() as exc:
                # a lost connection, a lock or statement timeout the probe cannot work
                # round: this test fails with the reason, and the run goes on
                failure = error_line(exc)
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
            fresh = self._fresh(database, found, scope_only, prefix, outcome)
            add(item, outcome, prefix, database, found, fresh, reset)
        for run in runs:  # what the body migrated on a database it did not hand us
            if run.database not in probed:
                prefix = f"database {run.database.name} ({run.description}): "
                fresh = self._fresh(run.database, run.report, scope_only, prefix, outcome)
                add(item, outcome, prefix, run.database, run.report, fresh, reset)
        outcome.no_database = not databases and not runs

    def _fresh(
        self,
        database: DatabaseId,
        report: Report,
        scope_only: bool,
        prefix: str,
        outcome: Outcome,
    ) -> list[Finding]:
        """The findings this test is to be failed for: not the drift its set-up left
        (reported once, where it was found), not drift an earlier test was failed for --
        under ``--seqdrift-scope=all`` on the same column, whatever the sequence's state
        now (a failing insert moves it); for a migration test the same finding made by
        the same step (pytest-alembic's tests each run the same upgrade); drift no
        step made is a migration test's own, every time. Under ``--seqdrift-scope=all``
        rows past every id reported on the column are new drift, the test's own: a
        failing insert moves the sequence, never the rows."""
        fresh = []
        for f in report.findings:
            why = self._stale(database, f, scope_only)
            if why is None:
                fresh.append(f)
            else:
                outcome.notes.append(f"{prefix}{f.column.label}: {why}")
        return fresh

    def _stale(self, database: DatabaseId, f: Finding, scope_only: bool) -> str | None:
        """Why ``_fresh`` leaves a finding out, or None when the test is failed for it."""
        state = self.state
        column = (database.name, *column_key(f.column))
        if finding_key(f) in state.born_keys:
            return "the drift its set-up left, reported once"
        if scope_only and state.past_reported(database.name, f):
            return None  # rows past every id reported on the column: this test's drift
        if scope_only and column in state.born_columns:
            return "the drift its set-up left, reported once"
        made_by = state.made_by(database, f)
        # a migration test's drift with no step to blame is its own, every time
        key = column if scope_only else made_by if made_by[-1] is not None else None
        earlier = None if key is None else state.blamed.get(key)
        return None if earlier is None else f"the same drift, reported at {earlier}"

    def _any_fresh(self, database: DatabaseId, report: Report) -> bool:
        """Whether any finding could be one a ``--seqdrift-scope=all`` test is failed for
        (``_fresh``). Where none is, what outlives the test's transaction need not be
        asked."""
        return any(self._stale(database, f, True) is None for f in report.findings)

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
                committed = self.state.watcher.check(twin)
        except driver_errors() as exc:
            failure = error_line(exc)
        if failure is not None:
            return report, [f"what outlives the test's transaction is unknown: {failure}"]
        outlives = {column_key(f.column) for f in committed.findings}
        kept = [f for f in report.findings if column_key(f.column) in outlives]
        notes = [
            f"{f.column.label}: drift only against rows this test's own transaction holds, "
            f"which its rollback removes: {render.what_happens(f)}"
            for f in report.findings
            if column_key(f.column) not in outlives
        ]
        return Report(findings=kept, checked=report.checked, skipped=report.skipped), notes


def _ids(databases: list[Located]) -> set[DatabaseId]:
    """Which databases these are (a database that cannot tell is left out)."""
    found = set()
    for located in databases:
        try:
            with open_session(located.connection) as session:
                found.add(session.database_id())
        except driver_errors():
            continue
    return found


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
    except driver_errors():
        return []
