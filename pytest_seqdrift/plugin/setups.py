"""The check of a test database once its set-up is complete: pytest-django's after
``django_db_setup``, any other at the end of the first set-up that hands it to a test,
and the databases a fixture migrated on its own. Drift found there is the set-up's:
claimed once for the run (once across pytest-xdist's workers), reported at the set-up
of the test that first receives the database, naming where it came from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_seqdrift.db.adapters import open_session
from pytest_seqdrift.db.session import DatabaseId, Session, error_line
from pytest_seqdrift.model import Finding, Report
from pytest_seqdrift.plugin.history import column_key
from pytest_seqdrift.plugin.locate import Located, django_test_databases
from pytest_seqdrift.plugin.outcome import Born, Outcome
from pytest_seqdrift.plugin.probing import judge
from pytest_seqdrift.plugin.state import State, driver_errors
from pytest_seqdrift.plugin.watch import finding_key


def claims_folder(run: str) -> Path:
    """Where the workers of one pytest-xdist run claim the set-up findings they report:
    a folder named after the run, which the controller removes at the end."""
    return Path(tempfile.gettempdir()) / f"pytest-seqdrift-{os.getuid()}-{run}"


class SetupChecks:
    """Checks each test database's set-up once, into the phase's ``Outcome``."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.connection_ids: weakref.WeakKeyDictionary[Any, DatabaseId] = (
            weakref.WeakKeyDictionary()
        )
        self.django_databases: list[Located] = []  # those django_db_setup set up

    def check_django(
        self, request: pytest.FixtureRequest, names_before: dict[str, str], outcome: Outcome
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
                self.check(located, outcome, again=True)

    def check(self, located: Located, outcome: Outcome, *, again: bool = False) -> None:
        """Check (on a test database: probe) a database whose set-up is complete, once
        (``again``: once more, after more set-up)."""
        state = self.state
        failure = None
        try:
            with open_session(located.connection) as session:
                database = self._database_of(session)
                if database in state.checked and not again:
                    return
                state.checked.add(database)
                report, notes = judge(state.settings, session, located)
        except driver_errors() as exc:
            failure = error_line(exc)
        if failure is not None:  # raised outside the handler: no exception chain shown
            outcome.problems.append(f"could not check {located.source}: {failure}")
            return
        state.setups_unsent += 1
        outcome.notes += [f"{located.source}: {n}" for n in notes]
        fresh = self._claim(state.watcher.new_findings(report), outcome, database)
        if fresh:
            source = self._describe(located, database)
            mine = Report(findings=fresh, checked=report.checked, skipped=report.skipped)
            outcome.born.append(Born(source, mine, database))

    def take_runs(self, outcome: Outcome) -> None:
        """Migration runs that ended in a set-up, on databases no check of ours covers:
        their end state is set-up drift (a fixture upgrading a database of its own)."""
        state = self.state
        for run in state.watcher.take_runs():
            if run.owner is not None and run.connect is not None:
                state.fixture_databases[run.owner] = (run.database, run.connect)
            if run.database in state.checked:
                continue
            fresh = self._claim(state.watcher.new_findings(run.report), outcome, run.database)
            if fresh:
                source = f"database {run.database.name} ({run.description})"
                mine = Report(fresh, run.report.checked, run.report.skipped)
                outcome.born.append(Born(source, mine, run.database))

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

    def _claim(self, fresh: list[Finding], outcome: Outcome, database: DatabaseId) -> list[Finding]:
        """Set-up findings become this process's to report. Under pytest-xdist every
        worker sets up a database of its own from the same migrations and files, and
        finds the same drift: the first worker to claim a finding reports it, the others
        only note it (they write nothing but an empty claim file, shared by the run)."""
        state = self.state
        state.born_keys.update(finding_key(f) for f in fresh)
        state.born_columns.update((database.name, *column_key(f.column)) for f in fresh)
        here = state.phase_item or "the set-up"
        for f in fresh:  # a test that runs the same migration again makes the same drift
            if (made_by := state.made_by(database, f))[-1] is not None:
                state.blamed.setdefault(made_by, here)
            state.reported(database.name, f)
        if state.claims is None:
            return fresh
        mine = []
        for f in fresh:
            name = hashlib.sha256(repr(finding_key(f)).encode()).hexdigest()[:32]
            try:
                os.close(os.open(state.claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                outcome.notes.append(f"{f.column.label}: the set-up drift another worker reports")
                continue
            mine.append(f)
        return mine

    def _describe(self, located: Located, database: DatabaseId) -> str:
        """Where a set-up's database came from, and what set it up, for people."""
        state = self.state
        history = state.watcher.history(database)
        steps = history.steps if history is not None else []
        source = located.source
        details = [f"database {database.name}"]
        if source == "fixture seqdrift_connection" and state.override:
            source += f" (from {', '.join(state.override)})"
        if any(s.kind == "migration" for s in steps):
            details.append("after migrations")
        elif source.startswith("pytest-django"):
            details.append(
                "no migration ran in this set-up (--reuse-db, --no-migrations): run once "
                "with --create-db and migrations to have the one that made it named"
            )
        elif any(s.kind == "revision" for s in steps):
            details.append("after Alembic revisions")
        template = state.template_of(database)
        if template is not None:
            loads = ", ".join(s.name for s in state.watcher.loads(template))
            details.append(f"created from template {template.name}")
            if loads:
                details[-1] += f" loaded with {loads}"
        return f"{source} ({', '.join(details)})"
