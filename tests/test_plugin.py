"""The pytest plugin, run on small example projects with pytester."""

from __future__ import annotations

import json

import pytest
from support.plugin import run


@pytest.fixture
def seed_story(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.copy_example("seed_story")
    return pytester


def test_seed_story_passes_without_the_plugin(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "test_migration.py")
    result.assert_outcomes(passed=1)
    assert "seqdrift:" not in result.stdout.str()


def test_seed_story_fails_with_seqdrift(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "--seqdrift", "test_migration.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "seqdrift: probe=insert limit=10000 scope=migrations on-drift=fail threshold=0.8 dsn=none",
            "pytest-seqdrift: sequence drift after this test "
            "(a migration test: it is marked @pytest.mark.seqdrift):",
            "sequence drift in 1 column:",
            "  public.profile_billingaddress.id  (sequence public.profile_billingaddress_id_seq)",
            "    next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
            "    fix: SELECT setval('public.profile_billingaddress_id_seq', GREATEST(16, last_value))*",
            "*= sequence drift (pytest-seqdrift) =*",
            # the summary says it in the same words as the failure
            "test_migration.py::test_split_billing_addresses: public.profile_billingaddress.id: "
            "next value 1; 6 inserts succeed, the 7th collides with existing id 7 (max id 16)",
            "    fix: SELECT setval(*",
            "1 finding in 1 probed test; 1 test failed because of pytest-seqdrift",
        ]
    )
    out = result.stdout.str()
    # the report, not the plugin's frames: no traceback, no exception chain
    assert "pytest_seqdrift" not in out.split("= FAILURES =")[1].split("= sequence drift")[0]
    assert "During handling" not in out
    assert "result = yield" not in out


def test_fixed_migration_passes(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "--seqdrift", "test_fixed_migration.py")
    result.assert_outcomes(passed=1)
    assert "sequence drift (pytest-seqdrift)" not in result.stdout.str()


def test_ini_switches_it_on(seed_story: pytest.Pytester) -> None:
    seed_story.makeini("[pytest]\nseqdrift = true\n")
    run(seed_story, "test_migration.py").assert_outcomes(failed=1)


def test_command_line_beats_ini(seed_story: pytest.Pytester) -> None:
    seed_story.makeini("[pytest]\nseqdrift = true\nseqdrift_fail = true\n")
    result = run(seed_story, "--seqdrift-fail=false", "test_migration.py")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*SeqdriftWarning: pytest-seqdrift: sequence drift after this test*"]
    )


def test_warn_mode_in_ini(seed_story: pytest.Pytester) -> None:
    seed_story.makeini("[pytest]\nseqdrift = true\nseqdrift_fail = false\n")
    result = run(seed_story, "test_migration.py")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*6 inserts succeed, the 7th collides with existing id 7*"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--seqdrift-probe=sideways"], "", "--seqdrift-probe: expected one of insert, default*"),
        ([], "seqdrift_probe_limit = 0", "ini option seqdrift_probe_limit: expected a whole*"),
        (["--seqdrift-fail=maybe"], "", "--seqdrift-fail: expected true or false, not 'maybe'"),
    ],
)
def test_bad_option_values_are_usage_errors(
    seed_story: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    seed_story.makeini(f"[pytest]\n{ini}\n")
    result = run(seed_story, "--seqdrift", *args, "test_migration.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_probe_mode_default(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "--seqdrift", "--seqdrift-probe=default", "test_migration.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the 7th collides with existing id 7*"])


def test_json_report(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "--seqdrift", "--seqdrift-report=drift.json")
    result.assert_outcomes(passed=1, failed=1)
    out = json.loads((seed_story.path / "drift.json").read_text())
    assert out["version"] == 1
    (finding,) = out["findings"]
    assert finding["test"] == "test_migration.py::test_split_billing_addresses"
    assert finding["table"] == "profile_billingaddress"
    assert finding["inserts_until_collision"] == 6


def test_scope_all_probes_unmarked_database_tests(pytester: pytest.Pytester) -> None:
    pytester.copy_example("seed_story/conftest.py")
    pytester.makepyfile(
        """
        def test_unmarked(postgresql):
            postgresql.execute("CREATE TABLE t (id serial PRIMARY KEY)")
            postgresql.execute("INSERT INTO t (id) VALUES (1), (2)")
            postgresql.commit()
        """
    )
    run(pytester, "--seqdrift").assert_outcomes(passed=1)
    result = run(pytester, "--seqdrift", "--seqdrift-scope=all")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the very next insert collides with existing id 1*"])


def test_no_database_is_said_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.seqdrift
        def test_one():
            pass

        @pytest.mark.seqdrift
        def test_two():
            pass
        """
    )
    result = run(pytester, "--seqdrift")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert out.count("pytest-seqdrift found no database for this test") == 1
    assert "tests without a database: test_no_database_is_said_once.py::test_one" in out


def test_marker_arguments_are_validated(pytester: pytest.Pytester) -> None:
    pytester.copy_example("seed_story/conftest.py")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.seqdrift(prob="insert")
        def test_typo(postgresql):
            pass
        """
    )
    result = run(pytester, "--seqdrift")
    result.assert_outcomes(errors=1)  # at setup: the test body never runs
    result.stdout.fnmatch_lines(["*@pytest.mark.seqdrift takes only the keywords*unknown*'prob'*"])


def test_fixture_assert_sequences_consistent(pytester: pytest.Pytester) -> None:
    pytester.copy_example("seed_story/conftest.py")
    pytester.makepyfile(
        """
        def test_drifted(postgresql, assert_sequences_consistent):
            postgresql.execute("CREATE TABLE t (id serial PRIMARY KEY)")
            postgresql.execute("INSERT INTO t (id) VALUES (3), (4)")
            assert_sequences_consistent()

        def test_with_a_connection(postgresql, assert_sequences_consistent):
            postgresql.execute("CREATE TABLE t (id serial PRIMARY KEY)")
            postgresql.execute("INSERT INTO t (id) VALUES (3)")
            assert_sequences_consistent(postgresql, exclude_tables=["t"])

        def test_clean(postgresql, assert_sequences_consistent):
            postgresql.execute("CREATE TABLE t (id serial PRIMARY KEY)")
            postgresql.execute("INSERT INTO t DEFAULT VALUES")
            assert_sequences_consistent()
        """
    )
    result = run(
        pytester,
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*assert_sequences_consistent()",
            "E*pytest_seqdrift.fixtures.SequenceDriftError: sequence drift in 1 column:",
            "E*public.t.id  (sequence public.t_id_seq)",
            "E*next value 1; 2 inserts succeed, the 3rd collides with existing id 3 (max id 4)",
        ]
    )


def test_override_seqdrift_connection(pytester: pytest.Pytester) -> None:
    """The alembic_engine pattern: the user's conftest says which database to check."""
    pytester.copy_example("seed_story/conftest.py")
    pytester.makeconftest(
        (pytester.path / "conftest.py").read_text()
        + """

import pytest

@pytest.fixture
def app_db(postgresql):
    return postgresql

@pytest.fixture
def seqdrift_connection(app_db):
    return app_db
"""
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.seqdrift
        def test_migrate(app_db):
            app_db.execute("CREATE TABLE t (id serial PRIMARY KEY)")
            app_db.execute("INSERT INTO t (id) VALUES (2)")
        """
    )
    result = run(pytester, "--seqdrift")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 insert succeeds, the 2nd collides with existing id 2*"])


def test_snapshot_fixture(pytester: pytest.Pytester) -> None:
    pytester.copy_example("seed_story/conftest.py")
    pytester.makepyfile(
        """
        def test_snapshot(postgresql, seqdrift_snapshot):
            postgresql.execute("CREATE SEQUENCE s")
            seqdrift_snapshot.record()
            postgresql.execute("SELECT nextval('s')")
            (moved,) = seqdrift_snapshot.diff()
            assert moved.sequence == "public.s"
            assert (moved.before.last_value, moved.before.is_called) == (1, False)
            assert (moved.after.last_value, moved.after.is_called) == (1, True)
            assert seqdrift_snapshot.restore() == 1
            assert seqdrift_snapshot.diff() == []
            with seqdrift_snapshot:
                postgresql.execute("SELECT nextval('s'), nextval('s')")
            assert seqdrift_snapshot.diff() == []
        """
    )
    run(
        pytester,
    ).assert_outcomes(passed=1)


def test_xdist_one_summary(seed_story: pytest.Pytester) -> None:
    result = run(seed_story, "-n", "2", "--seqdrift", "--seqdrift-report=drift.json")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert out.count("test_migration.py::test_split_billing_addresses: public.") == 1
    assert len(json.loads((seed_story.path / "drift.json").read_text())["findings"]) == 1


SESSION_DATABASE = '''
import psycopg
import pytest
from pytest_postgresql import factories

import pytest_seqdrift.plugin.probing as probing
from pytest_seqdrift.testbed import find_pg_ctl, root_safe

postgresql_proc = factories.postgresql_proc(executable=root_safe(find_pg_ctl()))
how = []


def pytest_configure(config):
    original = probing.probe_since

    def counted(*args, **kwargs):
        done = original(*args, **kwargs)
        how.append(done.full or "from the mark")
        return done

    probing.probe_since = counted


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"probes: {how}")


@pytest.fixture(scope="session")
def app_connection(postgresql_proc):
    p = postgresql_proc
    server = f"host={p.host} port={p.port} user={p.user}"
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS app")
        admin.execute("CREATE DATABASE app")
    with psycopg.connect(f"{server} dbname=app", autocommit=True) as setup:
        for i in range(8):
            setup.execute(f"CREATE TABLE t{i} (id serial PRIMARY KEY, v text)")
            setup.execute(f"INSERT INTO t{i} (v) SELECT 'x' FROM generate_series(1, 20)")
        setup.execute("""
            CREATE TABLE orders (id serial PRIMARY KEY, v text);
            CREATE FUNCTION orders_hook() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.v = 'reset' THEN PERFORM setval('t5_id_seq', 1); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER orders_hook AFTER INSERT ON orders
                FOR EACH ROW EXECUTE FUNCTION orders_hook();
        """)
    with psycopg.connect(f"{server} dbname=app") as conn:
        yield conn


@pytest.fixture
def db(app_connection):
    yield app_connection
    app_connection.rollback()  # every test in a transaction of its own, rolled back


@pytest.fixture
def seqdrift_connection(db):
    return db
'''


def test_scope_all_fails_a_later_test_that_adds_rows_past_the_reported_drift(
    pytester: pytest.Pytester,
) -> None:
    """A column reported once is not reported again for its sequence's moves (a failing
    insert moves it on), but rows a later test commits past every id reported on it are
    that test's drift: run alone it fails, and so it does after the first one."""
    pytester.makeconftest(SESSION_DATABASE)
    pytester.makepyfile(
        """
        def test_a_resets_a_sequence(db):
            db.execute("SELECT setval('t3_id_seq', 1)")  # outlives the rollback

        def test_b_draws_from_it(db):
            db.execute("SELECT nextval('t3_id_seq') FROM generate_series(1, 3)")

        def test_c_copies_rows_with_their_ids(db):
            db.execute("INSERT INTO t3 (id, v) VALUES (40, 'copied'), (41, 'copied')")
            db.commit()

        def test_d_draws_again(db):
            db.execute("SELECT nextval('t3_id_seq')")
        """
    )
    result = run(pytester, "--seqdrift", "--seqdrift-scope=all", "-v")
    result.assert_outcomes(passed=2, failed=2)
    failures = result.stdout.str().split("= FAILURES =")[1].split("= sequence drift")[0]
    assert "test_a_resets_a_sequence" in failures
    assert "test_c_copies_rows_with_their_ids" in failures
    assert "(max id 41)" in failures.split("test_c_copies")[1]
    result.stdout.fnmatch_lines(
        [
            "*public.t3.id: the same drift, reported at *::test_a_resets_a_sequence*",
            "*public.t3.id: the same drift, reported at *::test_c_copies_rows_with_their_ids*",
        ]
    )


def test_scope_all_judges_each_test_from_the_last_probe(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SESSION_DATABASE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_writes_three_tables(db, n):
            for i in (1, 2, 6):
                db.execute(f"INSERT INTO t{i} (v) VALUES ('new')")

        def test_resets_a_sequence(db):
            db.execute("SELECT setval('t3_id_seq', 1)")  # outlives the rollback

        def test_orders_through_a_trigger(db):
            db.execute("INSERT INTO orders (v) VALUES ('reset')")  # t5, never named

        def test_after_them(db):
            db.execute("INSERT INTO t1 (v) VALUES ('new')")
        """
    )
    result = run(pytester, "--seqdrift", "--seqdrift-scope=all")
    result.assert_outcomes(passed=5, failed=2)
    out = result.stdout.str()
    assert "test_resets_a_sequence" in out.split("= FAILURES =")[1]
    assert "public.t3.id" in out
    assert "public.t5.id" in out
    # the first probe is full; every later one starts from the last (no commit, no DDL)
    (line,) = [x for x in out.splitlines() if x.startswith("probes: ")]
    assert line == "probes: " + str(["no earlier probe"] + ["from the mark"] * 6)
