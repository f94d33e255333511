"""The run's summary, on the controller: what every test report carried (xdist
workers' included), gathered, and the lines of the ``sequence drift`` section -- the
findings and the counts in ``render``'s words, from the dicts the reports carried.

No pytest here: the plugin hands over each report's ``seqdrift`` property and writes
the lines it gets back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pytest_seqdrift import render
from pytest_seqdrift.model import Report, printable
from pytest_seqdrift.plugin.locate import NO_DATABASE_HELP
from pytest_seqdrift.plugin.watch import key_of

SECTION = "\x00section"  # the first line when a section is wanted: "=== sequence drift ==="


@dataclass
class Run:
    born: dict[str, dict[str, Any]] = field(default_factory=dict)  # set-up findings, by key
    findings: list[dict[str, Any]] = field(default_factory=list)  # the tests' own
    # test -> why it failed on our account ("drift", "could not check") and in which phase
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    probed_tests: int = 0
    setups: int = 0
    steps: int = 0
    no_database: list[str] = field(default_factory=list)

    def gather(self, value: dict[str, Any]) -> None:
        """One phase's report of one test."""
        test = value["test"]
        self.setups += value.get("setups", 0)
        self.steps += value.get("steps", 0)
        for f in value.get("born", ()):
            self.born.setdefault(json.dumps(key_of(f)), {"test": test, **f})
        if value.get("probed"):
            self.probed_tests += 1
            self.findings += [{"test": test, **f} for f in value.get("findings", ())]
        if value.get("no_database"):
            self.no_database.append(test)
        if value.get("failed"):
            self.failed[test] = tuple(value["failed"])
        self.notes += [f"{test}: {n}" for n in value.get("notes", ())]

    def end_of_session(self, report: Report) -> list[dict[str, Any]]:
        """The ``--seqdrift-dsn`` database's findings at the end, but those reported
        already; they are added, and returned."""
        known = {json.dumps(key_of(f)) for f in self.findings} | set(self.born)
        fresh = [{"test": "(end of session)", **render.finding_record(f)} for f in report.findings]
        fresh = [f for f in fresh if json.dumps(key_of(f)) not in known]
        self.findings += fresh
        return fresh

    def report_findings(self) -> list[dict[str, Any]]:
        """``--seqdrift-report``'s findings: the CLI's fields, each with its ``test``, a
        set-up's with ``set_up`` (where the database came from), and ``introduced_by``
        where known."""
        findings = [
            {"test": f["test"], "set_up": f["source"], **_public(f)} for f in self.born.values()
        ]
        return findings + [{"test": f["test"], **_public(f)} for f in self.findings]

    def lines(self, *, verbose: bool, scope_all: bool) -> list[str]:
        """The summary: one line when nothing drifted, else a section (``SECTION``
        first) with every finding in its failure's words, its origin and its fix.

        The findings travel with their true names; here each line is made printable (a
        name may hold a line break or an escape sequence), as ``render`` does."""
        if not (self.born or self.findings or self.no_database or self.failed):
            lines = [f"seqdrift: {self._clean_line(scope_all)}", *self._notes(verbose, False)]
            return [printable(line) for line in lines]
        return [SECTION, *(printable(line) for line in self._section(verbose))]

    def _section(self, verbose: bool) -> list[str]:
        lines: list[str] = []
        if self.no_database:
            lines += [
                NO_DATABASE_HELP,
                f"  tests without a database: {', '.join(self.no_database)}",
            ]
        sources: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for f in self.born.values():
            sources.setdefault((f["source"], f["test"]), []).append(f)
        for (source, test), found in sources.items():
            lines.append(f"set-up of {source} (reported at {test}):")
            for f in found:
                lines += render.record_lines(f, "  ")
        for f in self.findings:
            lines += render.record_lines(f, f"{f['test']}: ")
        return [*lines, *self._notes(verbose, True), self._counts_line()]

    def _notes(self, verbose: bool, count: bool) -> list[str]:
        if verbose:
            return [f"note: {note}" for note in self.notes]
        if count and self.notes:
            return [f"({render.plural(len(self.notes), 'note')}: add -v to show them)"]
        return []

    def _clean_line(self, scope_all: bool) -> str:
        if not (self.setups or self.probed_tests or self.steps):
            return (
                "checked nothing: no test used a database that pytest-seqdrift can locate "
                "(pytest-django's, pytest-postgresql's, alembic_engine, or your own "
                "seqdrift_connection fixture) and no migration ran"
            )
        line = render.run_clean(
            setups=self.setups, steps=self.steps, probed_tests=self.probed_tests
        )
        if scope_all and not self.probed_tests:
            line += (
                "; with --seqdrift-scope=all no test was probed: none used a database "
                "pytest-seqdrift can locate (override the seqdrift_connection fixture)"
            )
        return line

    def _counts_line(self) -> str:
        errors = sum(phase == "setup" for _, phase in self.failed.values())
        return render.run_counts(
            born=len(self.born),
            born_databases=len({f["source"] for f in self.born.values()}),
            findings=len(self.findings),
            probed_tests=self.probed_tests,
            failures=len(self.failed) - errors,
            errors=errors,
            cannot=sum(why == "could not check" for why, _ in self.failed.values()),
        )


def _public(f: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in f.items() if k not in ("test", "source", "what")}
