"""Drift born in the set-up of the test database, in three small projects written the
way their users write them (tests/examples/): no marker, no migration-testing library.

* ``django_shop``: pytest-django migrates the test database; a data migration loads
  countries with their ids.
* ``alembic_plans``: a fixture runs ``alembic upgrade head`` on pytest-postgresql's
  database; a revision ``op.bulk_insert``s plans with their ids.
* ``seed_files``: pytest-postgresql's ``load=`` runs a seed file that inserts
  currencies with their ids.

Each passes without ``--seqdrift``, fails with it exactly once -- naming the table and
the migration, revision or file -- and passes once the fix the report prints is
applied as the report says.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import PG_CTL

EXAMPLES = Path(__file__).parent / "examples"
DRIVERS = ["psycopg", "psycopg2"]


def project(pytester: pytest.Pytester, name: str) -> Path:
    shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
    return pytester.path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)


def own_server(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A project whose pytest-postgresql starts its own server (the test bed's pg_ctl,
    which runs as root too)."""
    return run(pytester, f"--postgresql-exec={PG_CTL}", *args)


def reported_once(result: pytest.RunResult, column: str) -> None:
    # one failure shows the block (under CI=true pytest repeats whole messages in its
    # short summary: that part is left out)
    out = result.stdout.str().split("= short test summary info =")[0]
    assert out.count(f"  {column}  (sequence ") == 1, out
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def printed_fix(result: pytest.RunResult, first: str) -> list[str]:
    """The lines of the fix in the tool's terms, as the failure prints them."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("             "):
            break
        block.append(line)
    return block


# -- Django -------------------------------------------------------------------------------


@pytest.fixture
def shop(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, postgresql_proc: Any
) -> pytest.Pytester:
    """The Django project, on a database of the test bed's server (libpq's variables)."""
    project(pytester, "django_shop")
    monkeypatch.setenv("PGHOST", str(postgresql_proc.host))
    monkeypatch.setenv("PGPORT", str(postgresql_proc.port))
    monkeypatch.setenv("PGUSER", str(postgresql_proc.user))
    monkeypatch.setenv("PGPASSWORD", str(postgresql_proc.password or ""))
    monkeypatch.setenv("PGDATABASE", f"shop_{uuid.uuid4().hex[:10]}")
    return pytester


SHOP_FAILURE = [
    "*_ ERROR at setup of test_the_countries_we_ship_to _*",
    "pytest-seqdrift: sequence drift in the set-up of pytest-django test database 'default' "
    "(database test_shop_*, after migrations)",
    "(found at this test's set-up, which built or first received that database: "
    "not the test's doing, and reported here once)",
    "sequence drift in 1 column:",
    "  public.shop_country.id  (sequence public.shop_country_id_seq)",
    "    next value 1; the very next insert collides with existing id 1 (max id 5)",
    "    introduced by migration shop.0003_load_countries",
    "    fix: SELECT setval('public.shop_country_id_seq', GREATEST(5, last_value)) "
    'FROM "public"."shop_country_id_seq";',
    "         or as an operation of a new migration of shop "
    "(python manage.py makemigrations shop --empty):",
    "             migrations.RunSQL(",
    "*= sequence drift (pytest-seqdrift) =*",
    "set-up of pytest-django test database 'default' (*) "
    "(reported at tests/test_shop.py::test_the_countries_we_ship_to):",
    "  public.shop_country.id: next value 1; the very next insert collides with existing "
    "id 1 (max id 5)",
    "    introduced by migration shop.0003_load_countries",
    "1 finding in the set-up of 1 test database; 1 error at a test's set-up because of "
    "pytest-seqdrift",
    "ERROR tests/test_shop.py::test_the_countries_we_ship_to - *",
]


@pytest.mark.parametrize("driver", DRIVERS)
def test_django_shop(shop: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, driver: str) -> None:
    monkeypatch.setenv("SHOP_DRIVER", driver)
    quiet = run(shop)
    quiet.assert_outcomes(passed=4)
    assert "seqdrift:" not in quiet.stdout.str()

    caught = run(shop, "--seqdrift")
    caught.assert_outcomes(passed=3, errors=1)  # no test is blamed: one set-up error
    caught.stdout.fnmatch_lines(SHOP_FAILURE)
    reported_once(caught, "public.shop_country.id")

    # the operation the report gives, in a migration of its own, fixes it
    operation = "\n".join(line[13:] for line in printed_fix(caught, "migrations.RunSQL("))
    (shop.path / "shop" / "migrations" / "0004_country_sequence.py").write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        '    dependencies = [("shop", "0003_load_countries")]\n\n'
        f"    operations = [\n{_indent(operation, 8)}\n    ]\n"
    )
    fixed = run(shop, "--seqdrift", "--seqdrift-scope=all")
    fixed.assert_outcomes(passed=4)
    # Django's own apps (contrib.sites with SITE_ID = 1 resets its own sequence): clean
    fixed.stdout.fnmatch_lines(
        [
            "seqdrift: no sequence drift (1 test database set-up checked, * migration steps "
            "followed, 3 tests probed)"
        ]
    )


def test_django_shop_under_xdist_is_reported_once(shop: pytest.Pytester) -> None:
    """Each worker migrates a database of its own and finds the same drift: one error."""
    result = run(shop, "--seqdrift", "-n", "2")
    result.assert_outcomes(passed=3, errors=1)
    reported_once(result, "public.shop_country.id")
    result.stdout.fnmatch_lines(["1 finding in the set-up of 1 test database; *"])


def test_django_shop_with_its_fix(shop: pytest.Pytester) -> None:
    shutil.copy(shop.path / "fix" / "0004_country_sequence.py", shop.path / "shop" / "migrations")
    run(shop, "--seqdrift").assert_outcomes(passed=4)


SHOP_SCOPE_ALL = """
import pytest
from django.core.management import call_command

from shop.models import Country, Order


@pytest.mark.django_db
def test_a_new_country_hits_the_drift():
    # the set-up's drift bites: IntegrityError -- and the failed insert moves the
    # sequence on, which must not make the next test look guilty
    Country.objects.create(code="ES", name="Spain")


@pytest.mark.django_db
def test_an_imported_order_keeps_its_number():
    # a row with a chosen id, inside the test's own transaction (rolled back after it);
    # its foreign key is DEFERRABLE INITIALLY DEFERRED, so a check is pending
    austria = Country.objects.get(code="AT")
    Order.objects.create(id=500, reference="IMP-500", country=austria, total_cents=1)


@pytest.mark.django_db(transaction=True)
def test_the_migrations_run_again(db):
    # migrations run in the test body: followed, and the drift they leave is the set-up's
    call_command("migrate", "shop", "0002", verbosity=0)
    call_command("migrate", "shop", verbosity=0)
"""


SHOP_TEST_CASES = """
from django.db import connection
from django.test import TestCase, TransactionTestCase

from shop.models import Country


class CountryTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        Country.objects.create(code="ES", name="Spain")

    def test_reads(self):
        self.assertEqual(Country.objects.count(), 6)

    def test_resets_the_sequence(self):
        with connection.cursor() as cursor:  # outlives the test's rollback
            cursor.execute("SELECT setval('shop_country_id_seq', 1, false)")


class CountryWrites(TransactionTestCase):
    def test_copies_with_an_id(self):  # past every id reported: drift of its own
        Country.objects.create(id=900, code="IT", name="Italy")
"""


def test_django_scope_all_probes_test_case_classes(shop: pytest.Pytester) -> None:
    """Tests written as Django TestCase methods name no fixture and no marker: their
    class's ``databases`` says which database they use, and they are probed too."""
    shutil.copy(shop.path / "fix" / "0004_country_sequence.py", shop.path / "shop" / "migrations")
    (shop.path / "tests" / "test_cases.py").write_text(SHOP_TEST_CASES)
    run(shop, "--seqdrift", "tests/test_cases.py").assert_outcomes(passed=3)
    result = run(shop, "--seqdrift", "--seqdrift-scope=all", "tests/test_cases.py")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ CountryTests.test_resets_the_sequence _*",
            "pytest-seqdrift: sequence drift after this test (--seqdrift-scope=all):",
            "  public.shop_country.id  (sequence public.shop_country_id_seq)",
            "    next value 1; the very next insert collides with existing id 1 (max id *)",
            # the same column, reported already; but the row it committed with its id
            # lies past every one reported there: its own drift, as when run alone
            "*_ CountryWrites.test_copies_with_an_id _*",
            "pytest-seqdrift: sequence drift after this test (--seqdrift-scope=all):",
            "  public.shop_country.id  (sequence public.shop_country_id_seq)",
            "    next value *(max id 900)",
        ]
    )


SHOP_COMMITTING_TEST_CASES = """
from django.test import TestCase, TransactionTestCase

from shop.models import Country, Order


class CountryImports(TransactionTestCase):
    def test_copies_with_an_id(self):  # committed; Django flushes it after tearDown
        Country.objects.create(id=900, code="IT", name="Italy")


class CountryDrafts(TestCase):
    def test_keeps_an_id_in_its_transaction(self):  # rolled back after the test
        Country.objects.create(id=700, code="PT", name="Portugal")


class OrderFailures(TransactionTestCase):
    def test_fails_after_a_copy(self):  # its own failure, nothing of ours
        greece = Country.objects.create(code="GR", name="Greece")
        Order.objects.create(id=800, reference="IMP-800", country=greece)
        raise AssertionError("broken on purpose")
"""


def test_django_scope_all_probes_test_case_methods_before_their_teardown(
    shop: pytest.Pytester,
) -> None:
    """A TransactionTestCase method is probed as it returns, before Django's teardown
    flushes what it committed, as a pytest-style ``transaction=True`` test is before
    its fixtures' teardown: the row it committed with its id fails it. A TestCase
    method is probed inside its transaction: its own row is a note. A method that
    fails shows its own failure only."""
    shutil.copy(shop.path / "fix" / "0004_country_sequence.py", shop.path / "shop" / "migrations")
    (shop.path / "tests" / "test_committing.py").write_text(SHOP_COMMITTING_TEST_CASES)
    result = run(shop, "--seqdrift", "--seqdrift-scope=all", "-v", "tests/test_committing.py")
    result.assert_outcomes(passed=1, failed=2)
    failure = result.stdout.str().split("OrderFailures.test_fails_after_a_copy _")[1]
    failure = failure.split("\n_")[0].split("\n=")[0]  # up to the next section
    assert "broken on purpose" in failure
    assert "pytest-seqdrift" not in failure
    result.stdout.fnmatch_lines(
        [
            "*_ CountryImports.test_copies_with_an_id _*",
            "pytest-seqdrift: sequence drift after this test (--seqdrift-scope=all):",
            "  public.shop_country.id  (sequence public.shop_country_id_seq)",
            "    next value *; * inserts succeed, the * collides with existing id 900 (max id 900)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "note: tests/test_committing.py::CountryDrafts::test_keeps_an_id_in_its_transaction: "
            "public.shop_country.id: drift only against rows this test's own transaction holds, "
            "which its rollback removes: *existing id 700 (max id 700)",
        ]
    )
    assert "pytest_seqdrift" not in result.stdout.str()  # none of our frames


def test_django_scope_all_blames_no_test_for_the_set_up_or_its_own_rows(
    shop: pytest.Pytester,
) -> None:
    """--seqdrift-scope=all probes every test that uses the database (the django_db
    marker included), inside pytest-django's transaction with deferred checks pending;
    drift that lives only in a test's own rolled-back rows fails nothing (it says so at
    -v), and the set-up's drift is reported once, not by every test."""
    (shop.path / "tests" / "test_zz_more.py").write_text(SHOP_SCOPE_ALL)
    result = run(shop, "--seqdrift", "--seqdrift-scope=all", "-v")
    result.assert_outcomes(passed=5, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["FAILED tests/test_zz_more.py::test_a_new_country_hits_the_drift *"]
    )
    reported_once(result, "public.shop_country.id")
    out = result.stdout.str()
    assert "pending trigger events" not in out
    assert "could not check" not in out
    result.stdout.fnmatch_lines(
        [
            "note: tests/test_zz_more.py::test_an_imported_order_keeps_its_number: "
            "public.shop_order.id: drift only against rows this test's own transaction holds, "
            "which its rollback removes: next value *; * inserts succeed, the * collides with "
            "existing id 500 (max id 500)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "1 finding in the set-up of 1 test database; 0 findings in 4 probed tests; "
            "1 error at a test's set-up because of pytest-seqdrift"
        ]
    )


OVERRIDE = """
import pytest
from django.db import connection


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    # the project's own data, loaded after the migrations
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO shop_country (id, code, name) VALUES (50, 'IT', 'Italy')")
"""


def test_django_db_setup_overridden_to_load_data_is_checked_after_it(
    shop: pytest.Pytester,
) -> None:
    """A django_db_setup override that writes rows after the migrations: its drift is
    found, and no migration is blamed for it."""
    shutil.copy(shop.path / "fix" / "0004_country_sequence.py", shop.path / "shop" / "migrations")
    (shop.path / "tests" / "conftest.py").write_text(OVERRIDE)
    result = run(shop, "--seqdrift")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "  public.shop_country.id  (sequence public.shop_country_id_seq)",
            "    next value 6; 44 inserts succeed, the 45th collides with existing id 50 "
            "(max id 50)",
            "    not there after the migrations (the last: *): made by the set-up that "
            "followed them (a post_migrate handler, a fixture that writes rows), or seen only "
            "by the probe",
        ]
    )
    assert "introduced by" not in result.stdout.str()


RESET = """
import pytest

from shop.models import Country


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_with_reset_sequences():
    assert Country.objects.count() == 5
"""


def test_django_reset_sequences_is_named_as_the_cause(shop: pytest.Pytester) -> None:
    """pytest-django's reset_sequences=True sets every sequence back to its start while
    the rows the migrations left stay: the report says the reset did it, not a
    migration."""
    shutil.copy(shop.path / "fix" / "0004_country_sequence.py", shop.path / "shop" / "migrations")
    (shop.path / "tests" / "test_reset.py").write_text(RESET)
    result = run(shop, "--seqdrift", "--seqdrift-scope=all", "tests/test_reset.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "  public.shop_country.id  (sequence public.shop_country_id_seq)",
            "    next value 1; the very next insert collides with existing id 1 (max id 5)",
            "    made by pytest-django's reset_sequences=True, at this test's set-up: it set "
            "every sequence back to its start and the table kept its rows (no migration did "
            "this)",
            "    fix: SELECT setval('public.shop_country_id_seq', GREATEST(5, last_value)) *",
            "         or drop reset_sequences=True from this test, or empty the table before it",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "tests/test_reset.py::test_with_reset_sequences: public.shop_country.id: *",
            "    introduced by pytest-django's reset_sequences=True, at this test's set-up",
        ]
    )
    assert "introduced by migration" not in result.stdout.str()
    # without scope all the test is not probed: nothing to say
    run(shop, "--seqdrift", "tests/test_reset.py").assert_outcomes(passed=1)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


# -- Alembic on pytest-postgresql ----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_alembic_plans(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    root = project(pytester, "alembic_plans")
    monkeypatch.setenv("PLANS_DRIVER", driver)
    quiet = own_server(pytester)
    quiet.assert_outcomes(passed=3)
    assert "seqdrift:" not in quiet.stdout.str()

    caught = own_server(pytester, "--seqdrift")
    # every test upgrades a fresh database of its own: the same drift, reported once
    caught.assert_outcomes(passed=2, errors=1)
    caught.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_the_plans _*",
            "pytest-seqdrift: sequence drift in the set-up of database tests "
            "(Alembic migration to 0002, in fixture 'engine')",
            "sequence drift in 1 column:",
            "  public.plan.id  (sequence public.plan_id_seq)",
            "    next value 1; the very next insert collides with existing id 1 (max id 3)",
            "    introduced by revision 0002 (seed the plans)",
            "    fix: SELECT setval('public.plan_id_seq', GREATEST(3, last_value)) "
            'FROM "public"."plan_id_seq";',
            "         or in the upgrade() of a new revision *",
            "             op.execute(*",
        ]
    )
    reported_once(caught, "public.plan.id")

    # the statement the report gives, in a revision of its own, fixes it
    statement = printed_fix(caught, "op.execute(")[0].strip()
    (root / "migrations" / "versions" / "0003_fix.py").write_text(
        'revision = "0003"\ndown_revision = "0002"\n\nfrom alembic import op\n\n\n'
        f"def upgrade():\n    {statement}\n\n\ndef downgrade():\n    pass\n"
    )
    fixed = own_server(pytester, "--seqdrift", "--seqdrift-scope=all")
    fixed.assert_outcomes(passed=3)
    fixed.stdout.fnmatch_lines(["seqdrift: no sequence drift (*)"])


PLANS_OPEN_SESSION = """
from plans.models import Plan


def test_a_plan_added_but_not_committed(session):
    # the session's transaction stays open, holding its locks, while the plugin probes
    session.add(Plan(id=40, name="enterprise", monthly_cents=9900))
    session.flush()
"""


def test_alembic_scope_all_with_the_test_s_session_still_open(pytester: pytest.Pytester) -> None:
    """The test's SQLAlchemy session still holds its transaction when the probe runs on
    pytest-postgresql's connection: no lock timeout, no failure -- the probe leaves
    the locked table unaltered and says whose lock it was."""
    root = project(pytester, "alembic_plans")
    (root / "tests" / "test_zz_open.py").write_text(PLANS_OPEN_SESSION)
    result = own_server(pytester, "--seqdrift", "--seqdrift-scope=all", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "could not check" not in out
    assert "lock timeout" not in out
    result.stdout.fnmatch_lines(
        [
            "note: tests/test_zz_open.py::test_a_plan_added_but_not_committed: public.plan.id: "
            "fell back to the default probe: the table is locked by another session "
            "(pid * (idle in transaction*",
        ]
    )


PLANS_BODY = """
from alembic import command
from alembic.config import Config


def test_upgrade_in_the_body(postgresql):
    info = postgresql.info
    config = Config("alembic.ini")
    config.set_main_option(
        "sqlalchemy.url",
        f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}",
    )
    command.upgrade(config, "head")
"""


def test_alembic_upgrade_in_a_test_body_makes_it_a_migration_test(
    pytester: pytest.Pytester,
) -> None:
    """A test that runs the migrations itself, unmarked: probed after its body, failed,
    the revision named."""
    root = project(pytester, "alembic_plans")
    (root / "tests" / "test_plans.py").unlink()
    (root / "tests" / "test_body.py").write_text(PLANS_BODY)
    result = own_server(pytester, "--seqdrift")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift after this test (a migration test: it ran "
            "migrations):",
            "*public.plan.id  (sequence public.plan_id_seq)",
            "    introduced by revision 0002 (seed the plans)",
        ]
    )


# -- pytest-postgresql's load= --------------------------------------------------------------


def test_seed_files(pytester: pytest.Pytester) -> None:
    root = project(pytester, "seed_files")
    quiet = own_server(pytester)
    quiet.assert_outcomes(passed=3)
    assert "seqdrift:" not in quiet.stdout.str()

    caught = own_server(pytester, "--seqdrift")
    # each test gets a database cloned from the template: the drift is reported once
    caught.assert_outcomes(passed=2, errors=1)
    caught.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_currencies _*",
            "pytest-seqdrift: sequence drift in the set-up of fixture postgresql (database "
            "tests, created from template tests_tmpl loaded with sql/schema.sql, sql/seed.sql)",
            "*public.currency.id  (sequence public.currency_id_seq)",
            "    next value 1; the very next insert collides with existing id 1 (max id 4)",
            "    introduced by loading sql/seed.sql",
            "    fix: SELECT setval('public.currency_id_seq', GREATEST(4, last_value)) "
            'FROM "public"."currency_id_seq";',
            "         or append that line to sql/seed.sql",
        ]
    )
    reported_once(caught, "public.currency.id")

    fix = re.search(r"    fix: (SELECT setval\(.*;)$", caught.stdout.str(), re.M)
    assert fix is not None
    with (root / "sql" / "seed.sql").open("a") as seed:
        seed.write(fix.group(1) + "\n")
    own_server(pytester, "--seqdrift").assert_outcomes(passed=3)


@pytest.mark.parametrize("where", ["cli", "ini"])
def test_seed_files_excluded_tables_are_not_reported(pytester: pytest.Pytester, where: str) -> None:
    project(pytester, "seed_files")
    if where == "cli":
        result = own_server(pytester, "--seqdrift", "--seqdrift-exclude=public.curr*")
    else:
        (pytester.path / "pytest.ini").write_text(
            "[pytest]\ntestpaths = tests\nseqdrift_exclude = audit_* currency\n"
        )
        result = own_server(pytester, "--seqdrift")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["seqdrift: * exclude=*", "seqdrift: no sequence drift (*)"])


ENGINE_OF_ITS_OWN = """
import pytest
from alembic import command
from alembic.config import Config
from pytest_postgresql import factories
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

postgresql_proc = factories.postgresql_proc()


@pytest.fixture(scope="session")
def engine(postgresql_proc):
    proc = postgresql_proc
    with DatabaseJanitor(
        user=proc.user, host=proc.host, port=proc.port, dbname="app_test", password=proc.password
    ):
        url = f"postgresql+psycopg://{proc.user}@{proc.host}:{proc.port}/app_test"
        config = Config("alembic.ini")
        config.set_main_option("sqlalchemy.url", url)
        command.upgrade(config, "head")
        engine = create_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def session(engine):
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    yield session
    session.close()
    outer.rollback()
    connection.close()
"""

LEGACY_IMPORT = """
from sqlalchemy import insert, select

from plans.models import Plan


def test_import_legacy_plans(engine):
    with engine.begin() as conn:  # committed, with its id
        conn.execute(insert(Plan), [{"id": 5, "name": "legacy", "monthly_cents": 100}])


def test_the_plans(session):
    assert len(session.scalars(select(Plan)).all()) == 4
"""


def test_scope_all_follows_a_database_a_fixture_migrated(pytester: pytest.Pytester) -> None:
    """A session fixture builds and migrates a database of its own (no fixture the plugin
    knows hands it out): the tests that use that fixture use that database, and
    --seqdrift-scope=all probes it after them."""
    root = project(pytester, "alembic_plans")
    shutil.copy(root / "fix" / "0003_plan_sequence.py", root / "migrations" / "versions")
    (root / "tests" / "conftest.py").write_text(ENGINE_OF_ITS_OWN)
    (root / "tests" / "test_plans.py").write_text(LEGACY_IMPORT)
    args = ("--seqdrift", "--seqdrift-scope=all", "-p", "no:randomly")
    result = own_server(pytester, *args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_import_legacy_plans _*",
            "pytest-seqdrift: sequence drift after this test (--seqdrift-scope=all):",
            "*public.plan.id  (sequence public.plan_id_seq)",
            "    next value 4; 1 insert succeeds, the 2nd collides with existing id 5 (max id 5)",
        ]
    )
    assert "test_the_plans -" not in result.stdout.str()  # the next test is not blamed
    own_server(pytester, "--seqdrift").assert_outcomes(passed=2)  # not a migration test


OVERRIDDEN = """
import psycopg
import pytest
from pytest_postgresql import factories

postgresql_proc = factories.postgresql_proc()


@pytest.fixture(scope="session")
def database(postgresql_proc):
    proc = postgresql_proc
    admin = f"host={proc.host} port={proc.port} user={proc.user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE users_test")
    dsn = f"host={proc.host} port={proc.port} user={proc.user} dbname=users_test"
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE)")
        conn.execute("INSERT INTO users VALUES (1, 'admin@example.com'), (2, 'ada@example.com')")
    return dsn


@pytest.fixture
def conn(database):
    with psycopg.connect(database) as conn:
        yield conn
        conn.rollback()


@pytest.fixture
def seqdrift_connection(database):
    with psycopg.connect(database) as conn:
        yield conn
"""

USERS = """
def test_admin(conn):
    assert conn.execute("SELECT email FROM users WHERE id = 1").fetchone() == ("admin@example.com",)


def test_count(conn):
    assert conn.execute("SELECT count(*) FROM users").fetchone() == (2,)
"""


def test_the_database_of_an_overridden_seqdrift_connection_is_checked_with_no_marker(
    pytester: pytest.Pytester,
) -> None:
    """The tests use the fixture the override takes: their database is that one."""
    pytester.makeconftest(OVERRIDDEN)
    pytester.makepyfile(test_users=USERS)
    result = own_server(pytester, "--seqdrift")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift in the set-up of fixture seqdrift_connection "
            "(from database) (database users_test)",
            "*public.users.id  (sequence public.users_id_seq)",
        ]
    )
    reported_once(result, "public.users.id")


def test_an_override_in_one_directory_is_named_though_another_has_none(
    pytester: pytest.Pytester,
) -> None:
    """Only the tests under a/ override seqdrift_connection: a test collected after
    them, under b/, with the plugin's own fixture, does not make the report forget
    what the override takes."""
    pytester.mkpydir("a")
    pytester.path.joinpath("a", "conftest.py").write_text(OVERRIDDEN)
    pytester.path.joinpath("a", "test_users.py").write_text(USERS)
    pytester.mkpydir("b")
    pytester.path.joinpath("b", "test_plain.py").write_text("def test_plain():\n    pass\n")
    result = own_server(pytester, "--seqdrift", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift in the set-up of fixture seqdrift_connection "
            "(from database) (database users_test)",
        ]
    )


def test_warn_mode_warns_at_the_test_not_in_the_plugin(pytester: pytest.Pytester) -> None:
    project(pytester, "seed_files")
    result = own_server(pytester, "--seqdrift", "--seqdrift-fail=false", "-p", "no:randomly")
    result.assert_outcomes(passed=3, warnings=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "tests/test_prices.py::test_currencies",
            "  *SeqdriftWarning: pytest-seqdrift: sequence drift in the set-up of fixture "
            "postgresql *",
            "  (details: the sequence drift summary)",
        ]
    )
    assert "pytest_seqdrift/" not in result.stdout.str()  # no frame of ours
    assert result.stdout.str().count("    introduced by loading sql/seed.sql") == 1


def test_django_reuse_db_says_why_no_migration_is_named(shop: pytest.Pytester) -> None:
    """With --reuse-db the second run migrates nothing: the drift is still found, and
    the report says how to have its migration named."""
    run(shop, "--seqdrift", "--reuse-db").assert_outcomes(passed=3, errors=1)
    again = run(shop, "--seqdrift", "--reuse-db")
    again.assert_outcomes(passed=3, errors=1)
    again.stdout.fnmatch_lines(
        [
            "pytest-seqdrift: sequence drift in the set-up of pytest-django test database "
            "'default' (database test_shop_*, no migration ran in this set-up (--reuse-db, "
            "--no-migrations): run once with --create-db and migrations to have the one that "
            "made it named)",
        ]
    )
    assert "introduced by migration" not in again.stdout.str()
