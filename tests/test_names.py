"""Hostile names, all at once, on a real server.

Schemas, tables, columns and sequences named with double quotes, spaces, capitals,
unicode, reserved words, ``%``, ``%s``, ``{}`` and ``{0}`` (format-string traps), names of
63 bytes (NAMEDATALEN - 1) and one PostgreSQL truncated, a sequence whose name does not
follow ``<table>_<col>_seq``, a table named ``x"; DROP TABLE y; --``, one with a line
break in its name, and a schema, table, column and sequence whose names would clear the
terminal (ESC ``[2J``), return the carriage, break the line and ring the bell. Every one
is drifted; every one must be found with its exact name and numbers, in every output
format; no output for people may carry a name's control characters raw (the JSON keeps
the true names); the fix script run by ``psql -f`` and ``fix --apply`` must fix every
one and drop nothing; the probe and the snapshots must put every sequence back exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.cli import (
    dsn,
    psql_path,
    run_psql_file,
    seqdrift,
    sequence_states,
    table_contents,
)

from pytest_seqdrift import check, render, snapshot
from pytest_seqdrift.alembic import assert_revisions_consistent
from pytest_seqdrift.model import printable
from pytest_seqdrift.probe import Mode, probe

Conn = psycopg.Connection[Any]

SCHEMA = 'Sch "ema" Ünï'
OTHER_SCHEMA = "select"  # a reserved word as a schema
LONG_UNICODE = "ü" * 31 + "a"  # 63 bytes in UTF-8: the longest name PostgreSQL keeps
assert len(LONG_UNICODE.encode()) == 63
TOO_LONG = "long_" + "x" * 70  # PostgreSQL truncates it to 63 bytes
TRUNCATED = TOO_LONG[:63]
# clears the screen, returns the carriage, breaks the line, rings the bell
TERMINAL = "\x1b[2J\r\n\x07"


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
    Case(f"sch{TERMINAL}ema", f"tab{TERMINAL}le", f"co{TERMINAL}l", "default", f"se{TERMINAL}q"),
]
# every name that holds a character no terminal or log may get raw
UNPRINTABLE = sorted(
    {
        name
        for c in CASES
        for name in (c.schema, c.table, c.column, c.sequence or "")
        if name != printable(name)
    }
)
assert len(UNPRINTABLE) == 7


def assert_shown_clean(out: str, *, colour: bool = False) -> None:
    """No name reached ``out`` raw: no ESC (but our own colour), CR or BEL anywhere,
    and no name that holds a line break or a tab but as ``printable`` shows it."""
    __tracebackhide__ = True
    if colour:
        assert "\x1b[" in out
        out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for char in ("\x1b", "\r", "\x07"):
        assert char not in out, (char, out)
    for name in UNPRINTABLE:
        assert name not in out, (name, out)


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
    # the true names, JSON-escaped: nothing raw in the JSON text either
    assert_shown_clean(as_json.stdout)
    assert {f["sequence"] for f in out["findings"]} == {
        f.sequence.qualified for f in check(hostile).findings
    }

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
    assert_shown_clean(text.stdout + text.stderr)
    # each finding's block names it on its own line, as the table does
    for c in CASES:
        label = printable(f"{c.schema}.{c.table}.{c.column}")
        assert sum(line.startswith(f"  {label}  (sequence ") for line in lines) == 1, label

    github = seqdrift("check", dsn(hostile), "--format", "github")
    assert github.returncode == 1, github.stderr
    assert_shown_clean(github.stdout + github.stderr)
    *annotations, last = github.stdout.splitlines()
    assert last == lines[-1]
    titles = []
    for line in annotations:
        m = GH_LINE.fullmatch(line)
        assert m is not None, line
        titles.append((m[1], unescape(m[2])))
        message = unescape(m[3])
        # a line break of the message's own (before the fix), none from a name
        assert message.count("\n") == 1, message
        assert "\r" not in message
    assert sorted(titles) == sorted(
        ("error", printable(f"sequence collision: {c.schema}.{c.table}.{c.column}")) for c in CASES
    )


def test_colour_is_added_to_names_made_printable(hostile: Conn) -> None:
    out = render.for_terminal(check(hostile), colour=True)
    assert_shown_clean(out, colour=True)
    label = printable(f"{CASES[-1].schema}.{CASES[-1].table}.{CASES[-1].column}")
    assert f"  \x1b[1m{label}\x1b[0m  (sequence " in out


def test_the_assertion_message_shows_the_names_printable(
    hostile: Conn, assert_sequences_consistent: Any
) -> None:
    with pytest.raises(AssertionError) as raised:
        assert_sequences_consistent(hostile)
    message = str(raised.value)
    assert_shown_clean(message)
    assert message.startswith(f"sequence drift in {len(CASES)} columns:\n")
    for c in CASES:
        assert f"  {printable(f'{c.schema}.{c.table}.{c.column}')}  (sequence " in message


class Revisions:
    """pytest-alembic's runner as ``assert_revisions_consistent`` drives it: each call
    applies one revision (here: SQL run on the real database) and returns its id."""

    def __init__(self, db: Conn, revisions: list[tuple[str, str]]) -> None:
        self.db, self.todo = db, list(revisions)

    def migrate_up_one(self) -> str | None:
        if not self.todo:
            return None
        revision, statements = self.todo.pop(0)
        self.db.execute(statements)
        return revision


@pytest.mark.parametrize("every_revision", [False, True])
def test_the_alembic_helper_shows_names_and_revisions_printable(
    db: Conn, every_revision: bool
) -> None:
    c = CASES[-1]  # every name of it would clear the terminal
    table = sql.Identifier(c.schema, c.table)
    drift = sql.SQL(
        "CREATE SCHEMA {schema}; CREATE TABLE {table} ({column} serial PRIMARY KEY);"
        "INSERT INTO {table} VALUES (3)"
    ).format(schema=sql.Identifier(c.schema), table=table, column=sql.Identifier(c.column))
    revision = f"0002{TERMINAL}"  # an id is any string Alembic was given
    runner = Revisions(
        db,
        [("0001", "CREATE TABLE plain (id serial PRIMARY KEY)"), (revision, drift.as_string(db))],
    )
    with pytest.raises(AssertionError) as raised:
        assert_revisions_consistent(runner, db, every_revision=every_revision)
    message = str(raised.value)
    assert_shown_clean(message)
    assert printable(revision) in message
    assert f"  {printable(f'{c.schema}.{c.table}.{c.column}')}  (sequence " in message
    if every_revision:
        assert message.startswith(f"revision {printable(revision)} leaves sequence drift")
    else:
        assert message.startswith(
            f"revision {printable(revision)} introduced sequence drift that is still there "
            f"at the head ({printable(revision)}):"
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
    assert_shown_clean(result.stdout + result.stderr)
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
    assert_shown_clean(result.stdout + result.stderr)
    _fixed(hostile, contents, before)


def test_advice_on_hostile_names_is_commented_and_runs_once_uncommented(
    db: Conn, tmp_path: Path
) -> None:
    """Exhaustion is not fixed by setval: the ALTERs to consider are printed commented
    out. Their comments carry no name raw, yet uncommented they name the right objects
    (escaped as the setval statements are) and run."""
    psql = psql_path()
    if psql is None:
        pytest.skip("needs psql to run the script as a person would")
    c = CASES[-1]
    assert c.sequence is not None
    seq = sql.Identifier(c.schema, c.sequence)
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(c.schema)))
    db.execute(sql.SQL("CREATE SEQUENCE {} AS smallint").format(seq))
    db.execute(
        sql.SQL("CREATE TABLE {} ({} smallint PRIMARY KEY DEFAULT nextval({}))").format(
            sql.Identifier(c.schema, c.table),
            sql.Identifier(c.column),
            sql.Literal(seq.as_string(db)),
        )
    )
    db.execute("SELECT setval(%s::regclass, 32700)", [seq.as_string(db)])
    (finding,) = check(db).findings
    assert finding.kind == "exhaustion"

    result = seqdrift("fix", dsn(db))
    assert result.returncode == 0, result.stderr
    assert_shown_clean(result.stdout + result.stderr)
    advice = [
        line.removeprefix("-- ")
        for line in result.stdout.splitlines()
        if line.startswith("-- ALTER ")
    ]
    assert [a.split(" U&")[0] for a in advice] == ["ALTER TABLE", "ALTER SEQUENCE"]
    script = tmp_path / "fix.sql"
    script.write_text(result.stdout)  # as printed: nothing in it runs
    assert run_psql_file(psql, str(script), db).returncode == 0
    assert check(db).findings == [finding]
    uncommented = tmp_path / "widen.sql"
    uncommented.write_text("\n".join(advice) + "\n")
    ran = run_psql_file(psql, str(uncommented), db)
    assert ran.returncode == 0, ran.stderr
    assert check(db).findings == []


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


PLUGIN_PROJECT = '''
import pytest
from psycopg import sql

SCHEMA, TABLE, COLUMN = {names!r}


def drift(conn, at):
    """A table drifted to collide at id ``at``, committed: every name of it would
    clear the terminal."""
    conn.execute(sql.SQL("CREATE SCHEMA {{}}").format(sql.Identifier(SCHEMA)))
    table = sql.Identifier(SCHEMA, TABLE)
    column = sql.Identifier(COLUMN)
    conn.execute(sql.SQL("CREATE TABLE {{}} ({{}} serial PRIMARY KEY)").format(table, column))
    conn.execute(sql.SQL("INSERT INTO {{}} VALUES ({{}})").format(table, at))
    conn.commit()


@pytest.fixture
def seeded(postgresql):
    drift(postgresql, 4)
    return postgresql


@pytest.mark.seqdrift
def test_migration(postgresql):
    drift(postgresql, 3)


def test_set_up_drifted(seeded):
    pass


def test_asserts(postgresql, assert_sequences_consistent):
    drift(postgresql, 5)
    assert_sequences_consistent()
'''


def test_the_plugin_shows_the_names_printable(pytester: pytest.Pytester) -> None:
    """The failure of a migration test, the error at a drifted set-up, the assertion
    message and the summary (also at -v): every name printable; the report file keeps
    the true names."""
    c = CASES[-1]
    pytester.copy_example("seed_story/conftest.py")
    pytester.makepyfile(PLUGIN_PROJECT.format(names=(c.schema, c.table, c.column)))
    result = pytester.runpytest(
        "-W", "ignore::pytest.PytestAssertRewriteWarning", "--color=no", "-v",
        "--seqdrift", "--seqdrift-report=drift.json",
    )  # fmt: skip
    result.assert_outcomes(failed=2, errors=1)
    out = result.stdout.str() + result.stderr.str()
    assert_shown_clean(out)
    label = printable(f"{c.schema}.{c.table}.{c.column}")
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_set_up_drifted*",
            "pytest-seqdrift: sequence drift in the set-up of fixture postgresql *",
            f"  {label}  (sequence *",
            "*_ test_migration _*",
            f"  {label}  (sequence *",
            "*_ test_asserts _*",
            f"E  *  {label}  (sequence *",
            "*= sequence drift (pytest-seqdrift) =*",
            "set-up of fixture postgresql *",
            f"  {label}: next value 1; 3 inserts succeed, the 4th collides with existing "
            f"{printable(c.column)} 4*",
            f"test_the_plugin_shows_the_names_printable.py::test_migration: {label}: *",
            f"note: *: {label}: *",
        ]
    )
    report = json.loads((pytester.path / "drift.json").read_text())
    assert [(f["schema"], f["table"], f["column"]) for f in report["findings"]] == [
        (c.schema, c.table, c.column)
    ] * 2
