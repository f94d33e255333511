"""``--seqdrift`` and the fixtures in async test suites: a database handed to the tests
as an asyncpg connection inside an outer transaction (uncommitted rows), run by
pytest-asyncio in strict and auto mode and by anyio's plugin."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]
Project = tuple[pytest.Pytester, tuple[str, ...], str]  # the project, its arguments, its mode

# The project's conftest for each way of running async tests: a ``conn`` fixture
# yielding an asyncpg connection inside a transaction it rolls back, and the override
# that tells pytest-seqdrift it is the test database.
HEADERS = {
    "strict": ("import pytest_asyncio\nfixture = pytest_asyncio.fixture\n", ()),
    "auto": ("fixture = pytest.fixture\n", ("-o", "asyncio_mode=auto")),
    "anyio": (
        "fixture = pytest.fixture\n\n\n"
        "@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n",
        (),
    ),
}
# how the test modules say they are async
MARKS = {
    "strict": "pytestmark = pytest.mark.asyncio\n",
    "auto": "",
    "anyio": "pytestmark = pytest.mark.anyio\n",
}

CONFTEST = """
import os

import asyncpg
import pytest

{header}

SEED = os.environ.get("PROJECT_SEED", "")


@fixture
async def conn():
    c = await asyncpg.connect(os.environ["PROJECT_URL"])
    tx = c.transaction()
    await tx.start()
    await c.execute("CREATE TABLE plan (id serial PRIMARY KEY, name text)")
    if SEED:
        await c.execute(SEED)
    yield c
    await tx.rollback()
    await c.close()


@pytest.fixture
def seqdrift_connection(conn):
    return conn

"""

TESTS = """
import pytest

{mark}

async def test_lists_plans(conn):
    rows = await conn.fetch("SELECT * FROM plan")
    print("the body ran with", len(rows), "rows")


@pytest.mark.seqdrift
async def test_a_data_migration(conn):
    await conn.execute("INSERT INTO plan (id, name) VALUES (1, 'free'), (2, 'pro')")


async def test_adds_a_plan(conn):
    await conn.execute("INSERT INTO plan (name) VALUES ('team')")
"""

SEED = "INSERT INTO plan (id, name) VALUES (7, 'a'), (9, 'b')"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """In a process of its own, as users run it (and as asyncpg's SSL handshake needs:
    in this process, where libpq has set OpenSSL up already, it can crash)."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def url(db: Conn) -> str:
    info = db.info
    who = info.user + (f":{info.password}" if info.password else "")
    return f"postgresql://{who}@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture(params=list(HEADERS))
def project(
    request: pytest.FixtureRequest,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    db: Conn,
) -> Project:
    header, args = HEADERS[request.param]
    pytester.makeconftest(CONFTEST.format(header=header))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_plans=TESTS.format(mark=MARKS[request.param]))
    monkeypatch.setenv("PROJECT_URL", url(db))
    return pytester, args, request.param


def passes_without_the_plugin(pytester: pytest.Pytester, args: tuple[str, ...], mode: str) -> None:
    """The project's tests pass as they are (checked once, in strict mode: a run costs
    seconds)."""
    if mode == "strict":
        run(pytester, *args).assert_outcomes(passed=3)


def failures(result: pytest.RunResult) -> str:
    """The failures' text, before the summaries (which repeat the first line of each,
    whole where pytest sees CI set)."""
    return result.stdout.str().split("= sequence drift (pytest-seqdrift) =")[0]


def no_frames_of_ours(result: pytest.RunResult) -> None:
    text = result.stdout.str()
    assert "pytest_seqdrift/" not in text, text
    assert "site-packages/pytest_asyncio" not in text


def test_the_body_is_probed_on_its_own_loop_inside_its_transaction(
    project: Project, db: Conn
) -> None:
    """The marked test's rows exist only inside the fixture's transaction: the probe
    sees them (the test's own connection, on its own loop) and fails that test alone."""
    pytester, args, mode = project
    passes_without_the_plugin(pytester, args, mode)
    result = run(pytester, *args, "--seqdrift", "-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*sequence drift after this test (a migration test: it is marked*",
            "*public.plan.id*",
            "*next value 1; the very next insert collides with existing id 1 (max id 2)*",
            "*FAILED test_plans.py::test_a_data_migration*",
        ]
    )
    assert failures(result).count("sequence drift after this test") == 1
    no_frames_of_ours(result)
    # nothing was left behind: the fixture's rollback took the table away
    assert db.execute("SELECT to_regclass('plan')").fetchone() == (None,)


def test_set_up_drift_fails_before_the_body_once(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture's uncommitted seed rows are set-up drift: reported once, at the
    first test that receives the database, before its body runs."""
    pytester, args, mode = project
    monkeypatch.setenv("PROJECT_SEED", SEED)
    passes_without_the_plugin(pytester, args, mode)
    result = run(pytester, *args, "--seqdrift", "-s")
    text = result.stdout.str()
    assert (
        failures(result).count("sequence drift in the set-up of fixture seqdrift_connection") == 1
    ), text
    result.stdout.fnmatch_lines(
        ["*next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 9)*"]
    )
    assert "the body ran with" not in text  # it failed before its body
    result.assert_outcomes(passed=1, failed=2)  # the marked test fails on drift of its own
    no_frames_of_ours(result)


def test_scope_all_fails_only_drift_that_outlives_the_transaction(
    project: Project,
) -> None:
    """Under --seqdrift-scope=all the rows a test inserted in the fixture's transaction
    are rolled back with it: a second connection (opened from what asyncpg connected
    with) sees no drift, so none of those tests fails."""
    pytester, args, _ = project
    result = run(pytester, *args, "--seqdrift", "--seqdrift-scope=all")
    result.assert_outcomes(passed=2, failed=1)  # the marked one fails on any drift
    result.stdout.fnmatch_lines(["*FAILED test_plans.py::test_a_data_migration*"])


def test_the_fixtures_to_await(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, db: Conn
) -> None:
    header, _ = HEADERS["strict"]
    pytester.makeconftest(CONFTEST.format(header=header))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    monkeypatch.setenv("PROJECT_URL", url(db))
    pytester.makepyfile(
        """
        import pytest
        from pytest_seqdrift import SequenceDriftError

        pytestmark = pytest.mark.asyncio

        async def test_drifted(conn, async_assert_sequences_consistent):
            await conn.execute("INSERT INTO plan (id, name) VALUES (1, 'free')")
            with pytest.raises(SequenceDriftError) as raised:
                await async_assert_sequences_consistent()
            assert "public.plan.id" in str(raised.value)


        async def test_clean(conn, async_assert_sequences_consistent):
            await conn.execute("INSERT INTO plan (name) VALUES ('free')")
            report = await async_assert_sequences_consistent(conn)
            assert [c.column.table for c in report.checked] == ["plan"]


        async def test_snapshot(conn, async_seqdrift_snapshot):
            async with async_seqdrift_snapshot as snap:
                await conn.execute("SELECT nextval('plan_id_seq')")
                assert [m.sequence for m in await snap.diff()] == ["public.plan_id_seq"]
            assert await async_seqdrift_snapshot.diff() == []


        def test_sync_test_with_async_connection(conn):
            pass


        def test_sync_fixtures_say_which_to_await(conn, assert_sequences_consistent):
            with pytest.raises(Exception, match="await async_assert_sequences_consistent"):
                assert_sequences_consistent(conn)


        @pytest.mark.seqdrift
        def test_sync_migration_test_with_async_connection(conn):
            pass


        async def test_forgot_await(conn, async_assert_sequences_consistent):
            await conn.execute("INSERT INTO plan (id, name) VALUES (1, 'free')")
            async_assert_sequences_consistent(conn)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=7, errors=1)  # a forgotten await never passes in silence
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgot_await*",
            "async_assert_sequences_consistent(...) was called 1 time(s) without `await`: "
            "nothing was checked",
        ]
    )
    # a synchronous test is told, not failed -- unless it asked for a probe
    result = run(pytester, "--seqdrift", "-v")
    result.assert_outcomes(passed=6, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-seqdrift: could not probe: fixture seqdrift_connection returned an async "
            "object (Connection) to a test that is not a coroutine: it is checked only in "
            "async tests (pytest-asyncio or anyio)*",
            "*FAILED test_the_fixtures_to_await.py::test_sync_migration_test_with_async_connection*",
        ]
    )
    no_frames_of_ours(result)


ENGINE_OVERRIDE = """
import os

import psycopg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["PROJECT_URL"].replace("postgresql:", "postgresql+asyncpg:"))


@pytest.fixture(scope="session", autouse=True)
def seeded():
    with psycopg.connect(os.environ["PROJECT_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE plan (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO plan (id, name) VALUES (7, 'a'), (9, 'b')")


@pytest.fixture
def seqdrift_connection():
    return engine
"""


def test_an_override_without_arguments_hands_its_engine_to_every_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, db: Conn
) -> None:
    """``seqdrift_connection`` returning the application's module-level AsyncEngine,
    taking no fixture: every test receives it (none names a database fixture), and the
    set-up drift is reported once, at the first test, before its body. Each test runs
    on a loop of its own: the connection borrowed for the check is not left in the
    engine's pool for the next test's loop."""
    pytester.makeconftest(ENGINE_OVERRIDE)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_app="""
        from conftest import engine
        from sqlalchemy import text


        async def test_one():
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM plan"))).scalar() == 2


        async def test_two():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        """
    )
    monkeypatch.setenv("PROJECT_URL", url(db))
    result = run(pytester, "--seqdrift", "--seqdrift-scope=all")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert (
        failures(result).count("sequence drift in the set-up of fixture seqdrift_connection") == 1
    ), text
    result.stdout.fnmatch_lines(["*FAILED test_app.py::test_one*"])
    assert "attached to a different loop" not in text
    no_frames_of_ours(result)
