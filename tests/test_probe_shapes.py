"""The probe on the shapes an outside corpus saw it get wrong, each class in several
variants: triggers and rules that draw from the column's sequence, BEFORE INSERT
triggers that decide the id, columns whose verdict has no max (domains, text),
deferrable keys, and errors in one column's probe.

The numbers are PostgreSQL's own: each shape is also inserted into for real, one row
per INSERT as an application inserts (``one_row_inserts``), and the probe must report
what those INSERTs did. Every probe leaves every sequence, row, index and constraint as
it was (``unchanged``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors
from support.probe import MODES, checked_for, collision_for, numbers, probed_for, saw, unchanged

from pytest_seqdrift import check, snapshot
from pytest_seqdrift.probe import Mode, probe
from pytest_seqdrift.probe import table as probe_table

Conn = psycopg.Connection[Any]

# -- the truth: an application's INSERTs -----------------------------------------------


@dataclass(frozen=True)
class Truth:
    stored: list[int]  # what the INSERTs that went in stored
    collided: int | None  # the value the next one failed on; None: none failed

    @property
    def seen(self) -> tuple[int | None, int | None, int | None]:
        """(first value stored or tried, colliding value, inserts that succeed)"""
        if self.collided is None:
            return (self.stored[0] if self.stored else None, None, None)
        first = self.stored[0] if self.stored else self.collided
        return first, self.collided, len(self.stored)


def _key_value(exc: errors.UniqueViolation) -> int:
    """The integer among the violated key's values: "Key (region, id)=(eu, 7) ..."."""
    found = re.search(r"\)=\((.*)\)", exc.diag.message_detail or "")
    assert found, exc
    return next(int(v) for v in found.group(1).split(", ") if re.fullmatch(r"-?\d+", v))


@contextmanager
def rolled_back(db: Conn, *, immediate: bool = False) -> Iterator[None]:
    """A transaction rolled back, every sequence put back after: nothing stays.
    ``immediate``: deferred keys checked at once, as an autocommit INSERT has them
    checked at its COMMIT."""
    before = snapshot.read_states(db)
    try:
        with db.transaction(force_rollback=True):
            if immediate:
                db.execute("SET CONSTRAINTS ALL IMMEDIATE")
            yield
    finally:
        snapshot.restore(db, before)


def one_row_inserts(
    db: Conn, insert: str, *, top: int, step: int = 1, immediate: bool = False, limit: int = 300
) -> Truth:
    """Run ``insert`` (one row, its id left to the default, ``RETURNING`` the id) until
    one fails on a unique key, or one stores a value past ``top``."""
    stored: list[int] = []
    with rolled_back(db, immediate=immediate):
        for _ in range(limit):
            try:
                with db.transaction():
                    ((value,),) = db.execute(insert).fetchall()
            except errors.UniqueViolation as exc:
                return Truth(stored, _key_value(exc))
            stored.append(int(value))
            if (int(value) - top) * step > 0:
                return Truth(stored, None)
    raise AssertionError(f"{limit} inserts did not pass {top}")  # pragma: no cover


def multi_row_insert(db: Conn, insert: str) -> int | None:
    """One multi-row INSERT: the value it fails on, None if it goes in."""
    with rolled_back(db, immediate=True):
        try:
            with db.transaction():
                db.execute(insert)
        except errors.UniqueViolation as exc:
            return _key_value(exc)
    return None


@dataclass(frozen=True)
class Shape:
    id: str
    sql: str
    insert: str  # one row, the id left to its default, RETURNING it
    top: int  # the highest existing value (the lowest, for a negative increment)
    table: str = "t"
    step: int = 1


def expect_probe_to_tell_the_truth(db: Conn, shape: Shape, mode: Mode = "insert") -> Any:
    """Probe, and compare its finding with what the INSERTs did."""
    __tracebackhide__ = True
    truth = one_row_inserts(db, shape.insert, top=shape.top, step=shape.step)
    with unchanged(db):
        result = probe(db, mode=mode)
    f = collision_for(result.report, shape.table)
    first, collided, until = truth.seen
    if collided is None:
        assert f is None, f
    else:
        assert f is not None
        assert numbers(f) == (first, collided, until, shape.top)
    p = probed_for(result, shape.table)
    assert (p.first_value, p.value, p.inserts_until_collision) == (first, collided, until)
    return result


def expect_the_fix_to_fix(db: Conn, shape: Shape, fix_sql: str) -> None:
    """The finding's fix, run for real: the INSERTs pass every existing value."""
    __tracebackhide__ = True
    before = snapshot.read_states(db)
    try:
        db.execute(fix_sql)
        assert one_row_inserts(db, shape.insert, top=shape.top, step=shape.step).collided is None
    finally:
        snapshot.restore(db, before)


# -- 1. triggers and rules that draw from the same sequence ----------------------------

SEEDED = """
    CREATE TABLE t (id serial PRIMARY KEY, v int);
    INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);
"""
AUDIT = """
    CREATE FUNCTION audit_t() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO audit (t_id) VALUES (NEW.id); RETURN NULL; END $$;
"""
DRAW = """
    CREATE FUNCTION draw() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM nextval('t_id_seq'); RETURN NULL; END $$;
"""
INSERT_T = "INSERT INTO t (v) VALUES (0) RETURNING id"

# One row per INSERT, something else draws from t_id_seq between the rows: the ids go
# 1, 3, 5 and the 4th insert meets id 7 -- where a multi-row INSERT stores 1 .. 7.
DRAWING = [
    Shape(
        "after-row-trigger-audit",  # the audit row's id comes from the same sequence
        SEEDED
        + AUDIT
        + """CREATE TABLE audit (id int PRIMARY KEY DEFAULT nextval('t_id_seq'), t_id int);
             CREATE TRIGGER audit_t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_t();""",
        INSERT_T,
        16,
    ),
    Shape(
        "rule-do-also",  # NEW.id in a rule is the default again: one more nextval
        SEEDED
        + """CREATE TABLE log (t_id int);
             CREATE RULE log_t AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (NEW.id);""",
        INSERT_T,
        16,
    ),
    Shape(
        "after-statement-trigger",
        SEEDED
        + DRAW
        + "CREATE TRIGGER draw AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION draw();",
        INSERT_T,
        16,
    ),
    Shape(
        # the statement draws first: the rows get 2, 4, 6, 8, 10, and the 6th meets 12
        "before-statement-trigger",
        SEEDED
        + DRAW
        + "CREATE TRIGGER draw BEFORE INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION draw();",
        INSERT_T,
        16,
    ),
    Shape(
        "partition-after-row-trigger",
        """CREATE TABLE t (id bigserial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE t_eu PARTITION OF t FOR VALUES IN ('eu');
           INSERT INTO t (id, region) VALUES (7, 'eu'), (9, 'eu'), (12, 'eu'), (16, 'eu');
           CREATE TABLE audit (id bigint PRIMARY KEY DEFAULT nextval('t_id_seq'), t_id bigint);"""
        + AUDIT
        + "CREATE TRIGGER audit_t AFTER INSERT ON t_eu FOR EACH ROW EXECUTE FUNCTION audit_t();",
        "INSERT INTO t (region) VALUES ('eu') RETURNING id",
        16,
    ),
]

# the same, where the arithmetic cannot judge the default: only the probe sees it
DRAWING_EXPRESSION = Shape(
    "expression-default",  # s: 1 -> id 10, audit 2; 3 -> 30; 5 -> 50; 7 -> 70 collides
    """CREATE SEQUENCE s;
       CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s') * 10, v int);
       INSERT INTO t (id) VALUES (70), (90), (160);
       CREATE TABLE audit (id int PRIMARY KEY DEFAULT nextval('s'), t_id int);"""
    + AUDIT
    + "CREATE TRIGGER audit_t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_t();",
    INSERT_T,
    160,
)


@pytest.mark.parametrize("shape", DRAWING, ids=[s.id for s in DRAWING])
def test_a_trigger_or_rule_drawing_from_the_sequence(db: Conn, shape: Shape) -> None:
    """The check leaves the column unchecked, naming what draws; the probe inserts one
    row per INSERT there and reports what those INSERTs do, not what a multi-row INSERT
    says. Its setval fixes it."""
    db.execute(shape.sql)
    report = check(db)
    assert collision_for(report, shape.table) is None
    verdict = checked_for(report, shape.table)
    assert verdict.status == "unchecked"
    assert verdict.note is not None
    assert re.search(r"(trigger draw|trigger audit_t|rule log_t)\b", verdict.note)
    result = expect_probe_to_tell_the_truth(db, shape)
    p = probed_for(result, shape.table)
    assert (p.mode, p.decided_by) == ("insert", ())
    f = collision_for(result.report, shape.table)
    assert f is not None
    assert f.fix_sql.startswith("SELECT setval(")
    expect_the_fix_to_fix(db, shape, f.fix_sql)


def test_a_trigger_drawing_behind_an_expression_default(db: Conn) -> None:
    shape = DRAWING_EXPRESSION
    db.execute(shape.sql)
    assert collision_for(check(db), "t") is None
    result = expect_probe_to_tell_the_truth(db, shape)
    f = collision_for(result.report, "t")
    assert f is not None
    assert numbers(f) == (10, 70, 3, 160)
    assert checked_for(result.report, "t").status == "finding"


def test_a_multi_row_insert_that_collides_where_one_row_inserts_do_not(db: Conn) -> None:
    """One row per INSERT, the audit trigger's draws make the ids skip 8; a multi-row
    INSERT of 8 rows stores 1 .. 8 and fails. Both are true: the check leaves the column
    unchecked; the probe reports what an application's one-row INSERTs do (no
    collision), and its note says which multi-row INSERT collides, and why."""
    db.execute(
        """CREATE TABLE t (id serial PRIMARY KEY, v int);
           INSERT INTO t (id) VALUES (8);
           CREATE TABLE audit (id int PRIMARY KEY DEFAULT nextval('t_id_seq'), t_id int);"""
        + AUDIT
        + "CREATE TRIGGER audit_t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_t();"
    )
    assert one_row_inserts(db, INSERT_T, top=8) == Truth([1, 3, 5, 7, 9], None)
    assert multi_row_insert(db, "INSERT INTO t (v) SELECT 0 FROM generate_series(1, 8)") == 8
    with unchanged(db):
        result = probe(db)
    assert collision_for(result.report, "t") is None
    p = probed_for(result, "t")
    assert checked_for(check(db), "t").status == "unchecked"
    assert (p.mode, p.overrules, saw(p)) == ("insert", False, (None, None))
    assert p.note == (
        "one row per INSERT passes the max without a collision (one row per INSERT, trigger "
        "audit_t on public.t (AFTER INSERT) draws from public.t_id_seq too: the inserts store "
        "1, 3, 5 ...); but a multi-row INSERT of 8 rows collides on 8 after 7 rows"
    )


def test_a_multi_row_collision_the_replay_cannot_find_falls_back_to_one_row_inserts(
    db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the catalog does not tell (here it is made to see no trigger), the probe
    inserts in multi-row batches: the batch collides, and its replay in smaller INSERTs
    draws in yet another order (the trigger draws in between). That made the whole
    probe fail with "could not reproduce a collision it saw"; now it never raises, and
    the collision is reported."""
    shape = DRAWING[0]
    db.execute(shape.sql)
    blind = "SELECT true, true, false, 'none'::text WHERE %(table)s::oid IS NULL"
    monkeypatch.setattr(probe_table, "_HOOKS", blind)
    with unchanged(db):
        result = probe(db)
    assert collision_for(result.report, "t") is not None


INSTEAD = (
    SEEDED
    + """CREATE TABLE log (t_id int);
         CREATE RULE instead_t AS ON INSERT TO t DO INSTEAD INSERT INTO log VALUES (NEW.id);"""
)


def test_a_rule_that_inserts_instead(db: Conn) -> None:
    """DO INSTEAD: an INSERT into t stores nothing in t (and takes no RETURNING), so none
    ever collides, whatever its sequence says. The check leaves the column unchecked,
    naming the rule; the probe inserts without RETURNING and sees no collision."""
    db.execute(INSTEAD)
    report = check(db)
    assert collision_for(report, "t") is None
    assert checked_for(report, "t").status == "unchecked"
    with rolled_back(db):
        for _ in range(20):
            db.execute("INSERT INTO t (v) VALUES (0)")
        assert db.execute("SELECT count(*) FROM t").fetchone() == (5,)
    with unchanged(db):
        result = probe(db)
    assert result.report.findings == []
    p = probed_for(result, "t")
    assert (p.mode, saw(p)) == ("insert", (None, None))


def test_a_conditional_rule_that_leaves_the_copies_to_the_table(db: Conn) -> None:
    """A DO INSTEAD rule whose condition the copied rows do not meet: they go into t,
    and collide where the arithmetic says (RETURNING is refused all the same)."""
    db.execute(INSTEAD.replace("DO INSTEAD", "WHERE NEW.v < 0 DO INSTEAD"))
    with unchanged(db):
        result = probe(db)
    p = probed_for(result, "t")
    assert (p.mode, p.note, p.first_value, saw(p)) == ("insert", None, 1, (6, 7))
    assert numbers(collision_for(result.report, "t")) == (1, 7, 6, 16)


# -- errors in one column's probe: a note, never the end of the probe ------------------

FAILING = [
    pytest.param(
        # the audit table's own key collides: a copy of t's row is rejected
        SEEDED
        + AUDIT
        + """CREATE TABLE audit (id int PRIMARY KEY DEFAULT nextval('t_id_seq'), t_id int);
             INSERT INTO audit (id) VALUES (2), (4);
             CREATE TRIGGER audit_t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_t();""",
        "fell back to the default probe: a copied row violates audit_pkey, not the key under test",
        id="audit-key-collides",
    ),
    pytest.param(
        SEEDED
        + """CREATE FUNCTION no_three() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                 IF NEW.id = 3 THEN RAISE EXCEPTION 'no id 3'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER no_three BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION no_three();""",
        "fell back to the default probe: a copied row is rejected: no id 3",
        id="trigger-rejects-the-third",
    ),
]


@pytest.mark.parametrize(("schema", "note"), FAILING)
def test_a_copy_that_fails_falls_back_and_says_why(db: Conn, schema: str, note: str) -> None:
    db.execute(schema)
    with unchanged(db):
        result = probe(db)
    p = probed_for(result, "t")
    assert (p.mode, p.note, saw(p)) == ("default", note, (6, 7))
    f = collision_for(result.report, "t")
    assert f is not None
    assert numbers(f) == (1, 7, 6, 16)


@pytest.mark.parametrize("mode", MODES)
def test_a_column_that_cannot_be_probed_is_a_note_and_the_rest_is_probed(
    db: Conn, mode: Mode
) -> None:
    """Its default fails when evaluated; every other shape in the same database is
    still probed and reported, and every sequence is restored."""
    db.execute(
        """CREATE TABLE plain (id serial PRIMARY KEY, v int);
           INSERT INTO plain (id) VALUES (7), (9), (12), (14), (16);"""
    )
    db.execute(
        """CREATE SEQUENCE s;
           CREATE TABLE bad (id int PRIMARY KEY DEFAULT nextval('s') / 0, v int);
           INSERT INTO bad (id) VALUES (1);"""
    )
    db.execute(DRAWING[0].sql)
    with unchanged(db):
        result = probe(db, mode=mode)
    bad = probed_for(result, "bad")
    assert bad.note == "could not be probed: division by zero; the arithmetic's verdict stands"
    assert checked_for(result.report, "bad").status == "unchecked"
    found = {f.column.table: numbers(f) for f in result.report.findings}
    expected_t = (1, 7, 3, 16) if mode == "insert" else (1, 7, 6, 16)
    assert found == {"plain": (1, 7, 6, 16), "t": expected_t}


# -- 2. a BEFORE INSERT trigger decides the value --------------------------------------

FILL_ID = """
    CREATE SEQUENCE other_seq {start};
    CREATE FUNCTION fill_id() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.id := nextval('other_seq'); RETURN NEW; END $$;
"""
FILL_T = "CREATE TRIGGER fill_id BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION fill_id();"
HUNDRED = """
    CREATE TABLE t (id serial PRIMARY KEY, v int);
    INSERT INTO t (v) SELECT g FROM generate_series(1, 100) g;  -- t_id_seq: past them
"""

# the trigger stores what other_seq hands out, whatever t_id_seq says
DECIDING = [
    Shape("other-sequence-behind", HUNDRED + FILL_ID.format(start="") + FILL_T, INSERT_T, 100),
    Shape(
        "other-sequence-behind-a-gap",  # 1 .. 4 go in, the 5th insert meets 5
        """CREATE TABLE t (id serial PRIMARY KEY, v int);
           INSERT INTO t (id) SELECT generate_series(5, 100);
           SELECT setval('t_id_seq', 100);"""
        + FILL_ID.format(start="")
        + FILL_T,
        INSERT_T,
        100,
    ),
    Shape(
        "trigger-on-a-partition",
        """CREATE TABLE t (id bigserial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE t_eu PARTITION OF t FOR VALUES IN ('eu');
           INSERT INTO t (region) SELECT 'eu' FROM generate_series(1, 20);"""
        + FILL_ID.format(start="")
        + "CREATE TRIGGER fill_id BEFORE INSERT ON t_eu FOR EACH ROW EXECUTE FUNCTION fill_id();",
        "INSERT INTO t (region) VALUES ('eu') RETURNING id",
        20,
    ),
    Shape(
        "key-with-the-column-second",  # "Key (region, id)=(eu, 3) already exists."
        """CREATE TABLE t (id serial, region text, PRIMARY KEY (region, id));
           INSERT INTO t (region) SELECT 'eu' FROM generate_series(1, 20);
           DELETE FROM t WHERE id < 3;"""
        + FILL_ID.format(start="")
        + FILL_T,
        "INSERT INTO t (region) VALUES ('eu') RETURNING id",
        20,
    ),
    Shape(
        "shifting-the-default",  # 101, 102 go in, the 3rd insert meets 103
        """CREATE TABLE t (id serial PRIMARY KEY, v int);
           INSERT INTO t (id) VALUES (103);
           CREATE FUNCTION shift_id() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.id := NEW.id + 100; RETURN NEW; END $$;
           CREATE TRIGGER shift BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION shift_id();""",
        INSERT_T,
        103,
    ),
]


@pytest.mark.parametrize("shape", DECIDING, ids=[s.id for s in DECIDING])
def test_a_before_trigger_that_decides_the_id(db: Conn, shape: Shape) -> None:
    """The report gives what the insert stored (RETURNING) and the value it failed on,
    whatever the default's sequence says; the fix names the trigger instead of moving
    a sequence the trigger does not use."""
    db.execute(shape.sql)
    result = expect_probe_to_tell_the_truth(db, shape)
    p = probed_for(result, shape.table)
    trigger = "shift" if shape.id == "shifting-the-default" else "fill_id"
    where = "public.t_eu" if shape.id == "trigger-on-a-partition" else "public.t"
    assert p.decided_by == (f"trigger {trigger} on {where} (BEFORE INSERT)",)
    f = collision_for(result.report, shape.table)
    assert f is not None
    lines = f.fix_sql.splitlines()
    assert all(line.startswith("-- ") for line in lines), f.fix_sql  # advice, no statement
    assert f"trigger {trigger} on {where} (BEFORE INSERT) decides the value" in f.fix_sql
    assert f"(the first stores {f.next_value})" in f.fix_sql
    if trigger == "fill_id":
        assert p.drew_from == ("public.other_seq", p.sequence.qualified)
        assert "(the probe saw public.other_seq, public.t_id_seq move)" in f.fix_sql


def test_a_before_trigger_that_stores_values_past_the_existing_ones(db: Conn) -> None:
    """t_id_seq is behind, but the trigger stores other_seq's values, from 1000 on: no
    insert collides. The check cannot know (the column is unchecked, naming the
    trigger); the probe inserts and reports no collision."""
    db.execute(SEEDED + FILL_ID.format(start="START 1000") + FILL_T)
    report = check(db)
    assert collision_for(report, "t") is None
    verdict = checked_for(report, "t")
    assert verdict.status == "unchecked"
    assert verdict.note is not None
    assert "trigger fill_id" in verdict.note
    assert one_row_inserts(db, INSERT_T, top=16) == Truth([1000], None)
    with unchanged(db):
        result = probe(db)
    assert result.report.findings == []
    p = probed_for(result, "t")
    assert (p.overrules, p.first_value, saw(p)) == (False, 1000, (None, None))


def test_a_before_trigger_that_leaves_the_id_alone_changes_nothing(db: Conn) -> None:
    db.execute(
        SEEDED
        + """CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN NEW.v := 42; RETURN NEW; END $$;
             CREATE TRIGGER touch BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch();"""
    )
    result = expect_probe_to_tell_the_truth(db, Shape("touch", "", INSERT_T, 16))
    p = probed_for(result, "t")
    assert (p.mode, p.note, p.decided_by, p.overrules) == ("insert", None, (), False)
    assert result.report.findings == check(db).findings


# -- 3. a verdict without a max: domains, text -----------------------------------------

NO_MAX = [
    Shape(
        "domain-over-a-domain",
        """CREATE DOMAIN d1 AS integer; CREATE DOMAIN d2 AS d1;
           CREATE SEQUENCE s;
           CREATE TABLE t (id d2 PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);""",
        INSERT_T,
        16,
    ),
    Shape(
        "domain-over-a-domain-increment-5",  # 1, 6 pass 2; 11 collides
        """CREATE DOMAIN d1 AS bigint CHECK (VALUE > 0); CREATE DOMAIN d2 AS d1;
           CREATE SEQUENCE s INCREMENT 5;
           CREATE TABLE t (id d2 PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (2), (11), (21);""",
        INSERT_T,
        21,
    ),
    Shape(
        "text",  # the max of the values that are integers: 16, not 'x'
        """CREATE SEQUENCE s;
           CREATE TABLE t (id text PRIMARY KEY DEFAULT nextval('s')::text, v int);
           INSERT INTO t (id) VALUES ('7'), ('9'), ('legacy-3'), ('12'), ('16'), ('x');""",
        INSERT_T,
        16,
    ),
    Shape(
        "varchar-descending",  # -1, -2 pass; -3 collides
        """CREATE SEQUENCE s INCREMENT -1 MAXVALUE -1;
           CREATE TABLE t (id varchar PRIMARY KEY DEFAULT nextval('s')::varchar, v int);
           INSERT INTO t (id) VALUES ('-3'), ('-5'), ('n/a');""",
        INSERT_T,
        -5,
        step=-1,
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", NO_MAX, ids=[s.id for s in NO_MAX])
def test_a_column_whose_verdict_has_no_max_is_probed(db: Conn, shape: Shape, mode: Mode) -> None:
    """Not "empty: nothing to probe": the probe reads the real top itself, finds the
    collision in either mode, and its fix is the exact setval."""
    db.execute(shape.sql)
    result = expect_probe_to_tell_the_truth(db, shape, mode)
    p = probed_for(result, "t")
    assert (p.mode, p.note, p.top) == (mode, None, shape.top)
    f = collision_for(result.report, "t")
    assert f is not None
    assert f.fix_sql.startswith("SELECT setval(")
    expect_the_fix_to_fix(db, shape, f.fix_sql)


@pytest.mark.parametrize("mode", MODES)
def test_a_text_column_without_integers_says_why_it_is_not_probed(db: Conn, mode: Mode) -> None:
    db.execute(
        """CREATE SEQUENCE s;
           CREATE TABLE t (id text PRIMARY KEY DEFAULT 'inv-' || nextval('s'), v int);
           INSERT INTO t (id) VALUES ('inv-7'), ('legacy');
           CREATE DOMAIN d1 AS integer; CREATE DOMAIN d2 AS d1;
           CREATE TABLE e (id d2 PRIMARY KEY DEFAULT nextval('s'), v int);"""
    )
    with unchanged(db):
        result = probe(db, mode=mode)
    assert probed_for(result, "t").note == (
        "could not be probed: none of its 2 values is an integer: the probe cannot tell "
        "when the default has passed them; the arithmetic's verdict stands"
    )
    assert probed_for(result, "e").note == "empty: nothing to probe"


# -- 5. deferrable keys ----------------------------------------------------------------

DEFERRABLE = [
    Shape(
        "primary-key-initially-deferred",
        """CREATE TABLE t (id serial PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v int);
           INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);""",
        INSERT_T,
        16,
    ),
    Shape(
        "unique-initially-deferred",
        """CREATE TABLE t (id serial, v int, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED);
           INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);""",
        INSERT_T,
        16,
    ),
    Shape(
        "partitioned-initially-deferred",
        """CREATE TABLE t (id bigserial, region text,
                          PRIMARY KEY (id, region) DEFERRABLE INITIALLY DEFERRED)
               PARTITION BY LIST (region);
           CREATE TABLE t_eu PARTITION OF t FOR VALUES IN ('eu');
           INSERT INTO t (id, region) VALUES (7, 'eu'), (9, 'eu'), (12, 'eu'), (16, 'eu');""",
        "INSERT INTO t (region) VALUES ('eu') RETURNING id",
        16,
    ),
    Shape(
        "odd-names",
        '''CREATE SCHEMA "Odd ""s""";
           CREATE TABLE "Odd ""s"""."T 1" (id serial, v int,
               CONSTRAINT "key; -- x" PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED);
           INSERT INTO "Odd ""s"""."T 1" (id) VALUES (7), (9), (12), (14), (16);''',
        '''INSERT INTO "Odd ""s"""."T 1" (v) VALUES (0) RETURNING id''',
        16,
        table="T 1",
    ),
]


@pytest.mark.parametrize("shape", DEFERRABLE, ids=[s.id for s in DEFERRABLE])
def test_a_deferrable_key_is_probed_immediate(db: Conn, shape: Shape) -> None:
    """A deferred key never fires inside the savepoint the probe rolls back: it is made
    IMMEDIATE there, and the probe sees what the arithmetic sees, without a note."""
    db.execute(shape.sql)
    truth = one_row_inserts(db, shape.insert, top=shape.top, immediate=True)
    with unchanged(db):
        result = probe(db)
    p = probed_for(result, shape.table)
    first, collided, until = truth.seen
    assert (p.mode, p.note, p.overrules) == ("insert", None, False)
    assert (p.first_value, p.value, p.inserts_until_collision) == (first, collided, until)
    f = collision_for(result.report, shape.table)
    assert f is not None
    assert numbers(f) == (first, collided, until, shape.top)
    assert result.disagreements == []


DEFERRED_T = DEFERRABLE[0].sql


def _callers_transaction(db: Conn, *statements: str) -> Conn:
    """A second connection in its own transaction (not autocommit), as a test has."""
    conn = psycopg.connect(db.info.dsn)
    conn.execute("SELECT 1")  # opens the transaction
    for statement in statements:
        conn.execute(statement)
    return conn


def _duplicate(conn: Conn) -> None:
    conn.execute("INSERT INTO t (id) VALUES (7)")  # a deferred key: no error here


def _remove_duplicate(conn: Conn) -> None:
    conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t WHERE id = 7)")


@pytest.mark.parametrize("inside", ["transaction", "savepoint"])
def test_the_callers_transaction_still_defers_the_key(db: Conn, inside: str) -> None:
    """SET CONSTRAINTS lasts for the transaction: the probe's own must not outlive its
    savepoint. After the probe, a duplicate the caller inserts is still checked only
    at its COMMIT -- which fails if the duplicate is still there."""
    db.execute(DEFERRED_T)
    conn = _callers_transaction(db)
    try:
        if inside == "savepoint":
            with conn.transaction():
                result = probe(conn)
        else:
            result = probe(conn)
        assert numbers(collision_for(result.report, "t")) == (1, 7, 6, 16)
        assert probed_for(result, "t").note is None
        _duplicate(conn)  # still deferred: no error
        _remove_duplicate(conn)
        conn.commit()
        _duplicate(conn)
        result = probe(conn)
        with pytest.raises(errors.UniqueViolation):
            conn.commit()  # the duplicate's check happens at COMMIT, not earlier, not never
    finally:
        conn.close()


def test_a_key_the_caller_made_immediate_stays_immediate(db: Conn) -> None:
    db.execute(DEFERRED_T)
    conn = _callers_transaction(db, "SET CONSTRAINTS t_pkey IMMEDIATE")
    try:
        probe(conn)
        with pytest.raises(errors.UniqueViolation):
            _duplicate(conn)
    finally:
        conn.close()


def test_a_key_deferred_by_the_callers_transaction_is_probed_and_stays_deferred(
    db: Conn,
) -> None:
    """DEFERRABLE INITIALLY IMMEDIATE, deferred by the caller's SET CONSTRAINTS."""
    db.execute(DEFERRED_T.replace("INITIALLY DEFERRED", "INITIALLY IMMEDIATE"))
    conn = _callers_transaction(db, "SET CONSTRAINTS ALL DEFERRED")
    try:
        result = probe(conn)
        p = probed_for(result, "t")
        assert (p.mode, p.note, saw(p)) == ("insert", None, (6, 7))
        _duplicate(conn)  # still deferred
        _remove_duplicate(conn)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("removed", [True, False], ids=["removed-before-commit", "kept"])
def test_a_pending_duplicate_of_the_deferred_key(db: Conn, removed: bool) -> None:
    """The caller's transaction holds a duplicate it means to remove before COMMIT: the
    key cannot be made IMMEDIATE now, so the column is probed by evaluating its default
    (which says so), and the caller's COMMIT checks the key as it would have."""
    db.execute(DEFERRED_T)
    conn = _callers_transaction(db)
    try:
        _duplicate(conn)
        result = probe(conn)
        p = probed_for(result, "t")
        assert (p.mode, saw(p)) == ("default", (6, 7))
        assert p.note is not None
        assert p.note.startswith(
            "fell back to the default probe: the deferrable key t_pkey cannot be made "
            'immediate: duplicate key value violates unique constraint "t_pkey"'
        )
        if removed:
            _remove_duplicate(conn)
            conn.commit()
        else:
            with pytest.raises(errors.UniqueViolation):
                conn.commit()
    finally:
        conn.close()


# -- through psycopg2 ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [DRAWING[0], DECIDING[1]], ids=lambda s: s.id)
def test_one_row_inserts_through_psycopg2(db: Conn, shape: Shape) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    db.execute(shape.sql)
    first, collided, until = one_row_inserts(db, shape.insert, top=shape.top).seen
    conn = psycopg2.connect(db.info.dsn)
    try:
        with unchanged(db):
            result = probe(conn)
    finally:
        conn.close()
    f = collision_for(result.report, shape.table)
    assert f is not None
    assert numbers(f) == (first, collided, until, shape.top)
