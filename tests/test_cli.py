"""The ``seqdrift check`` command against a real server: output contract and exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from support.cli import SEED_FINDING

SEED = """
CREATE TABLE profile_billingaddress (id serial PRIMARY KEY, street text);
INSERT INTO profile_billingaddress (id, street)
SELECT i, 'street ' || i FROM unnest(ARRAY[7, 9, 12, 14, 16]) AS i;
"""


def dsn(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return f"host={info.host} port={info.port} user={info.user} dbname={info.dbname}"


def seqdrift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_seqdrift", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_json_output_is_the_contract(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    result = seqdrift("check", dsn(db), "--format", "json")
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert out["version"] == 1
    (finding,) = out["findings"]
    fix = finding.pop("fix_sql")
    assert finding == SEED_FINDING
    assert fix.startswith("SELECT setval('public.profile_billingaddress_id_seq', ")
    assert out["checked"] == [
        {
            "schema": "public",
            "table": "profile_billingaddress",
            "column": "id",
            "sequence": "public.profile_billingaddress_id_seq",
            "status": "finding",
        }
    ]
    assert out["skipped"] == []


def test_text_output_says_after_how_many_inserts(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    result = seqdrift("check", dsn(db))
    assert result.returncode == 1
    assert "public.profile_billingaddress.id" in result.stdout
    assert "6 inserts succeed, the 7th collides with existing id 7 (max id 16)" in result.stdout
    assert "checked 1 column in 1 table: 1 collision" in result.stdout


def test_clean_database_exits_zero(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    db.execute("SELECT setval('profile_billingaddress_id_seq', 16)")
    result = seqdrift("check", dsn(db), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"] == []


def test_fixing_sql_from_the_report_clears_it(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    fix = json.loads(seqdrift("check", dsn(db), "--format", "json").stdout)["findings"][0]
    db.execute(fix["fix_sql"])
    assert seqdrift("check", dsn(db)).returncode == 0


def test_schema_and_exclude_filters(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    db.execute("CREATE SCHEMA other; CREATE TABLE other.t (id serial PRIMARY KEY)")
    only_other = seqdrift("check", dsn(db), "--schema", "other", "--format", "json")
    assert only_other.returncode == 0
    assert [c["table"] for c in json.loads(only_other.stdout)["checked"]] == ["t"]
    excluded = seqdrift("check", dsn(db), "--exclude-table", "profile_*")
    assert excluded.returncode == 0, excluded.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=5", "cannot connect"),
        ("not a dsn at all = = =", "cannot connect"),
        ("postgresql://[broken", "cannot connect"),
    ],
    ids=["refused", "malformed", "bad-url"],
)
def test_cannot_connect_is_exit_two_with_one_line(target: str, reason: str) -> None:
    result = seqdrift("check", target)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"seqdrift: {reason}")


def test_missing_database_is_exit_two(db: psycopg.Connection[Any]) -> None:
    info = db.info
    result = seqdrift(
        "check", f"host={info.host} port={info.port} user={info.user} dbname=no_such_db"
    )
    assert result.returncode == 2
    assert 'database "no_such_db" does not exist' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_and_help() -> None:
    assert seqdrift("--version").stdout.startswith("seqdrift ")
    helped = seqdrift("check", "--help")
    assert helped.returncode == 0
    assert "READ ONLY" in helped.stdout
