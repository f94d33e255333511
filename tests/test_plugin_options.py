"""Every option works on the command line and in the ini file; the command line wins."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from support.plugin import run

HEADER = "seqdrift: probe={probe} limit={limit} scope={scope} on-drift={fail} threshold={threshold} dsn={dsn}"
DEFAULTS = {
    "probe": "insert",
    "limit": "10000",
    "scope": "migrations",
    "fail": "fail",
    "threshold": "0.8",
    "dsn": "none",
}


@pytest.mark.parametrize("where", ["cli", "ini"])
@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("probe", "default", {"probe": "default"}),
        ("probe_limit", "25", {"limit": "25"}),
        ("scope", "all", {"scope": "all"}),
        ("fail", "false", {"fail": "warn"}),
        ("threshold", "0.5", {"threshold": "0.5"}),
        ("dsn", "dbname=nowhere", {"dsn": "set"}),
    ],
)
def test_option_from_cli_or_ini(
    pytester: pytest.Pytester, where: str, name: str, value: str, shown: dict[str, str]
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    if where == "cli":
        result = run(pytester, "--seqdrift", f"--seqdrift-{name.replace('_', '-')}={value}")
    else:
        pytester.makeini(f"[pytest]\nseqdrift = true\nseqdrift_{name} = {value}\n")
        result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([HEADER.format(**{**DEFAULTS, **shown}) + "*"])


def test_cli_beats_ini_for_every_option(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nseqdrift = true\nseqdrift_probe = default\nseqdrift_probe_limit = 3\n"
        "seqdrift_scope = all\nseqdrift_fail = false\nseqdrift_threshold = 0.5\n"
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(
        pytester,
        "--seqdrift-probe=insert",
        "--seqdrift-probe-limit=10000",
        "--seqdrift-scope=migrations",
        "--seqdrift-fail=true",
        "--seqdrift-threshold=0.8",
    )
    result.stdout.fnmatch_lines([HEADER.format(**DEFAULTS)])


def test_off_by_default_and_off_costs_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_plugin_object_absent(pytestconfig):
            assert pytestconfig.pluginmanager.get_plugin("seqdrift-plugin") is None
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "seqdrift:" not in result.stdout.str()


def test_ini_off_and_cli_on(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nseqdrift = false\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    run(pytester, "--seqdrift").stdout.fnmatch_lines(["seqdrift: probe=insert*"])


def dsn_of(conn: psycopg.Connection[Any]) -> str:
    i = conn.info
    return f"host={i.host} port={i.port} user={i.user} dbname={i.dbname}"


DSN_TESTS = """
import psycopg
import pytest

DSN = {dsn!r}


def migrate(sql):
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql)


@pytest.mark.seqdrift
def test_migration():
    migrate("CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) VALUES (1), (2)")


def test_unmarked_migration():
    migrate("CREATE TABLE u (id serial PRIMARY KEY); INSERT INTO u (id) VALUES (5)")
"""


@pytest.mark.parametrize("where", ["cli", "ini", "env"])
def test_dsn_database_is_checked_read_only_at_the_end(
    pytester: pytest.Pytester,
    db: psycopg.Connection[Any],
    where: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makepyfile(DSN_TESTS.format(dsn=dsn_of(db)))
    args = ["--seqdrift", "-v", "-p", "no:randomly"]
    if where == "cli":
        args.append(f"--seqdrift-dsn={dsn_of(db)}")
    elif where == "ini":
        pytester.makeini(f"[pytest]\nseqdrift_dsn = {dsn_of(db)}\n")
    else:
        monkeypatch.setenv("SEQDRIFT_DSN", dsn_of(db))
    result = run(pytester, *args)
    # the migration test fails: its drift is found read-only (not probed); the unmarked
    # test's drift is found once more at the end of the session
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*public.t.id*the very next insert collides with existing id 1*",
            "(end of session): public.u.id: next value 1; 4 inserts succeed, "
            "the 5th collides with existing id 5 (max id 5)",
            "*--seqdrift-dsn is not known to be a test database: checked read-only, not probed*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    db.execute("DROP TABLE t, u")
    assert run(pytester, *args, "--seqdrift-fail=false").ret == 0


def test_dsn_database_drifted_before_the_tests_is_its_set_up(
    pytester: pytest.Pytester, db: psycopg.Connection[Any]
) -> None:
    """Drift the database had before any test ran is reported once, as its set-up's,
    not blamed on the migration test that first receives it."""
    db.execute("CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) VALUES (1), (2)")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.seqdrift
        def test_first():
            pass

        @pytest.mark.seqdrift
        def test_second():
            pass
        """
    )
    result = run(pytester, "--seqdrift", f"--seqdrift-dsn={dsn_of(db)}")
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_first*",
            "pytest-seqdrift: sequence drift in the set-up of --seqdrift-dsn (database *)",
            "(found at this test's set-up, which built or first received that database: "
            "not the test's doing, and reported here once)",
            "*public.t.id  (sequence public.t_id_seq)",
        ]
    )
    assert "(end of session)" not in result.stdout.str()  # reported once


@pytest.mark.parametrize("where", ["cli", "ini"])
def test_probe_dsn_opts_in(
    pytester: pytest.Pytester, db: psycopg.Connection[Any], where: str
) -> None:
    pytester.makepyfile(DSN_TESTS.format(dsn=dsn_of(db)))
    args = ["--seqdrift", "-v", f"--seqdrift-dsn={dsn_of(db)}", "-k", "test_migration"]
    if where == "cli":
        args.append("--seqdrift-probe-dsn=true")
    else:
        pytester.makeini("[pytest]\nseqdrift_probe_dsn = true\n")
    result = run(pytester, *args)
    result.assert_outcomes(failed=1, deselected=1)
    assert "checked read-only" not in result.stdout.str()
    result.stdout.fnmatch_lines(["seqdrift: * dsn=set (probed)"])


@pytest.mark.parametrize("where", ["cli", "ini"])
def test_report_path(pytester: pytest.Pytester, where: str) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    if where == "cli":
        run(pytester, "--seqdrift", "--seqdrift-report=out.json")
    else:
        pytester.makeini("[pytest]\nseqdrift = true\nseqdrift_report = out.json\n")
        run(pytester)
    assert json.loads((pytester.path / "out.json").read_text()) == {"version": 1, "findings": []}
