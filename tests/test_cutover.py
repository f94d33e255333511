"""Cutovers (``--source``): a target's sequences compared with the source it was copied
from, and fixed from it. Real servers only: two databases on the suite's server for the
arithmetic, and two clusters with logical replication between them for the pre-flight."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.cli import Conn, clean_env, dsn, login_role, one_line, seqdrift

from pytest_seqdrift import cutover, fix
from pytest_seqdrift.model import Compared, Cutover
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.testbed import find_server, throwaway_server


@pytest.fixture
def source(db: Conn) -> Iterator[Conn]:
    """A second database on the same server, the target being ``db``."""
    name = f"seqdrift_source_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(dsn(db, dbname=name), autocommit=True) as conn:
            yield conn
    finally:
        db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def both(source: Conn, target: Conn, statements: str) -> None:
    for conn in (source, target):
        conn.execute(statements)


def entry(cut: Cutover, sequence: str) -> Compared:
    (found,) = [c for c in cut.compared if c.sequence == sequence]
    return found


def true_next(conn: Conn, sequence: str) -> int | None:
    """The value the sequence's next ``nextval`` really returns (None: it fails, the
    sequence is exhausted); the sequence is put back afterwards."""
    ident = sql.Identifier(*sequence.split("."))
    ((last, called),) = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}").format(ident)
    ).fetchall()
    try:
        ((value,),) = conn.execute("SELECT nextval(%s::regclass)", [sequence]).fetchall()
    except psycopg.errors.SequenceGeneratorLimitExceeded:
        return None
    conn.execute("SELECT setval(%s::regclass, %s, %s)", [sequence, last, called])
    return int(value)


# --- the class of sequence shapes -------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    options: str  # CREATE SEQUENCE s <options>
    source_calls: int
    target_calls: int
    source_setval: str = ""  # then, at the source: SELECT setval('s', ...)

    def __str__(self) -> str:
        return f"{self.options or 'default'}/{self.source_calls}/{self.target_calls}{self.source_setval}"


SHAPES = [
    Shape("", 10, 0),
    Shape("", 10, 10),  # level with the source
    Shape("", 10, 25),  # ahead of it: never moved back
    Shape("", 0, 0),  # neither ever called
    Shape("INCREMENT 5", 7, 2),
    Shape("INCREMENT 5 START 3", 1, 0),
    Shape("INCREMENT -1", 10, 3),
    Shape("INCREMENT -3 START -2", 4, 0),
    Shape("AS smallint", 300, 1),
    Shape("START 1000", 0, 0),
    Shape("START 1000", 5, 0),
    Shape("", 0, 0, "50, false"),  # restored by pg_dump as not yet called
    Shape("", 0, 0, "50, true"),
    Shape("MAXVALUE 10", 10, 0),  # the source is exhausted
    Shape("MAXVALUE 10 CYCLE", 13, 0),  # the source has wrapped
    Shape("INCREMENT -1 MINVALUE -10 MAXVALUE -1", 10, 2),  # exhausted, going down
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_shape_is_judged_and_fixed_by_real_nextval(
    db: Conn, source: Conn, shape: Shape
) -> None:
    both(source, db, f"CREATE SEQUENCE s {shape.options}")
    for conn, calls in ((source, shape.source_calls), (db, shape.target_calls)):
        if calls:
            conn.execute("SELECT nextval('s') FROM generate_series(1, %s)", [calls])
    if shape.source_setval:
        source.execute(f"SELECT setval('s', {shape.source_setval})")
    src_next, tgt_next = true_next(source, "public.s"), true_next(db, "public.s")
    ascending = "INCREMENT -" not in shape.options

    def further(a: int, b: int) -> bool:
        return a > b if ascending else a < b

    cut = cutover.compare(db, source, CheckOptions())
    c = entry(cut, "public.s")
    assert (c.next_value, c.source_next_value) == (tgt_next, src_next)
    # an exhausted source has handed out everything up to its limit
    beyond = src_next
    if beyond is None:
        ((limit, inc),) = source.execute(
            "SELECT seqmax, seqincrement FROM pg_sequence WHERE seqrelid = 's'::regclass"
            if ascending
            else "SELECT seqmin, seqincrement FROM pg_sequence WHERE seqrelid = 's'::regclass"
        ).fetchall()
        beyond = limit + inc
    behind = tgt_next is not None and further(beyond, tgt_next)
    assert c.status == ("behind" if behind else "ok"), c
    if behind:
        assert tgt_next is not None
        assert c.behind_by == abs(beyond - tgt_next)
    if "CYCLE" in shape.options:
        assert c.note
        assert "cycles" in c.note

    fix.apply(db, CheckOptions(), source=source)
    after = true_next(db, "public.s")
    if not behind:
        assert after == tgt_next  # never moved: not back, not needlessly on
    elif fix_reaches := (
        beyond <= (10 if "MAXVALUE 10" in shape.options else 2**63)
        if ascending
        else beyond >= (-10 if "MINVALUE -10" in shape.options else -(2**63))
    ):
        assert after == beyond, (after, beyond)  # exactly the source's next: no gap
    else:
        assert fix_reaches is False
        assert after == tgt_next
    again = entry(cutover.compare(db, source, CheckOptions()), "public.s")
    assert again.status == ("behind" if behind and not fix_reaches else "ok")

    # a margin: the source's next value that much further on, however far the sequence
    # stood (level with the source too), as far as its range allows; never back
    ((lo, hi),) = db.execute(
        "SELECT seqmin, seqmax FROM pg_sequence WHERE seqrelid = 's'::regclass"
    ).fetchall()
    for margin in (7, 2**62):
        now = true_next(db, "public.s")
        fix.apply(db, CheckOptions(), source=source, margin=margin)
        moved = true_next(db, "public.s")
        if not lo <= beyond <= hi:  # the source's next lies past the target's limit
            assert moved == now
            continue
        wanted = min(beyond + margin, hi) if ascending else max(beyond - margin, lo)
        assert now is not None
        assert moved == (wanted if further(wanted, now) else now), (margin, now, moved)


# --- the command ------------------------------------------------------------------------

COPIED = """
CREATE TABLE orders (id bigserial PRIMARY KEY, note text);
CREATE TABLE events (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
CREATE SEQUENCE invoice_number;
"""


def _copy_rows(source: Conn, target: Conn) -> None:
    """What a replication or a data-only copy leaves: the rows, not the sequences."""
    source.execute("INSERT INTO orders (note) SELECT 'o' FROM generate_series(1, 100)")
    source.execute("DELETE FROM orders WHERE id > 60")  # the source's highest ids are gone
    source.execute("INSERT INTO events DEFAULT VALUES")
    source.execute("INSERT INTO events DEFAULT VALUES")
    source.execute("DELETE FROM events")  # an empty table: its own check sees nothing
    source.execute("SELECT nextval('invoice_number') FROM generate_series(1, 40)")
    target.execute("INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 60) AS g")


def test_check_source_reports_what_the_targets_own_check_cannot_see(db: Conn, source: Conn) -> None:
    both(source, db, COPIED)
    _copy_rows(source, db)
    alone = json.loads(seqdrift("check", dsn(db), "--format", "json").stdout)
    assert [(f["kind"], f["table"]) for f in alone["findings"]] == [("collision", "orders")]

    run = seqdrift("check", dsn(db), "--source", dsn(source), "--format", "json")
    assert run.returncode == 1, run.stderr
    out = json.loads(run.stdout)
    kinds = [(f["kind"], f["sequence"]) for f in out["findings"]]
    assert kinds == [
        ("collision", "public.orders_id_seq"),
        ("behind", "public.events_id_seq"),
        ("behind", "public.invoice_number"),
        ("behind", "public.orders_id_seq"),
    ]
    behind = {f["sequence"]: f for f in out["findings"] if f["kind"] == "behind"}
    assert behind["public.events_id_seq"] | {"fix_sql": ""} == {
        "kind": "behind",
        "schema": "public",
        "table": "events",
        "column": "id",
        "sequence": "public.events_id_seq",
        "source_sequence": "public.events_id_seq",
        "next_value": 1,
        "source_next_value": 3,
        "behind_by": 2,
        "columns": ["public.events.id"],
        "fix_sql": "",
    }
    invoice = behind["public.invoice_number"]
    assert (invoice["table"], invoice["column"], invoice["columns"]) == (None, None, [])
    assert (invoice["next_value"], invoice["source_next_value"]) == (1, 41)
    assert behind["public.orders_id_seq"]["behind_by"] == 100
    assert {c["status"] for c in out["compared"]} == {"behind"}
    assert out["subscriptions"] == []
    assert out["source"].startswith("database seqdrift_source_")

    text = seqdrift("check", dsn(db), "--source", dsn(source))
    assert text.returncode == 1
    assert (
        "public.invoice_number (backs no column): next value 1, the source's 41: 40 values behind"
        in text.stdout
    )
    assert text.stdout.strip().splitlines()[-1] == "compared 3 sequences with the source: 3 behind"
    gh = seqdrift("check", dsn(db), "--source", dsn(source), "--format", "github").stdout
    assert gh.count("::error title=sequence behind") == 3
    # --fail-on leaves the new kinds out when asked
    assert (
        seqdrift("check", dsn(db), "--source", dsn(source), "--fail-on", "missing").returncode == 0
    )


def test_fix_source_moves_each_sequence_to_the_sources_and_inserts_prove_it(
    db: Conn, source: Conn
) -> None:
    both(source, db, COPIED)
    _copy_rows(source, db)
    printed = seqdrift("fix", dsn(db), "--source", dsn(source))
    assert printed.returncode == 0, printed.stderr
    assert (
        "-- public.orders_id_seq: next value 1 -> 101 (the source's next value 101, public.orders.id: max 60)"
        in printed.stdout
    )
    assert true_next(db, "public.orders_id_seq") == 1  # printing changes nothing

    run = seqdrift("fix", dsn(db), "--source", dsn(source), "--apply")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "moved 3 sequences forward, in one transaction:" in run.stdout
    # the next ids are the source's next ones: none it ever handed out comes again
    assert db.execute("INSERT INTO orders (note) VALUES ('new') RETURNING id").fetchone() == (101,)
    assert db.execute("INSERT INTO events DEFAULT VALUES RETURNING id").fetchone() == (3,)
    assert db.execute("SELECT nextval('invoice_number')").fetchone() == (41,)
    again = seqdrift("check", dsn(db), "--source", dsn(source))
    assert again.returncode == 0, again.stdout


def test_fix_source_goes_past_the_tables_max_when_that_is_further(db: Conn, source: Conn) -> None:
    both(source, db, COPIED)
    source.execute("SELECT nextval('orders_id_seq') FROM generate_series(1, 5)")
    db.execute("INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 30) AS g")
    db.execute("SELECT setval('invoice_number', 900)")  # ahead of the source: stays
    run = seqdrift("fix", dsn(db), "--source", dsn(source), "--apply", "--margin", "10")
    assert run.returncode == 0, run.stdout + run.stderr
    assert db.execute("INSERT INTO orders (note) VALUES ('new') RETURNING id").fetchone() == (41,)
    assert true_next(db, "public.invoice_number") == 901


def test_sequences_on_one_side_only_and_a_renamed_schema(db: Conn, source: Conn) -> None:
    source.execute("CREATE SCHEMA old; CREATE SEQUENCE old.ticket; CREATE SEQUENCE gone")
    source.execute("SELECT nextval('old.ticket') FROM generate_series(1, 9)")
    db.execute('CREATE SCHEMA "New"; CREATE SEQUENCE "New".ticket; CREATE SEQUENCE fresh')
    plain = json.loads(
        seqdrift("check", dsn(db), "--source", dsn(source), "--format", "json").stdout
    )
    missing = sorted((f["sequence"], f["missing_on"]) for f in plain["findings"])
    assert missing == [
        ('"New".ticket', "source"),
        ("old.ticket", "target"),
        ("public.fresh", "source"),
        ("public.gone", "target"),
    ]
    mapped = seqdrift(
        "check", dsn(db), "--source", dsn(source), "--map-schema", "old=New", "--format", "json"
    )
    out = json.loads(mapped.stdout)
    by = {c["sequence"]: c for c in out["compared"]}
    assert by['"New".ticket']["status"] == "behind"
    assert by['"New".ticket']["source_sequence"] == "old.ticket"
    assert by['"New".ticket']["behind_by"] == 9
    assert {c["sequence"] for c in out["compared"] if c["status"].startswith("missing")} == {
        "public.fresh",
        "public.gone",
    }
    # missing sequences are findings (exit 1), never fixed: the script says so
    script = seqdrift("fix", dsn(db), "--source", dsn(source), "--map-schema", "old=New").stdout
    assert "-- not fixed here: public.gone: missing on the target" in script
    assert "setval('\"New\".ticket'" in script


@pytest.mark.parametrize(
    ("shape", "target", "wanted"),
    [
        ("AS integer", "AS bigint", 2**31),  # the source's own limit, not the target's
        ("AS integer INCREMENT -1", "AS bigint INCREMENT -1", -(2**31) - 1),
        ("AS smallint", "AS integer", 2**15),
    ],
)
def test_an_exhausted_source_is_passed_by_its_own_limit(
    db: Conn, source: Conn, shape: str, target: str, wanted: int
) -> None:
    """A source whose type is narrower than the target's, run out: the target goes one
    step past the source's limit, which its own wider range reaches."""
    source.execute(f"CREATE SEQUENCE s {shape}")
    end = "seqmin" if "-1" in shape else "seqmax"
    source.execute(
        f"SELECT setval('s', (SELECT {end} FROM pg_sequence WHERE seqrelid = 's'::regclass))"
    )
    db.execute(f"CREATE SEQUENCE s {target}")
    assert true_next(source, "public.s") is None  # exhausted
    c = entry(cutover.compare(db, source, CheckOptions()), "public.s")
    assert c.status == "behind"
    assert c.source_beyond == wanted
    fix.apply(db, CheckOptions(), source=source)
    assert true_next(db, "public.s") == wanted


def test_a_table_that_cannot_be_read_keeps_its_sequence_where_it_is(db: Conn, source: Conn) -> None:
    both(source, db, COPIED)
    _copy_rows(source, db)
    with psycopg.connect(dsn(db)) as holder:
        holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        lock = ["--lock-timeout", "200"]
        printed = seqdrift("fix", dsn(db), "--source", dsn(source), *lock)
        assert printed.returncode == 0, printed.stderr
        assert "-- behind the source, not moved: public.orders_id_seq" in printed.stdout
        assert "setval('public.orders_id_seq'" not in printed.stdout
        assert "setval('public.invoice_number'" in printed.stdout  # the rest still planned
        refused = seqdrift("fix", dsn(db), "--source", dsn(source), "--apply", *lock)
        assert refused.returncode == 2, refused.stdout
        assert refused.stdout == ""
        assert one_line(refused.stderr).startswith(
            "seqdrift: cannot fix: cannot read public.orders, which public.orders_id_seq feeds: "
        )
        assert "nothing was changed" in refused.stderr
    assert true_next(db, "public.orders_id_seq") == 1
    assert true_next(db, "public.invoice_number") == 1  # not one sequence moved


def test_excluded_tables_leave_their_sequences_out(db: Conn, source: Conn) -> None:
    both(source, db, COPIED + "CREATE TABLE shared (id int DEFAULT nextval('invoice_number'));")
    _copy_rows(source, db)
    run = seqdrift(
        "check", dsn(db), "--source", dsn(source), "--exclude-table", "orders", "--format", "json"
    )
    names = {c["sequence"] for c in json.loads(run.stdout)["compared"]}
    # invoice_number: the table using it is not excluded
    assert names == {"public.events_id_seq", "public.invoice_number"}
    fixed = seqdrift(
        "fix", dsn(db), "--source", dsn(source), "--exclude-table", "public.ord*", "--apply"
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert true_next(db, "public.orders_id_seq") == 1  # left alone
    assert true_next(db, "public.events_id_seq") == 3
    both_out = seqdrift(
        "check", dsn(db), "--source", dsn(source), "--exclude-table", "shared", "--format", "json"
    )
    names = {c["sequence"] for c in json.loads(both_out.stdout)["compared"]}
    assert "public.invoice_number" not in names  # every table using it is left out


def test_nothing_behind_is_one_line_naming_the_source(db: Conn, source: Conn) -> None:
    both(source, db, "CREATE SEQUENCE s INCREMENT 10")
    run = seqdrift("check", dsn(db), "--source", dsn(source))
    assert run.returncode == 0, run.stdout
    last = run.stdout.strip().splitlines()
    assert last[-1].startswith("compared 1 sequence with the source (database seqdrift_source_")
    assert last[-1].endswith("): none behind")
    assert not any(line.startswith("compared with the source,") for line in last)
    source.execute("SELECT nextval('s') FROM generate_series(1, 4)")
    behind = seqdrift("check", dsn(db), "--source", dsn(source)).stdout
    assert "next value 1, the source's 41: 40 values behind (4 nextval() calls of 10)" in behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--source", "{tgt}"],
            "seqdrift: cannot check: the source and the target are one database",
        ),
        (["--fail-on", "collision,behind"], "seqdrift: cannot check: --fail-on behind needs"),
        (
            ["--source", "host=127.0.0.1 port=1"],
            "seqdrift: cannot connect to the source: connection refused",
        ),
        (["--source", " "], "seqdrift: cannot connect to the source: --source needs a DSN"),
        (["--map-schema", "a=b"], "seqdrift: cannot check: --map-schema needs --source"),
        (
            ["--source", "{src}", "--map-schema", "nope=public"],
            "seqdrift: cannot check: no schema named nope in the source's",
        ),
        (
            ["--source", "{src}", "--map-schema", "public=nope"],
            "seqdrift: cannot check: no schema named nope in database",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    db: Conn, source: Conn, args: list[str], message: str
) -> None:
    db.execute("CREATE SEQUENCE s")
    argv = [a.replace("{src}", dsn(source)).replace("{tgt}", dsn(db)) for a in args]
    for command in ("check", "fix"):
        run = seqdrift(command, dsn(db), *argv, "--apply" if command == "fix" else "--verbose")
        assert run.returncode == 2, run
        assert one_line(run.stderr).startswith(message)
        assert run.stdout == ""
    assert true_next(db, "public.s") == 1


def test_bad_map_schema_is_a_usage_error() -> None:
    run = seqdrift("check", "--source", "x", "--map-schema", "nosign")
    assert run.returncode == 2
    assert "expected SOURCE=TARGET" in run.stderr


def test_a_source_sequence_the_role_cannot_read_is_skipped_and_the_rest_compared(
    db: Conn, source: Conn
) -> None:
    both(source, db, "CREATE SEQUENCE readable; CREATE SEQUENCE secret")
    source.execute("SELECT nextval('readable') FROM generate_series(1, 3)")
    with login_role(source) as role:
        source.execute(
            sql.SQL("GRANT SELECT ON SEQUENCE readable TO {}").format(sql.Identifier(role))
        )
        run = seqdrift("check", dsn(db), "--source", dsn(source, user=role), "--format", "json")
        assert run.returncode == 1, run.stderr
        by = {c["sequence"]: c for c in json.loads(run.stdout)["compared"]}
        assert by["public.readable"]["status"] == "behind"
        assert by["public.secret"]["status"] == "skipped"
        assert "permission denied" in by["public.secret"]["note"]
        source.execute(
            sql.SQL("REVOKE SELECT ON SEQUENCE readable FROM {}").format(sql.Identifier(role))
        )
        none = seqdrift("check", dsn(db), "--source", dsn(source, user=role))
        assert none.returncode == 2
        assert "cannot read the source's sequences" in one_line(none.stderr)


def test_concurrent_writes_at_the_source_make_no_false_finding(db: Conn, source: Conn) -> None:
    both(source, db, COPIED)
    db.execute("SELECT setval('orders_id_seq', 1000000000)")
    db.execute("SELECT setval('invoice_number', 1000000000)")
    db.execute("SELECT setval('events_id_seq', 1000000000)")
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with psycopg.connect(dsn(source), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders (note) VALUES ('w')")
                conn.execute("SELECT nextval('invoice_number')")
                written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(10):
            seen = written[0]
            cut = cutover.compare(db, source, CheckOptions())
            assert not cut.differences, cut.differences
            assert cut.report.ok
            assert {c.status for c in cut.compared} == {"ok"}
        assert written[0] > seen  # the writes did go on while it read
    finally:
        stop.set()
        writer.join()
    # and with the target level with the source, what it reports was true when read
    db.execute("SELECT setval('orders_id_seq', 1, false)")
    stop.clear()
    writer = threading.Thread(target=write)
    writer.start()
    try:
        cut = cutover.compare(db, source, CheckOptions())
    finally:
        stop.set()
        writer.join()
    c = entry(cut, "public.orders_id_seq")
    assert c.status == "behind"
    assert c.source_next_value is not None
    now = true_next(source, "public.orders_id_seq")
    assert now is not None
    assert c.source_next_value <= now


def test_pg_dump_data_only_of_chosen_tables(db: Conn, source: Conn, tmp_path: Any) -> None:
    bindir = find_server().bindir
    pg_dump, psql = (os.path.join(bindir, tool) for tool in ("pg_dump", "psql"))
    if not (os.access(pg_dump, os.X_OK) and os.access(psql, os.X_OK)):
        pytest.skip(f"pg_dump and psql are not in {bindir}")
    both(source, db, COPIED + "CREATE TABLE notes (id serial PRIMARY KEY);")
    _copy_rows(source, db)
    db.execute("TRUNCATE orders")
    source.execute("INSERT INTO notes SELECT FROM generate_series(1, 20)")
    dump = tmp_path / "chosen.sql"
    for tool, *args in (
        (pg_dump, "--data-only", "--table=orders", "--table=notes", "-f", str(dump), dsn(source)),
        (psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump), dsn(db)),
    ):
        done = subprocess.run(
            [tool, *args], capture_output=True, text=True, env=clean_env(), check=False
        )
        assert done.returncode == 0, done.stderr
    out = json.loads(seqdrift("check", dsn(db), "--source", dsn(source), "--format", "json").stdout)
    by = {c["sequence"]: c["status"] for c in out["compared"]}
    # pg_dump carries the state of the chosen tables' own sequences, not the others'
    assert by == {
        "public.events_id_seq": "behind",
        "public.invoice_number": "behind",
        "public.notes_id_seq": "ok",
        "public.orders_id_seq": "ok",
    }
    assert seqdrift("fix", dsn(db), "--source", dsn(source), "--apply").returncode == 0
    assert db.execute("SELECT nextval('invoice_number')").fetchone() == (41,)
    assert db.execute("INSERT INTO events DEFAULT VALUES RETURNING id").fetchone() == (3,)


# --- logical replication between two clusters -------------------------------------------

LOGICAL = "-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4"


def _wait(conn: Conn, query: str, want: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := conn.execute(query).fetchall()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got!r} after {timeout} s, wanted {want!r}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[str, str]]:
    with (
        throwaway_server("shop", LOGICAL) as publisher,
        throwaway_server("shop", LOGICAL) as subscriber,
    ):
        yield publisher, subscriber


def test_logical_replication_cutover(clusters: tuple[str, str]) -> None:
    publisher, subscriber = clusters
    with (
        psycopg.connect(publisher, autocommit=True) as src,
        psycopg.connect(subscriber, autocommit=True) as tgt,
    ):
        both(src, tgt, COPIED)
        src.execute("CREATE PUBLICATION shop FOR TABLE orders, events")
        tgt.execute(
            sql.SQL("CREATE SUBSCRIPTION shop CONNECTION {} PUBLICATION shop").format(
                sql.Literal(publisher)
            )
        )
        _wait(
            tgt, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", [(0,)], "sync"
        )
        src.execute("INSERT INTO orders (note) SELECT 'o' FROM generate_series(1, 100)")
        src.execute("DELETE FROM orders WHERE id > 60")
        src.execute("INSERT INTO events DEFAULT VALUES; INSERT INTO events DEFAULT VALUES")
        src.execute("DELETE FROM events")
        src.execute("SELECT nextval('invoice_number') FROM generate_series(1, 40)")
        _wait(tgt, "SELECT count(*), max(id) FROM orders", [(60, 60)], "caught up")
        _wait(tgt, "SELECT count(*) FROM events", [(0,)], "caught up")

        # before the cutover: the subscription is there, enabled, and the fix waits
        run = seqdrift("check", subscriber, "--source", publisher, "--format", "json")
        assert run.returncode == 1, run.stderr
        out = json.loads(run.stdout)
        (sub,) = out["subscriptions"]
        assert sub["name"] == "shop"
        assert sub["enabled"]
        assert sub["slot_on_source"]
        assert sub["tables"] == ["public.events", "public.orders"]
        assert sub["tables_not_ready"] == 0
        assert isinstance(sub["lag_bytes"], int)
        assert sub["refresh_sequences"] is False
        assert {c["sequence"]: c["status"] for c in out["compared"]} == {
            "public.events_id_seq": "behind",
            "public.invoice_number": "behind",
            "public.orders_id_seq": "behind",
        }
        text = seqdrift("check", subscriber, "--source", publisher).stdout
        assert "subscription shop: enabled" in text
        gh = seqdrift("check", subscriber, "--source", publisher, "--format", "github").stdout
        assert "::warning title=subscription shop::subscription shop: enabled" in gh
        assert (
            "sequences of its tables behind the source: public.events_id_seq, public.orders_id_seq"
            in text
        )
        assert "ALTER SUBSCRIPTION shop DISABLE" in text
        script = seqdrift("fix", subscriber, "--source", publisher).stdout
        assert "-- WARNING: subscription shop is still enabled on this database" in script
        refused = seqdrift("fix", subscriber, "--source", publisher, "--apply")
        assert refused.returncode == 2
        assert refused.stdout == ""
        assert "subscription shop is still enabled on the target" in one_line(refused.stderr)
        assert true_next(tgt, "public.orders_id_seq") == 1  # nothing was changed
        asked = seqdrift(
            "fix", subscriber, "--source", publisher, "--apply", "--despite-subscriptions"
        )
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert "moved 3 sequences forward" in asked.stdout

        # the cutover: writes stop, the subscription goes, the sequences follow
        tgt.execute("ALTER SUBSCRIPTION shop DISABLE")
        tgt.execute("ALTER SUBSCRIPTION shop SET (slot_name = NONE)")
        tgt.execute("DROP SUBSCRIPTION shop")
        src.execute("SELECT pg_drop_replication_slot('shop')")
        done = seqdrift("fix", subscriber, "--source", publisher, "--apply")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing to move" in done.stdout  # moved already, when asked
        assert tgt.execute("INSERT INTO orders (note) VALUES ('x') RETURNING id").fetchone() == (
            101,
        )
        assert tgt.execute("INSERT INTO events DEFAULT VALUES RETURNING id").fetchone() == (3,)
        assert tgt.execute("SELECT nextval('invoice_number')").fetchone() == (41,)
        assert seqdrift("check", subscriber, "--source", publisher).returncode == 0


def test_replication_state_the_role_cannot_read_is_said_and_stops_the_fix(
    db: Conn, source: Conn
) -> None:
    both(source, db, "CREATE SEQUENCE s")
    source.execute("SELECT nextval('s') FROM generate_series(1, 5)")
    db.execute("REVOKE SELECT ON pg_stat_subscription FROM PUBLIC")  # this database's view
    with login_role(db) as role:
        db.execute(sql.SQL("GRANT SELECT, UPDATE ON SEQUENCE s TO {}").format(sql.Identifier(role)))
        target = dsn(db, user=role)
        run = seqdrift("check", target, "--source", dsn(source), "--format", "json")
        assert run.returncode == 1, run.stderr
        out = json.loads(run.stdout)
        (why,) = out["unread"]
        assert why.startswith("could not read the target's subscriptions: permission denied")
        assert [c["status"] for c in out["compared"]] == ["behind"]  # the rest still compared
        text = seqdrift("check", target, "--source", dsn(source)).stdout
        assert "could not read the target's subscriptions" in text
        refused = seqdrift("fix", target, "--source", dsn(source), "--apply")
        assert refused.returncode == 2
        assert "a subscription may still be enabled" in one_line(refused.stderr)
        assert true_next(db, "public.s") == 1
        asked = seqdrift(
            "fix", target, "--source", dsn(source), "--apply", "--despite-subscriptions"
        )
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert true_next(db, "public.s") == 6
