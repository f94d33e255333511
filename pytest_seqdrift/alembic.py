"""A ready-made check for Alembic histories, next to pytest-alembic's built-in tests.

Import the test into a test module, as you would pytest-alembic's own::

    from pytest_seqdrift.alembic import test_sequences_after_each_revision  # noqa: F401

It upgrades the ``alembic_engine`` database one revision at a time, checks every
sequence after each step (read-only, exact arithmetic), and fails when the head is left
with drift — naming, for each drifted column, the revision that introduced it. Or call
``assert_revisions_consistent(alembic_runner, engine, every_revision=True)`` to fail on
drift after *any* revision, for projects that deploy revisions one at a time.

No pytest here: pytest-alembic's runner and an engine are all it needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import Any

from pytest_seqdrift import render
from pytest_seqdrift.checker import check
from pytest_seqdrift.model import Report, printable


class RevisionDriftError(AssertionError):
    """A revision left sequence drift: the message names it, with the report."""

    def __init__(self, message: str, reports: list[tuple[str, Report]]) -> None:
        super().__init__(message)
        self.reports = reports


def revision_reports(
    alembic_runner: Any,
    connection: Any,
    *,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
) -> list[tuple[str, Report]]:
    """Upgrade from where the database stands to the head, one revision at a time, and
    check the sequences after each: ``(revision, report)`` in order."""
    reports = []
    while (revision := alembic_runner.migrate_up_one()) is not None:
        reports.append(
            (revision, check(connection, schemas=schemas, exclude_tables=exclude_tables))
        )
    return reports


def _subset(report: Report, columns: set[Any]) -> Report:
    return Report(
        findings=[f for f in report.findings if f.column in columns],
        checked=[c for c in report.checked if c.column in columns],
    )


def assert_revisions_consistent(
    alembic_runner: Any,
    connection: Any,
    *,
    every_revision: bool = False,
    schemas: Iterable[str] | None = None,
    exclude_tables: Seq[str] = (),
) -> list[tuple[str, Report]]:
    """Upgrade revision by revision and fail on sequence drift left at the head (or,
    with ``every_revision``, after any revision), naming the revision that caused it.
    ``connection`` is the database's engine or connection (any that ``check`` takes)."""
    __tracebackhide__ = True
    reports = revision_reports(
        alembic_runner, connection, schemas=schemas, exclude_tables=exclude_tables
    )
    if not reports:
        return reports
    if every_revision:
        for revision, report in reports:
            if report.findings:
                raise RevisionDriftError(
                    f"revision {printable(str(revision))} leaves sequence drift behind:\n"
                    + render.text(report),  # every line of it printable, names too
                    reports,
                )
        return reports
    head_revision, head = reports[-1]
    if not head.findings:
        return reports
    # each drifted column's origin: the revision after which it has drifted ever since
    origin: dict[Any, str] = {}
    for f in head.findings:
        since = head_revision
        for revision, report in reversed(reports):
            if not any(g.column == f.column for g in report.findings):
                break
            since = revision
        origin[f.column] = since
    parts = []
    for revision, _ in reports:
        columns = {c for c, r in origin.items() if r == revision}
        if columns:
            parts.append(
                f"revision {printable(str(revision))} introduced sequence drift that is still "
                f"there at the head ({printable(str(head_revision))}):\n"
                + render.text(_subset(head, columns))
            )
    raise RevisionDriftError("\n".join(parts), reports)


def test_sequences_after_each_revision(alembic_runner: Any, alembic_engine: Any) -> None:
    """Upgrading revision by revision leaves no sequence drift at the head; a failure
    names the revision that introduced it."""
    __tracebackhide__ = True
    assert_revisions_consistent(alembic_runner, alembic_engine)
