"""What a phase of a test found, turned into the test's outcome: the failure (or the
warning) the test gets, and the ``seqdrift`` property its report carries to the
controller (from a pytest-xdist worker too), where ``summary`` gathers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_seqdrift import render
from pytest_seqdrift.db.session import DatabaseId
from pytest_seqdrift.model import Finding, Report, printable
from pytest_seqdrift.plugin import advice
from pytest_seqdrift.plugin.history import ColumnKey, column_key
from pytest_seqdrift.plugin.state import State
from pytest_seqdrift.plugin.watch import finding_key

PROPERTY = "seqdrift"  # report.user_properties key: what travels to the xdist controller
HEADER = "pytest-seqdrift:"


class SeqdriftWarning(UserWarning):
    """Base class of pytest-seqdrift's warnings: drift found while not failing on it."""


# where users import it from (and filter it by): the name pytest prints for it
SeqdriftWarning.__module__ = "pytest_seqdrift.plugin"


@dataclass
class Born:
    """Drift found in the set-up of a test database, to report at the set-up of the
    test that receives it first."""

    source: str  # where the database came from, for people
    report: Report  # its findings not reported before (and what was checked)
    database: DatabaseId | None


@dataclass
class Outcome:
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


class Reporter:
    """Each phase's outcome, to the test and to the controller."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.steps_sent = 0  # the watcher's step count at the last report

    def add_probed(
        self,
        item: pytest.Item,
        outcome: Outcome,
        prefix: str,
        database: DatabaseId,
        found: Report,
        fresh: list[Finding],
        reset: set[ColumnKey],
    ) -> None:
        """A probed database's new findings, into the test's outcome."""
        assert outcome.probed is not None
        state = self.state
        state.watcher.reported.update(finding_key(f) for f in fresh)
        for f in fresh:
            state.blamed[(database.name, *column_key(f.column))] = item.nodeid
            state.blamed[state.made_by(database, f)] = item.nodeid
            state.reported(database.name, f)
        outcome.probed += [(database, f) for f in fresh]
        outcome.reset |= {column_key(f.column) for f in fresh} & reset
        if fresh:
            mine = Report(findings=fresh, checked=found.checked, skipped=found.skipped)
            annotate = self.annotate(database, reset)
            # render.text makes every line of the report printable; the prefix names
            # the database: made printable too
            outcome.probed_text.append(printable(prefix) + render.text(mine, annotate=annotate))

    def annotate(
        self, database: DatabaseId | None, reset: set[ColumnKey], *, setup: bool = False
    ) -> render.Annotate:
        """What a report adds to each finding of ``database``: the step that introduced
        it, or -- in a set-up whose steps were followed -- that it came after them."""
        watcher = self.state.watcher
        template = self.state.template_of(database) if database is not None else None
        steps = [
            s
            for h in (watcher.history(database), watcher.history(template))
            if h is not None
            for s in h.steps
        ]

        def annotate(f: Finding) -> tuple[list[str], list[str]]:
            step = watcher.origin(database, f) or watcher.origin(template, f)
            if step is not None:
                return [advice.origin_line(step)], advice.fix_for(step, f)
            if column_key(f.column) in reset:
                return advice.reset_sequences_lines()
            if setup and steps:
                return [advice.after_steps_line(steps[-1])], []
            return [], []

        return annotate

    def finish(self, item: pytest.Item, phase: str, outcome: Outcome) -> None:
        """Send what this phase found to the controller, then fail the test (or warn)."""
        state, watcher = self.state, self.state.watcher
        outcome.notes += watcher.take_notes()
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
        steps, self.steps_sent = watcher.steps - self.steps_sent, watcher.steps
        value: dict[str, Any] = {"phase": phase, "test": item.nodeid}
        if steps:
            value["steps"] = steps
        if state.setups_unsent:
            value["setups"], state.setups_unsent = state.setups_unsent, 0
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
        fails = trouble or (drift and state.settings.fail)
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
            + render.text(born.report, annotate=self.annotate(born.database, set(), setup=True))
        )

    def _finding_dict(
        self, database: DatabaseId | None, f: Finding, reset: bool = False
    ) -> dict[str, Any]:
        """A finding as it travels to the controller: the CLI's JSON fields, the words
        of its failure, and what introduced it where known."""
        d = render.finding_record(f)
        watcher = self.state.watcher
        step = watcher.origin(database, f) or watcher.origin(
            self.state.template_of(database) if database is not None else None, f
        )
        if step is not None:
            d["introduced_by"] = step.label
        elif reset:
            d["introduced_by"] = advice.RESET_ORIGIN
        return d
