"""Where drift was born: the steps applied to a database, and after which one each
column started to drift.

A *step* is one thing that changed a test database: a Django migration, an Alembic
revision, a file or callable that pytest-postgresql loaded into its template. After
each step the database is checked (read-only arithmetic); ``History`` keeps, for every
column drifted at the latest check, the step after which it has been drifted ever
since -- the one that introduced it. A column that a later step mends leaves the
history; drift that appears only after the last step has no step to blame.

Pure: no I/O, no pytest. The checks are made by ``watch.Watcher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pytest_seqdrift.model import Column, Finding, Report

StepKind = Literal["migration", "revision", "load"]
ColumnKey = tuple[str, str, str]  # schema, table, column


def column_key(column: Column) -> ColumnKey:
    return (column.schema, column.table, column.column)


@dataclass(frozen=True)
class Step:
    """One step applied to a database."""

    kind: StepKind
    name: str  # "shop.0003_load_countries", "0002", "seed.sql", "tests.conftest.load"
    message: str | None = None  # an Alembic revision's message
    app: str | None = None  # a Django migration's app label
    backwards: bool = False  # a Django migration unapplied, an Alembic downgrade

    @property
    def label(self) -> str:
        """``migration shop.0003_load_countries``, ``revision 0002 (copy addresses)``,
        ``loading seed.sql``: what a report names."""
        if self.kind == "load":
            return f"loading {self.name}"
        label = f"{self.kind} {self.name}"
        if self.message:
            label += f" ({self.message})"
        if self.backwards:
            label = ("unapplying " if self.kind == "migration" else "downgrading ") + label
        return label


class History:
    """The steps applied to one database and, for each drifted column, the step that
    introduced the drift (the first of the unbroken run of checks that show it)."""

    def __init__(self) -> None:
        self._since: dict[ColumnKey, Step] = {}
        self.steps: list[Step] = []
        # the check after the latest step; None when that step was not checked (a step
        # that cannot make drift: the drift it leaves is the check's before it)
        self.current: Report | None = None

    def applied(self, step: Step, report: Report | None) -> None:
        """``step`` was applied, and ``report`` is the check that followed it (None: a
        step that cannot make a column drift, not checked)."""
        self.steps.append(step)
        self.current = report
        if report is None:
            return
        drifted = {column_key(f.column) for f in report.findings}
        self._since = {k: self._since.get(k, step) for k in drifted}

    def origin(self, finding: Finding) -> Step | None:
        """The step after which the finding's column has drifted ever since; None when
        the latest check did not show it drifted (it appeared after the last step)."""
        return self._since.get(column_key(finding.column))

    def drifted(self) -> set[ColumnKey]:
        return set(self._since)
