"""The fixtures: ``seqdrift_connection`` (the override point),
``assert_sequences_consistent`` and ``seqdrift_snapshot``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from typing import Any

import psycopg
import pytest

from . import render, snapshot
from .api import check
from .locate import NO_DATABASE_HELP, TEST_DATABASE_FIXTURES, Located, wrap
from .model import Report, SequenceState
from .options import DSN_OPTION, get_option


class SequenceDriftError(AssertionError):
    """Sequence drift found: the message is the report."""

    def __init__(self, report: Report) -> None:
        super().__init__(render.text(report))
        self.report = report


@pytest.fixture
def seqdrift_connection(request: pytest.FixtureRequest) -> Iterator[Located | None]:
    """The database pytest-seqdrift checks for this test.

    Override this fixture in your conftest.py to return your test database's connection
    (psycopg 3), as you would pytest-alembic's ``alembic_engine``. By default it is the
    connection of pytest-postgresql's ``postgresql`` fixture when the test uses it, else
    a connection to ``--seqdrift-dsn`` / ``SEQDRIFT_DSN`` (checked read-only), else None.
    """
    for name in TEST_DATABASE_FIXTURES:
        if name in request.fixturenames:
            yield Located(request.getfixturevalue(name), f"fixture {name}", test_database=True)
            return
    dsn = get_option(request.config, DSN_OPTION)
    if not dsn:
        yield None
        return
    with psycopg.connect(dsn, autocommit=True, application_name="pytest-seqdrift") as conn:
        yield Located(conn, "--seqdrift-dsn", test_database=False)


def _located(request: pytest.FixtureRequest) -> Located:
    found = wrap(request.getfixturevalue("seqdrift_connection"), "fixture seqdrift_connection")
    if found is None:
        pytest.fail(NO_DATABASE_HELP, pytrace=False)
    return found


@pytest.fixture
def assert_sequences_consistent(request: pytest.FixtureRequest) -> Any:
    """A callable: ``assert_sequences_consistent()`` checks the test's database,
    ``assert_sequences_consistent(conn)`` the connection given. Raises an
    ``AssertionError`` whose message is the report. Keywords: ``schemas``,
    ``exclude_tables`` (fnmatch patterns on ``table`` or ``schema.table``)."""

    def assert_sequences_consistent(
        conn: Any = None,
        *,
        schemas: Iterable[str] | None = None,
        exclude_tables: Seq[str] = (),
    ) -> Report:
        __tracebackhide__ = True
        target = _located(request).connection if conn is None else conn
        report = check(target, schemas=schemas, exclude_tables=exclude_tables)
        if report.findings:
            raise SequenceDriftError(report)
        return report

    return assert_sequences_consistent


class SequenceSnapshot:
    """Sequence states recorded at a point in time: ``diff()`` lists the sequences moved
    since, ``restore()`` puts them back. As a context manager it records on entry and
    restores on exit."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.states: dict[snapshot.SequenceKey, SequenceState] = {}
        self.record()

    def record(self) -> None:
        self.states = snapshot.read_states(self.connection)

    def diff(self) -> list[snapshot.Moved]:
        return snapshot.diff(self.states, snapshot.read_states(self.connection))

    def restore(self) -> int:
        return snapshot.restore(self.connection, self.states)

    def __enter__(self) -> SequenceSnapshot:
        self.record()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


@pytest.fixture
def seqdrift_snapshot(request: pytest.FixtureRequest) -> SequenceSnapshot:
    """Every sequence's state, recorded when the fixture is set up."""
    return SequenceSnapshot(_located(request).connection)
