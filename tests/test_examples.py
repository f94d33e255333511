"""The example projects under examples/, run as their users run them (``pytest`` in a
subprocess) against the test bed's PostgreSQL: real Django migrations through
django-test-migrations, real Alembic revisions through pytest-alembic. Each is caught
with ``--seqdrift``, quiet without it, and quiet after the fix — for identity and
serial columns, on psycopg 3 and psycopg2."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
MATRIX = [
    pytest.param("identity", "psycopg", id="identity-psycopg"),
    pytest.param("identity", "psycopg2", id="identity-psycopg2"),
    pytest.param("serial", "psycopg", id="serial-psycopg"),
    pytest.param("serial", "psycopg2", id="serial-psycopg2"),
]
STORY_COLUMN = "*public.profile_billingaddress.id  (sequence public.profile_billingaddress_id_seq)"
FIX = "*fix: SELECT setval('public.profile_billingaddress_id_seq', GREATEST(16, last_value))*"


def project(pytester: pytest.Pytester, name: str) -> Path:
    shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
    return pytester.path


def point_at(
    monkeypatch: pytest.MonkeyPatch, proc: Any, dbname: str, ids: str, driver: str
) -> None:
    """The examples read libpq's variables, as psql does."""
    monkeypatch.setenv("PGHOST", str(proc.host))
    monkeypatch.setenv("PGPORT", str(proc.port))
    monkeypatch.setenv("PGUSER", str(proc.user))
    monkeypatch.setenv("PGPASSWORD", str(proc.password or ""))
    monkeypatch.setenv("PGDATABASE", dbname)
    monkeypatch.setenv("BILLING_IDS", ids)
    monkeypatch.setenv("BILLING_DRIVER", driver)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


# -- Django -----------------------------------------------------------------------------

# Added to the copied project: which driver and which kind of id column it really has,
# the probe inside pytest-django's transaction-wrapped ``db`` test, and
# assert_sequences_consistent on Django's connections.
DJANGO_EXTRA = """
import os

import pytest
from django.db import connection, connections

from profiles.models import BillingAddress

seen = {}


def test_driver_and_id_column(db):
    connection.ensure_connection()
    assert type(connection.connection).__module__.split(".")[0] == os.environ["BILLING_DRIVER"]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT attidentity FROM pg_attribute "
            "WHERE attrelid = 'profile_billingaddress'::regclass AND attname = 'id'"
        )
        identity = cur.fetchone()[0]
    assert identity == ("d" if os.environ["BILLING_IDS"] == "identity" else "")


@pytest.mark.seqdrift
def test_probed_inside_the_db_transaction(db):
    BillingAddress.objects.create(street="a")
    seen["last"] = BillingAddress.objects.create(street="b").id


def test_the_probe_put_the_sequence_back_exactly(db):
    # the probe drew values after the last test; nextval is not rolled back with
    # pytest-django's transaction, so only an exact restore gives the next id here
    assert BillingAddress.objects.create(street="c").id == seen["last"] + 1


@pytest.mark.parametrize("which", ["proxy", "alias"])
def test_assert_sequences_consistent_takes_a_django_connection(
    db, assert_sequences_consistent, which
):
    conn = connection if which == "proxy" else connections["default"]
    assert_sequences_consistent(conn)
    BillingAddress.objects.create(id=1000, street="explicit id")
    with pytest.raises(AssertionError, match="profile_billingaddress.id"):
        assert_sequences_consistent(conn)
"""


@pytest.mark.parametrize(("ids", "driver"), MATRIX)
def test_django_billing(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    postgresql_proc: Any,
    ids: str,
    driver: str,
) -> None:
    root = project(pytester, "django_billing")
    (root / "tests" / "test_zz_integration.py").write_text(DJANGO_EXTRA)
    point_at(monkeypatch, postgresql_proc, f"billing_{uuid.uuid4().hex[:10]}", ids, driver)

    quiet = run(pytester)
    quiet.assert_outcomes(passed=7)
    assert "sequence drift" not in quiet.stdout.str()

    caught = run(pytester, "--seqdrift")
    # 0002 as first written is caught; 0003, the fix, passes
    caught.assert_outcomes(failed=1, passed=6)
    caught.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift after this test (a migration test: it uses migrator):",
            "sequence drift in 1 column:",
            STORY_COLUMN,
            # the test made six profiles: the seventh collides
            "*next value 7; the very next insert collides with existing id 7 (max id 16)",
            "    introduced by migration profile.0002_billingaddress",
            FIX,
            "         or as an operation of a new migration of profile "
            "(python manage.py makemigrations profile --empty):",
            "             migrations.RunSQL(",
            "*= sequence drift (pytest-seqdrift) =*",
            "tests/test_migrations.py::test_0002_copies_billing_addresses_with_their_ids: "
            "public.profile_billingaddress.id: next value 7; the very next insert collides "
            "with existing id 7 (max id 16)",
            "    introduced by migration profile.0002_billingaddress",
            "1 finding in 3 probed tests; 1 test failed because of pytest-seqdrift",
            "FAILED tests/test_migrations.py::test_0002_copies_billing_addresses_with_their_ids*",
        ]
    )


# -- Alembic ----------------------------------------------------------------------------


@pytest.fixture
def alembic_db(postgresql: psycopg.Connection[Any]) -> str:
    """A fresh database for the example (its alembic_engine empties it per test)."""
    name = postgresql.info.dbname
    postgresql.close()
    return name


@pytest.mark.parametrize(("ids", "driver"), MATRIX)
def test_alembic_billing(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    postgresql_proc: Any,
    alembic_db: str,
    ids: str,
    driver: str,
) -> None:
    root = project(pytester, "alembic_billing")
    point_at(monkeypatch, postgresql_proc, alembic_db, ids, driver)
    builtins = ("-k", "not each_revision")  # pytest-alembic's built-in tests only

    quiet = run(pytester, *builtins)
    quiet.assert_outcomes(passed=3, deselected=1)
    assert "sequence drift" not in quiet.stdout.str()

    caught = run(pytester, "--seqdrift", "-v", *builtins)
    # pytest-alembic's tests each run the same upgrade: the drift it makes is reported
    # once, at the first of them
    caught.assert_outcomes(failed=1, passed=2, deselected=1)
    caught.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift after this test (a migration test: it uses "
            "alembic_runner):",
            "sequence drift in 1 column:",
            STORY_COLUMN,
            "*next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
            "    introduced by revision 0002 (Billing addresses move to a table of their own, "
            "keeping their ids.)",
            FIX,
            "         or in the upgrade() of a new revision *",
            "             op.execute(*",
            "*= sequence drift (pytest-seqdrift) =*",
            "tests/conftest.py::pytest-alembic::test_*: public.profile_billingaddress.id: "
            "next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
            "note: tests/conftest.py::pytest-alembic::test_*: public.profile_billingaddress.id: "
            "the same drift, reported at tests/conftest.py::pytest-alembic::test_*",
            "FAILED tests/conftest.py::pytest-alembic::test_* - *",
        ]
    )

    # the ready-made check needs no --seqdrift, and names the revision
    named = run(pytester, "-k", "each_revision")
    named.assert_outcomes(failed=1, deselected=3)
    named.stdout.fnmatch_lines(
        [
            "*RevisionDriftError: revision 0002 introduced sequence drift that is still "
            "there at the head (0002):",
            "*sequence drift in 1 column:",
            STORY_COLUMN,
        ]
    )

    # the fix: a revision that calls setval
    shutil.copy(root / "fix" / "0003_billing_address_sequence.py", root / "migrations" / "versions")
    fixed = run(pytester, "--seqdrift")
    fixed.assert_outcomes(passed=4)
    assert "sequence drift (pytest-seqdrift)" not in fixed.stdout.str()
    fixed.stdout.fnmatch_lines(["seqdrift: no sequence drift (*migration steps followed*)"])
    with psycopg.connect(
        host=postgresql_proc.host,
        port=postgresql_proc.port,
        user=postgresql_proc.user,
        password=postgresql_proc.password or None,
        dbname=alembic_db,
    ) as conn:
        (identity,) = conn.execute(
            "SELECT attidentity FROM pg_attribute "
            "WHERE attrelid = 'profile_billingaddress'::regclass AND attname = 'id'"
        ).fetchone() or (None,)
    assert identity == ("d" if ids == "identity" else "")


SETTINGS_TWO = """
from billing.settings import *  # noqa: F403

DATABASES["other"] = {**DATABASES["default"], "NAME": DATABASES["default"]["NAME"] + "_other"}
"""

TWO_DATABASES = """
import pytest

from profiles.models import BillingAddress


@pytest.mark.seqdrift
@pytest.mark.django_db(databases=["default", "other"])
def test_drift_in_the_other_database():
    BillingAddress.objects.using("default").create(street="fine")
    BillingAddress.objects.using("other").create(id=50, street="explicit id")
"""


def test_django_every_postgresql_alias_is_probed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, postgresql_proc: Any
) -> None:
    root = project(pytester, "django_billing")
    (root / "billing" / "settings_two.py").write_text(SETTINGS_TWO)
    (root / "tests" / "test_migrations.py").unlink()
    (root / "tests" / "test_two.py").write_text(TWO_DATABASES)
    point_at(
        monkeypatch, postgresql_proc, f"billing_{uuid.uuid4().hex[:10]}", "identity", "psycopg"
    )
    result = run(pytester, "--seqdrift", "--ds=billing.settings_two")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-django database 'other': sequence drift in 1 column:",
            STORY_COLUMN,
            "*49 inserts succeed, the 50th collides with existing id 50 (max id 50)",
        ]
    )
    assert "pytest-django database 'default'" not in result.stdout.str()


# -- FastAPI, SQLAlchemy asyncio, Alembic's async env.py ---------------------------------

PLANS_COLUMN = "public.plans.id"


def auto_mode(root: Path) -> list[str]:
    """pytest-asyncio's auto mode, written as its users write it: no markers, plain
    ``@pytest.fixture`` for the async fixtures."""
    tests = root / "tests" / "test_plans.py"
    tests.write_text(tests.read_text().replace("@pytest.mark.asyncio\n", ""))
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        .replace("import pytest_asyncio\n", "")
        .replace("@pytest_asyncio.fixture", "@pytest.fixture")
    )
    return ["-o", "asyncio_mode=auto"]


def anyio_tests(root: Path) -> list[str]:
    """anyio's pytest plugin instead of pytest-asyncio (asyncpg needs asyncio)."""
    tests = root / "tests" / "test_plans.py"
    tests.write_text(tests.read_text().replace("@pytest.mark.asyncio", "@pytest.mark.anyio"))
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        .replace("import pytest_asyncio\n", "")
        .replace("@pytest_asyncio.fixture", "@pytest.fixture")
        + '\n\n@pytest.fixture\ndef anyio_backend():\n    return "asyncio"\n'
    )
    return []


# The Alembic cookbook's recipe: the migrations run on the suite's own AsyncConnection,
# inside an async session fixture (env.py takes config.attributes["connection"]).
RUN_SYNC_FIXTURE = """
def run_upgrade(connection, config):
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def run_downgrade(connection, config):
    config.attributes["connection"] = connection
    command.downgrade(config, "base")


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def migrated_database():
    engine = create_async_engine(DATABASE_URL, poolclass=NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(run_upgrade, Config("alembic.ini"))
    yield
    async with engine.begin() as connection:
        await connection.run_sync(run_downgrade, Config("alembic.ini"))
    await engine.dispose()


"""


def run_sync_migrations(root: Path) -> list[str]:
    conftest = root / "tests" / "conftest.py"
    text = conftest.read_text()
    start = text.index('@pytest.fixture(scope="session", autouse=True)')
    end = text.index("@pytest_asyncio.fixture\nasync def db_session")
    conftest.write_text(text[:start] + RUN_SYNC_FIXTURE.lstrip() + text[end:])
    return []


FASTAPI_VARIANTS = {
    "strict": lambda root: [],
    "auto": auto_mode,
    "anyio": anyio_tests,
    "run_sync": run_sync_migrations,
}


@pytest.mark.parametrize("variant", list(FASTAPI_VARIANTS))
def test_fastapi_plans(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    postgresql_proc: Any,
    alembic_db: str,
    variant: str,
) -> None:
    root = project(pytester, "fastapi_plans")
    args = FASTAPI_VARIANTS[variant](root)
    # (the example reads only libpq's variables, not the billing examples' two)
    point_at(monkeypatch, postgresql_proc, alembic_db, "serial", "asyncpg")

    if variant == "strict":  # (each run costs seconds: the project as written, once)
        # the tests create two plans: the seeded ids 7, 9 and 12 are never reached
        quiet = run(pytester, *args)
        quiet.assert_outcomes(passed=5)
        assert "sequence drift" not in quiet.stdout.str()

    caught = run(pytester, "--seqdrift", *args)
    # the session fixture's upgrade is the set-up of every test: reported once, at the
    # first of them
    caught.assert_outcomes(passed=4, errors=1)
    caught.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_list_plans _*",
            f"pytest-seqdrift: sequence drift in the set-up of database {alembic_db} "
            "(Alembic migration to 8e4d27a5c6b1, in fixture 'migrated_database')",
            "sequence drift in 1 column:",
            f"  {PLANS_COLUMN}  (sequence public.plans_id_seq)",
            "    next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 12)",
            "    introduced by revision 8e4d27a5c6b1 (seed plans)",
            "    fix: SELECT setval('public.plans_id_seq', GREATEST(12, last_value)) "
            'FROM "public"."plans_id_seq";',
            "         or in the upgrade() of a new revision *",
            "             op.execute(*",
            "*= sequence drift (pytest-seqdrift) =*",
            "1 finding in the set-up of 1 test database; 1 error at a test's set-up because "
            "of pytest-seqdrift",
            "ERROR tests/test_plans.py::test_list_plans - *",
        ]
    )
    out = caught.stdout.str() + caught.stderr.str()
    shown = out.split("= sequence drift (pytest-seqdrift) =")[0]
    assert shown.count(f"  {PLANS_COLUMN}  (sequence ") == 1, out
    # the report is the whole failure: no frame of ours, no traceback, no chained error
    assert "pytest_seqdrift" not in out, out
    assert "Traceback" not in out, out

    # the fix: a revision that calls setval
    shutil.copy(
        root / "fix" / "c70a5e19d3f8_plans_id_sequence.py", root / "migrations" / "versions"
    )
    fixed = run(pytester, "--seqdrift", *args)
    fixed.assert_outcomes(passed=5)
    assert "sequence drift (pytest-seqdrift)" not in fixed.stdout.str()
    fixed.stdout.fnmatch_lines(["seqdrift: no sequence drift (3 migration steps followed)"])
