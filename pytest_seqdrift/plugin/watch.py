"""Following the test databases of one run, for the plugin: a check after every step
that sets one up (``listeners``), the history of each database (``history``), and
which findings were already reported, so that drift is reported once.

No pytest here: the plugin tells the watcher what pytest knows (which phase of which
test it is in), and asks it to check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_seqdrift import checker, render
from pytest_seqdrift.db.adapters import open_session
from pytest_seqdrift.db.session import DatabaseId, error_line
from pytest_seqdrift.model import Finding, Report
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.plugin.history import History, Step

FindingKey = tuple[Any, ...]


# The fields of a finding (its JSON form) that make it the same finding.
KEY_FIELDS = (
    "kind",
    "schema",
    "table",
    "column",
    "sequence",
    "next_value",
    "first_collision",
    "max_existing",
    "values_left",
)


def key_of(finding: dict[str, Any]) -> FindingKey:
    """The key of a finding in its JSON form (as it travels from an xdist worker)."""
    return tuple(finding.get(k) for k in KEY_FIELDS)


def finding_key(f: Finding) -> FindingKey:
    """The same column with the same sequence state and the same ids is the same
    finding, in whichever database cloned from the same set-up it is seen."""
    return key_of(render.finding_dict(f))


@dataclass
class Run:
    """A run of steps that ended (``migrate``, an Alembic upgrade): where, and the drift
    the database was left with."""

    database: DatabaseId
    description: str
    report: Report
    owner: str | None = None  # the fixture that ran it, where one did
    connect: dict[str, Any] | None = None  # how to connect to the database again


# Where a run ran, as the plugin tells it: what to say ("in fixture 'engine'") and the
# fixture that ran it (None outside a fixture); None when its end is not wanted.
RunContext = tuple[str, str | None]


@dataclass
class Watcher:
    """The ``listeners.Recorder`` of a test run."""

    options: CheckOptions = CheckOptions()  # every check's (the run's exclude_tables too)
    # asked when a run ends: where it ran, when its end state should be kept for the
    # plugin (None: not wanted -- the plugin checks that database itself anyway)
    run_context: Callable[[], RunContext | None] = lambda: None
    histories: dict[DatabaseId, History] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)  # taken by the plugin
    notes: list[str] = field(default_factory=list)  # taken by the plugin
    steps: int = 0  # steps applied since the run started (checked or not)
    checks: int = 0  # checks made after steps and at the ends of runs
    reported: set[FindingKey] = field(default_factory=set)

    # -- listeners.Recorder ------------------------------------------------------------

    def step_applied(self, connection: Any, step: Step, may_drift: bool = True) -> None:
        with self._never_raising(f"after {step.label}"):
            self._step_applied(connection, step, may_drift)

    def run_ended(self, connection: Any, description: str) -> None:
        """The drift a run left, for the plugin to report when no check of its own
        follows (a fixture that migrates a database the plugin cannot locate): the check
        after the run's last step where there was one, else a check now."""
        with self._never_raising(f"at the end of the {description}"):
            self._run_ended(connection, description)

    @contextlib.contextmanager
    def _never_raising(self, when: str) -> Iterator[None]:
        """Whatever goes wrong here is noted: it must never reach the migration."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            self.notes.append(f"could not check the database {when}: {error_line(exc)}")

    def _step_applied(self, connection: Any, step: Step, may_drift: bool) -> None:
        self.steps += 1
        found = self._check(connection, f"after {step.label}", read=may_drift)
        if found is not None:
            database, report, _ = found
            self.histories.setdefault(database, History()).applied(step, report)

    def _run_ended(self, connection: Any, description: str) -> None:
        context = self.run_context()
        if context is None:
            return
        where, owner = context
        description = f"{description}, {where}"
        found = self._check(connection, f"at the end of the {description}", read=False)
        if found is None:
            return
        database, _, connect = found
        history = self.histories.get(database)
        report = history.current if history is not None else None
        if report is None:
            again = self._check(connection, f"at the end of the {description}")
            report = None if again is None else again[1]
        if report is not None:
            self.runs.append(Run(database, description, report, owner, connect))

    def _check(
        self, connection: Any, when: str, *, read: bool = True
    ) -> tuple[DatabaseId, Report | None, dict[str, Any] | None] | None:
        """Which database (and how to reach it again), and with ``read`` a read-only
        check of it; None where that failed (noted): a migration must never fail
        because of it."""
        try:
            with open_session(connection) as session:
                database = session.database_id()
                report = self.check(session) if read else None
                connect = None if read else session.connect_params()
        except Exception as exc:  # noqa: BLE001 -- nothing may reach the migration
            self.notes.append(f"could not check the database {when}: {error_line(exc)}")
            return None
        self.checks += read
        return database, report, connect

    def check(self, connection: Any) -> Report:
        """The read-only check with the run's options (its ``exclude_tables`` too)."""
        return checker.run(connection, self.options)

    # -- what the plugin asks ------------------------------------------------------------

    def history(self, database: DatabaseId | None) -> History | None:
        return None if database is None else self.histories.get(database)

    def origin(self, database: DatabaseId | None, finding: Finding) -> Step | None:
        history = self.history(database)
        return None if history is None else history.origin(finding)

    def loads(self, database: DatabaseId) -> list[Step]:
        history = self.histories.get(database)
        return [s for s in history.steps if s.kind == "load"] if history else []

    def take_runs(self) -> list[Run]:
        runs, self.runs = self.runs, []
        return runs

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def new_findings(self, report: Report) -> list[Finding]:
        """The findings not reported yet; they count as reported from now on."""
        fresh = [f for f in report.findings if finding_key(f) not in self.reported]
        self.reported.update(finding_key(f) for f in fresh)
        return fresh
