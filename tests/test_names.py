"""Hostile names, all at once, on a real server.

Schemas, tables, columns and sequences named with double quotes, spaces, capitals,
unicode, reserved words, ``%``, ``%s``, ``{}`` and ``{0}`` (format-string traps), names of
63 bytes (NAMEDATALEN - 1) and one PostgreSQL truncated, a sequence whose name does not
follow ``<table>_<col>_seq``, a table named ``x"; DROP TABLE y; --`` and one with a line
break in its name. Every one is drifted; every one must be found with its exact name
and numbers, in every output format; the fix script run by ``psql -f`` and
``fix --apply`` must fix every one and drop nothing; the probe and the snapshots must
put every sequence back exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_support import (
    dsn,
    psql_path,
    run_psql_file,
    seqdrift,
    sequence_states,
    table_contents,
)
from psycopg import sql

from pytest_seqdrift import check, snapshot
from pytest_seqdrift.model import printable
from pytest_seqdrift.probe import Mode, probe

Conn = psycopg.Connection[Any]

SCHEMA = 'Sch "ema" Ünï'
OTHER_SCHEMA = "select"  # a reserved word as a schema
LONG_UNICODE = "ü" * 31 + "a"  # 63 bytes in UTF-8: the longest name PostgreSQL keeps
assert len(LONG_UNICODE.encode()) == 63
TOO_LONG = "long_" + "x" * 70  # PostgreSQL truncates it to 63 bytes
TRUNCATED = TOO_LONG[:63]


@dataclass(frozen=True)
class Case:
    schema: str
    table: str
    column: str
    kind: str  # serial | identity | default: DEFAULT nextval(<own sequence>)
    sequence: str | None = None  # the sequence's own name, for kind "default"


CASES = [
    Case(SCHEMA, "order", "user", "serial"),
    Case(SCHEMA, 'Mixed Case "Quoted" Tåble', "Id Ünï", "identity"),
    Case(SCHEMA, "100% %s {} {0}", "%(id)s {id}", "serial"),
    Case(SCHEMA, LONG_UNICODE, LONG_UNICODE, "serial"),
    Case(SCHEMA, TRUNCATED, "id", "serial"),
    Case(OTHER_SCHEMA, "user", "from", "default", sequence='not "the" usual_seq %s'),
    Case("public", 'x"; DROP TABLE y; --', "id", "serial"),
    Case("public", "new\nline", "id\r\n", "identity"),
    Case("public", "tab\tand 'quote' \\ back", "id", "default", sequence="Seq {0} 100%"),
]


def ids(i: int) -> tuple[int, int, int]:
    """The ids planted in case ``i``'s table: the sequence stands at 1, so the
    (i + 1)th insert collides with ``i + 2``."""
    return (i + 2, i + 5, i + 10)


def build(db: Conn) -> None:
    db.execute("CREATE TABLE y (id int); INSERT INTO y VALUES (1)")
    for schema in {c.schema for c in CASES} - {"public"}:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    for i, c in enumerate(CASES):
        table = sql.Identifier(c.schema, TOO_LONG if c.table == TRUNCATED else c.table)
        col = sql.Identifier(c.column)
        if c.kind == "serial":
            column_def = sql.SQL("{} serial PRIMARY KEY").format(col)
        elif c.kind == "identity":
            column_def = sql.SQL("{} int GENERATED ALWAYS AS IDENTITY PRIMARY KEY").format(col)
        else:
            assert c.sequence is not None
            seq = sql.Identifier(c.schema, c.sequence)
            db.execute(sql.SQL("CREATE SEQUENCE {}").format(seq))
            column_def = sql.SQL("{} bigint PRIMARY KEY DEFAULT nextval({})").format(
                col, sql.Literal(seq.as_string(db))
            )
        db.execute(
            sql.SQL("CREATE TABLE {} ({}, {} text)").format(
                table, column_def, sql.Identifier("select")
            )
        )
        # the ids as a literal: a name with % in a composed query leaves no room for
        # client-side parameters (psycopg would read the % as a placeholder)
        db.execute(
            sql.SQL(
                "INSERT INTO {} ({}, {}) OVERRIDING SYSTEM VALUE "
                "SELECT x, 'v' || x FROM unnest({}::int[]) AS x"
            ).format(
                sql.Identifier(c.schema, c.table),
                col,
                sql.Identifier("select"),
                sql.Literal(list(ids(i))),
            )
        )


def expected() -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """(schema, table, column) -> (next value, first collision, inserts before, max)."""
    return {
        (c.schema, c.table, c.column): (1, ids(i)[0], i + 1, ids(i)[2]) for i, c in enumerate(CASES)
    }


def sequence_of(db: Conn, c: Case) -> tuple[str, str]:
    """The (schema, name) PostgreSQL gave the case's sequence."""
    row = db.execute(
        "SELECT n.nspname, s.relname FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
        "WHERE s.oid = pg_get_serial_sequence(%s, %s)::regclass",
        [sql.Identifier(c.schema, c.table).as_string(db), c.column],
    ).fetchone()
    if row is None:  # not owned: the sequence named in the default
        assert c.sequence is not None
        return c.schema, c.sequence
    return str(row[0]), str(row[1])


@pytest.fixture
def hostile(db: Conn) -> Conn:
    build(db)
    # the names PostgreSQL kept are the names we expect
    rel = db.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'long\\_%%' AND relkind = 'r'"
    ).fetchall()
    assert rel == [(TRUNCATED,)]
    return db


def test_every_hostile_name_is_found_exactly(hostile: Conn) -> None:
    report = check(hostile)
    assert report.skipped == []
    got = {
        (f.column.schema, f.column.table, f.column.column): (
            f.next_value,
            f.first_collision,
            f.inserts_until_collision,
            f.max_existing,
        )
        for f in report.findings
    }
    assert got == expected()
    assert len(report.findings) == len(CASES)
    for f in report.findings:
        case = next(
            c
            for c in CASES
            if (c.schema, c.table, c.column) == (f.column.schema, f.column.table, f.column.column)
        )
        assert (f.sequence.schema, f.sequence.name) == sequence_of(hostile, case)
    # and PostgreSQL agrees with the numbers: the first drifted insert fails on its id
    c = CASES[0]
    insert = sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.Identifier(c.schema, c.table))
    with hostile.transaction(force_rollback=True):
        hostile.execute(insert)  # id 1
        with pytest.raises(psycopg.errors.UniqueViolation):
            hostile.execute(insert)  # id 2: planted


GH_LINE = re.compile(r"::(error|warning|notice) title=([^:]*)::(.*)")


def unescape(text: str) -> str:
    for code, char in (("%3A", ":"), ("%2C", ","), ("%0A", "\n"), ("%0D", "\r"), ("%25", "%")):
        text = text.replace(code, char)
    return text


def test_every_output_format_names_them_right(hostile: Conn) -> None:
    as_json = seqdrift("check", dsn(hostile), "--format", "json")
    assert as_json.returncode == 1, as_json.stderr
    out = json.loads(as_json.stdout)
    got = {
        (f["schema"], f["table"], f["column"]): (
            f["next_value"],
            f["first_collision"],
            f["inserts_until_collision"],
            f["max_existing"],
        )
        for f in out["findings"]
    }
    assert got == expected()

    text = seqdrift("check", dsn(hostile))
    assert text.returncode == 1, text.stderr
    lines = text.stdout.splitlines()
    # one table row per finding: no name breaks a line
    rows = [line for line in lines if line.startswith("collision ")]
    assert len(rows) == len(CASES)
    for c in CASES:
        label = printable(f"{c.schema}.{c.table}.{c.column}")
        assert sum(label in row for row in rows) == 1, label
    assert (
        lines[-1] == f"checked {len(CASES)} columns in {len(CASES)} tables: {len(CASES)} collisions"
    )

    github = seqdrift("check", dsn(hostile), "--format", "github")
    assert github.returncode == 1, github.stderr
    *annotations, last = github.stdout.splitlines()
    assert last == lines[-1]
    titles = []
    for line in annotations:
        m = GH_LINE.fullmatch(line)
        assert m is not None, line
        titles.append((m[1], unescape(m[2])))
    assert sorted(titles) == sorted(
        ("error", f"sequence collision: {c.schema}.{c.table}.{c.column}") for c in CASES
    )


def test_the_fix_script_through_psql_fixes_all_and_drops_nothing(
    hostile: Conn, tmp_path: Path
) -> None:
    psql = psql_path()
    if psql is None:
        pytest.skip("needs psql to run the script as a person would")
    contents = table_contents(hostile)
    before = sequence_states(hostile)
    result = seqdrift("fix", dsn(hostile))
    assert result.returncode == 0, result.stderr
    assert sequence_states(hostile) == before  # printing the fix wrote nothing
    path = tmp_path / "fix.sql"
    path.write_text(result.stdout)
    ran = run_psql_file(psql, str(path), hostile)
    assert ran.returncode == 0, ran.stderr
    _fixed(hostile, contents, before)


def test_fix_apply_fixes_all_and_drops_nothing(hostile: Conn) -> None:
    contents = table_contents(hostile)
    before = sequence_states(hostile)
    result = seqdrift("fix", dsn(hostile), "--apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"moved {len(CASES)} sequences forward, in one transaction:" in result.stdout
    _fixed(hostile, contents, before)


def _fixed(db: Conn, contents: dict[str, str], before: dict[str, tuple[int, int, bool]]) -> None:
    __tracebackhide__ = True
    report = check(db)
    assert report.findings == []
    assert report.skipped == []
    assert len(report.checked) == len(CASES)
    assert table_contents(db) == contents  # y and every row still there
    assert db.execute("SELECT count(*) FROM y").fetchone() == (1,)
    after = sequence_states(db)
    assert after.keys() == before.keys()
    moved = [name for name in before if after[name] != before[name]]
    assert len(moved) == len(CASES)
    for name in moved:
        assert after[name][0] >= before[name][0]  # forward only
    # the next insert into each table works
    for c in CASES:
        db.execute(
            sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.Identifier(c.schema, c.table))
        )


# the cases whose names (or sequence's name) hold a %
PERCENT = [c for c in CASES if "%" in c.table + c.column + (c.sequence or "")]
assert len(PERCENT) == 3


def _probe_restores(db: Conn, mode: Mode, cases: list[Case]) -> None:
    __tracebackhide__ = True
    before, contents = sequence_states(db), table_contents(db)
    others = [c.table for c in CASES if c not in cases]
    result = probe(db, mode=mode, exclude_tables=others)
    assert sequence_states(db) == before
    assert table_contents(db) == contents
    assert result.disagreements == []
    seen = {
        (p.column.schema, p.column.table, p.column.column): (p.inserts_until_collision, p.value)
        for p in result.probed
    }
    want = expected()
    assert seen == {
        (c.schema, c.table, c.column): (
            want[c.schema, c.table, c.column][2],
            want[c.schema, c.table, c.column][1],
        )
        for c in cases
    }


@pytest.mark.parametrize("mode", ["insert", "default"])
def test_the_probe_puts_every_sequence_back_exactly(hostile: Conn, mode: Mode) -> None:
    _probe_restores(hostile, mode, [c for c in CASES if c not in PERCENT])


@pytest.mark.parametrize("mode", ["insert", "default"])
def test_the_probe_on_names_with_percent_signs(hostile: Conn, mode: Mode) -> None:
    _probe_restores(hostile, mode, PERCENT)


def test_snapshots_put_every_sequence_back_exactly(hostile: Conn) -> None:
    before_states = sequence_states(hostile)
    recorded = snapshot.read_states(hostile)
    assert {k.label for k in recorded} == {".".join(sequence_of(hostile, c)) for c in CASES}
    for c in CASES:
        hostile.execute(
            "SELECT nextval(%s::regclass)",
            [sql.Identifier(*sequence_of(hostile, c)).as_string(hostile)],
        )
    moved = snapshot.diff(recorded, snapshot.read_states(hostile))
    assert len(moved) == len(CASES)
    assert snapshot.restore(hostile, recorded) == len(CASES)
    assert sequence_states(hostile) == before_states
