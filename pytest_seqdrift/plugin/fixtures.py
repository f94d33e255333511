"""The fixtures: ``seqdrift_connection`` (the override point),
``assert_sequences_consistent`` and ``seqdrift_snapshot``, and their forms to await
in async tests, ``async_assert_sequences_consistent`` and ``async_seqdrift_snapshot``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Coroutine, Iterable, Iterator
from collections.abc import Sequence as Seq
from typing import Any

import psycopg
import pytest

from pytest_seqdrift import checker, render, snapshot
from pytest_seqdrift.db.adapters import in_thread, is_async_object
from pytest_seqdrift.errors import NotSupported, SequenceDriftError
from pytest_seqdrift.model import Report, SequenceState
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.plugin.locate import (
    ALEMBIC_ENGINE_FIXTURE,
    DJANGO_DATABASE_FIXTURES,
    NO_DATABASE_HELP,
    TEST_DATABASE_FIXTURES,
    Located,
    alembic_database,
    django_databases,
    django_ready,
    wrap,
)
from pytest_seqdrift.plugin.options import DSN_OPTION, get_option

# The fixtures of a test made by pytest-postgresql's ``postgresql`` factory, whatever
# their names (set on the item by the plugin, which can see the fixtures' definitions).
PG_CLIENTS = pytest.StashKey[list[str]]()


@pytest.fixture
def seqdrift_connection(
    request: pytest.FixtureRequest,
) -> Iterator[Located | list[Located] | None]:
    """The database pytest-seqdrift checks for this test.

    Override this fixture in your conftest.py to return your test database's connection
    (psycopg 3 or psycopg2, a SQLAlchemy Engine or Connection, a Django connection, or
    a list of them), as you would pytest-alembic's ``alembic_engine``. By default it is,
    in this order: the connection of pytest-postgresql's ``postgresql`` fixture when the
    test uses it; pytest-django's database, every PostgreSQL alias the test may use, when
    the test uses the database (``db``, ``transactional_db``, ``migrator``, the
    ``django_db`` marker ...); pytest-alembic's ``alembic_engine`` when the test uses it
    (``alembic_runner`` and its built-in tests do); a connection to ``--seqdrift-dsn`` /
    ``SEQDRIFT_DSN`` (checked read-only); else None.
    """
    clients = request.node.stash.get(PG_CLIENTS, [])
    for name in (*TEST_DATABASE_FIXTURES, *clients):
        if name in request.fixturenames:
            yield Located(request.getfixturevalue(name), f"fixture {name}", test_database=True)
            return
    django = _django_databases(request)
    if django:
        yield django
        return
    if ALEMBIC_ENGINE_FIXTURE in request.fixturenames:
        yield alembic_database(request.getfixturevalue(ALEMBIC_ENGINE_FIXTURE))
        return
    dsn = get_option(request.config, DSN_OPTION)
    if not dsn:
        yield None
        return
    with psycopg.connect(dsn, autocommit=True, application_name="pytest-seqdrift") as conn:
        yield Located(conn, "--seqdrift-dsn", test_database=False)


def _django_databases(request: pytest.FixtureRequest) -> list[Located]:
    """pytest-django's databases, when pytest-django is active and the test uses them."""
    marker = request.node.get_closest_marker("django_db")
    uses = marker is not None or any(n in request.fixturenames for n in DJANGO_DATABASE_FIXTURES)
    if not (uses and request.config.pluginmanager.hasplugin("django") and django_ready()):
        return []
    databases = None
    if marker is not None:
        # django_db(transaction=False, reset_sequences=False, databases=None, ...)
        databases = marker.kwargs.get("databases", marker.args[2] if len(marker.args) > 2 else None)
    return django_databases(databases)


def _located(request: pytest.FixtureRequest) -> Located:
    found = wrap(request.getfixturevalue("seqdrift_connection"), "fixture seqdrift_connection")
    if not found:
        pytest.fail(NO_DATABASE_HELP, pytrace=False)
    return found[0]


def _not_async(conn: Any, instead: str) -> None:
    __tracebackhide__ = True
    if is_async_object(conn):
        kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
        raise NotSupported(f"{kind} is asynchronous: {instead}, in an async test")


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
        _not_async(target, "await async_assert_sequences_consistent(conn)")
        options = CheckOptions.of(schemas=schemas, exclude_tables=exclude_tables)
        report = checker.run(target, options)
        if report.findings:
            raise SequenceDriftError(report, render.text(report))
        return report

    return assert_sequences_consistent


class SequenceSnapshot:
    """Sequence states recorded at a point in time: ``diff()`` lists the sequences moved
    since, ``restore()`` puts them back. As a context manager it records on entry and
    restores on exit."""

    def __init__(self, connection: Any) -> None:
        _not_async(connection, "use the async_seqdrift_snapshot fixture")
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


# -- the same, for async tests (pytest-asyncio, anyio) -----------------------------------


@pytest.fixture
def async_assert_sequences_consistent(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``assert_sequences_consistent`` for async tests, to await:
    ``await async_assert_sequences_consistent(conn)`` checks an asyncpg connection or
    pool, a psycopg ``AsyncConnection``, or a SQLAlchemy ``AsyncEngine``,
    ``AsyncConnection`` or ``AsyncSession`` -- on the test's event loop, inside its
    transaction where one is open (its uncommitted rows count). Without ``conn``, the
    test's database (``seqdrift_connection``). A call never awaited checks nothing: the
    test then errors at its teardown, instead of passing in silence."""
    calls: list[Coroutine[Any, Any, Report]] = []

    async def check(conn: Any, schemas: Iterable[str] | None, exclude_tables: Seq[str]) -> Report:
        __tracebackhide__ = True
        target = _located(request).connection if conn is None else conn
        options = CheckOptions.of(schemas=schemas, exclude_tables=exclude_tables)
        report = await in_thread(target, functools.partial(checker.run, options=options))
        if report.findings:
            raise SequenceDriftError(report, render.text(report))
        return report

    def async_assert_sequences_consistent(
        conn: Any = None,
        *,
        schemas: Iterable[str] | None = None,
        exclude_tables: Seq[str] = (),
    ) -> Coroutine[Any, Any, Report]:
        call = check(conn, schemas, exclude_tables)
        calls.append(call)
        return call

    yield async_assert_sequences_consistent
    forgotten = [c for c in calls if inspect.getcoroutinestate(c) == inspect.CORO_CREATED]
    for c in forgotten:
        c.close()
    if forgotten:
        pytest.fail(
            f"async_assert_sequences_consistent(...) was called {len(forgotten)} time(s) "
            "without `await`: nothing was checked",
            pytrace=False,
        )


class AsyncSequenceSnapshot:
    """``SequenceSnapshot`` for async tests: ``await snapshot.record()`` records every
    sequence's state (or ``async with snapshot:``, which records on entry and restores on
    exit); ``await snapshot.diff()`` lists the sequences moved since, ``await
    snapshot.restore()`` puts them back. An async connection can only be used on the
    test's event loop, so nothing is recorded before the test awaits it."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.states: dict[snapshot.SequenceKey, SequenceState] | None = None

    async def record(self) -> None:
        self.states = await in_thread(self.connection, snapshot.read_states)

    async def diff(self) -> list[snapshot.Moved]:
        before = self._recorded("diff")
        return snapshot.diff(before, await in_thread(self.connection, snapshot.read_states))

    async def restore(self) -> int:
        before = self._recorded("restore")
        return await in_thread(self.connection, lambda s: snapshot.restore(s, before))

    def _recorded(self, what: str) -> dict[snapshot.SequenceKey, SequenceState]:
        if self.states is None:
            raise RuntimeError(f"nothing to {what}: `await snapshot.record()` first")
        return self.states

    async def __aenter__(self) -> AsyncSequenceSnapshot:
        await self.record()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.restore()


@pytest.fixture
def async_seqdrift_snapshot(request: pytest.FixtureRequest) -> AsyncSequenceSnapshot:
    """An ``AsyncSequenceSnapshot`` of the test's database, to record by awaiting it."""
    return AsyncSequenceSnapshot(_located(request).connection)
