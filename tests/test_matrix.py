"""``check()`` against a real server: every column kind and sequence shape, exact numbers.

Each scenario builds its schema with SQL, plants ids, and states the whole report it
expects: every finding with its numbers, and the status of every checked column (so a
column listed twice, a partition listed on its own, or a column missed, fails too).
Every collision that a ``setval`` can fix is then fixed with the finding's own fix_sql.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.cli import SEED_FINDING

from pytest_seqdrift import check
from pytest_seqdrift.model import Finding, Report
from pytest_seqdrift.render import as_dict

Conn = psycopg.Connection[Any]
Key = tuple[str, str, str]  # schema, table, column
Where = str | tuple[str, ...]  # see key()

INT_MAX = 2**31 - 1


def key(where: Where) -> Key:
    """``"t"`` -> public.t.id; ``("s", "t")`` -> s.t.id; ``("s", "t", "c")`` as is."""
    if isinstance(where, str):
        return ("public", where, "id")
    if len(where) == 2:
        return (where[0], where[1], "id")
    schema, table, column = where
    return (schema, table, column)


@dataclass(frozen=True)
class Collision:
    where: Key
    next_value: int | None
    first_collision: int
    inserts_until: int
    max_existing: int


@dataclass(frozen=True)
class Capacity:
    where: Key
    kind: str
    next_value: int | None
    values_left: int
    used_fraction: float


def collision(where: Where, nv: int, first: int, until: int, top: int) -> Collision:
    return Collision(key(where), nv, first, until, top)


def capacity(where: Where, kind: str, nv: int | None, left: int, used: int) -> Capacity:
    """``used`` values consumed and ``left`` values to go: the fraction is used / (used + left)."""
    return Capacity(key(where), kind, nv, left, used / (used + left))


def facts(f: Finding) -> Collision | Capacity:
    where = (f.column.schema, f.column.table, f.column.column)
    if f.kind == "collision":
        assert f.first_collision is not None
        assert f.inserts_until_collision is not None
        assert f.max_existing is not None
        return Collision(
            where, f.next_value, f.first_collision, f.inserts_until_collision, f.max_existing
        )
    assert f.values_left is not None
    assert f.used_fraction is not None
    return Capacity(where, f.kind, f.next_value, f.values_left, f.used_fraction)


def statuses(report: Report) -> dict[Key, str]:
    keys = [(c.column.schema, c.column.table, c.column.column) for c in report.checked]
    twice = [k for k, n in Counter(keys).items() if n > 1]
    assert not twice, f"columns checked more than once: {twice}"
    return {k: c.status for k, c in zip(keys, report.checked, strict=True)}


def assert_report(
    report: Report,
    findings: tuple[Collision | Capacity, ...],
    *,
    ok: tuple[Where, ...] = (),
    duplicates: tuple[Where, ...] = (),
    unchecked: tuple[Where, ...] = (),
    skipped: tuple[Where, ...] = (),
) -> None:
    __tracebackhide__ = True
    assert sorted(map(facts, report.findings), key=repr) == sorted(findings, key=repr)
    expected = {f.where: "finding" for f in findings}
    for status, wheres in (("ok", ok), ("duplicates", duplicates), ("unchecked", unchecked)):
        expected.update({key(w): status for w in wheres})
    assert statuses(report) == expected
    assert {(s.schema, s.table, s.column) for s in report.skipped} == set(map(key, skipped))


def seq_position(db: Conn, f: Finding) -> int:
    """The sequence's last_value, in the direction it walks (bigger = further on)."""
    ident = sql.Identifier(f.sequence.schema, f.sequence.name)
    row = db.execute(sql.SQL("SELECT last_value FROM {}").format(ident)).fetchone()
    assert row is not None
    return int(row[0]) * (1 if f.sequence.increment > 0 else -1)


def setval_can_fix(f: Finding) -> bool:
    """A collision that moving the sequence past the existing ids removes: it must not
    cycle back onto them, and a storable value must be left beyond them."""
    if f.kind != "collision" or f.sequence.cycle:
        return False
    assert f.max_existing is not None
    after = f.max_existing + f.sequence.increment
    lo, hi = f.column.type_range or (after, after)
    return f.sequence.min_value <= after <= f.sequence.max_value and lo <= after <= hi


def assert_fixes_clear(db: Conn, report: Report) -> None:
    """Each setval-fixable collision's fix_sql clears it and moves no sequence back."""
    __tracebackhide__ = True
    fixable = [f for f in report.findings if setval_can_fix(f)]
    before = {f.sequence.oid: seq_position(db, f) for f in fixable}
    for f in fixable:
        db.execute(f.fix_sql)
    for f in fixable:
        assert seq_position(db, f) >= before[f.sequence.oid]
    fixed = {(f.column.table_oid, f.column.column) for f in fixable}
    again = check(db)
    left = [
        f.column.label
        for f in again.findings
        if f.kind == "collision" and (f.column.table_oid, f.column.column) in fixed
    ]
    assert not left, f"collisions left after fix_sql: {left}"


@dataclass(frozen=True)
class Scenario:
    id: str
    sql: str
    findings: tuple[Collision | Capacity, ...] = ()
    ok: tuple[Where, ...] = ()
    duplicates: tuple[Where, ...] = ()
    unchecked: tuple[Where, ...] = ()


SEED_IDS = "INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);"

SCENARIOS = [
    # --- column kinds -------------------------------------------------------------------
    Scenario(
        "serial",
        f"CREATE TABLE t (id serial PRIMARY KEY); {SEED_IDS}",
        (collision("t", 1, 7, 6, 16),),
    ),
    Scenario(
        "bigserial",
        f"CREATE TABLE t (id bigserial PRIMARY KEY); {SEED_IDS}",
        (collision("t", 1, 7, 6, 16),),
    ),
    Scenario(
        "smallserial",
        f"CREATE TABLE t (id smallserial PRIMARY KEY); {SEED_IDS}",
        (collision("t", 1, 7, 6, 16),),
    ),
    Scenario(
        "identity-by-default",
        """CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
           INSERT INTO t (v) VALUES ('a'), ('b');
           INSERT INTO t (id, v) VALUES (5, 'c'), (6, 'd'), (40, 'e');""",
        (collision("t", 3, 5, 2, 40),),
    ),
    Scenario(
        "identity-always",
        """CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY (START WITH 10) PRIMARY KEY,
                           v text);
           INSERT INTO t (id, v) OVERRIDING SYSTEM VALUE VALUES (3, 'a'), (12, 'b'), (20, 'c');""",
        (collision("t", 10, 12, 2, 20),),
    ),
    Scenario(
        "numeric-column",  # fractions are values no sequence hands out
        """CREATE SEQUENCE s;
           CREATE TABLE t (id numeric PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (2.5), (3), (4.5);""",
        (collision("t", 1, 3, 2, 3),),
    ),
    # --- where the sequence comes from ----------------------------------------------------
    Scenario(
        "unowned-sequence",
        """CREATE SEQUENCE s;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (4), (6);""",
        (collision("t", 1, 4, 3, 6),),
    ),
    Scenario(
        "owned-by-another-table",
        """CREATE TABLE other (x int);
           CREATE SEQUENCE s OWNED BY other.x;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (3), (6), (9);
           SELECT setval('s', 5);""",
        (collision("t", 6, 6, 0, 9),),
    ),
    Scenario(
        "explicit-cast-default",  # (nextval('s'))::integer is still the plain next value
        """CREATE SEQUENCE s AS bigint;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s')::int);
           INSERT INTO t (id) VALUES (2);""",
        (collision("t", 1, 2, 1, 2),),
    ),
    Scenario(
        "shared-sequence",  # drift planted in b only: a is fine on the same stream
        """CREATE SEQUENCE s;
           CREATE TABLE a (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           CREATE TABLE b (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO a (v) VALUES (1), (2), (3);
           INSERT INTO b (v) VALUES (4), (5);
           INSERT INTO b (id) VALUES (8);""",
        (collision("b", 6, 8, 2, 8),),
        ok=("a",),
    ),
    Scenario(
        "shared-sequence-both-drift",
        """CREATE SEQUENCE s;
           CREATE TABLE a (id int PRIMARY KEY DEFAULT nextval('s'));
           CREATE TABLE b (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO a (id) VALUES (2), (30);
           INSERT INTO b (id) VALUES (4), (5);""",
        (collision("a", 1, 2, 1, 30), collision("b", 1, 4, 3, 5)),
    ),
    # --- sequence shapes ----------------------------------------------------------------
    Scenario(
        "increment-5",  # 3, 7, 13 are off the 1, 6, 11, ... grid: never handed out
        """CREATE SEQUENCE s INCREMENT 5;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (3), (7), (13), (21), (23);""",
        (collision("t", 1, 21, 4, 23),),
    ),
    Scenario(
        "increment-5-unreachable-only",
        """CREATE SEQUENCE s INCREMENT 5;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (2), (3), (4), (7), (8), (100), (1002);""",
        ok=("t",),
    ),
    Scenario(
        "increment-5-off-grid-setval",  # setval(12): the grid is now 17, 22, 27, ...
        """CREATE SEQUENCE s INCREMENT 5;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (16), (20), (21), (27), (30);
           SELECT setval('s', 12);""",
        (collision("t", 17, 27, 2, 30),),
    ),
    Scenario(
        "negative-increment-1",
        """CREATE SEQUENCE s INCREMENT -1 MAXVALUE -1;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (-5), (-3), (-10), (4);""",
        (collision("t", -1, -3, 2, -10),),
    ),
    Scenario(
        "negative-increment-3",  # -1, -4, -7, -10, -13: -2, -3, -5, -6, -20 are unreachable
        """CREATE SEQUENCE s INCREMENT -3 MINVALUE -1000 MAXVALUE -1;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (-2), (-3), (-5), (-6), (-13), (-20);""",
        (collision("t", -1, -13, 4, -20),),
    ),
    Scenario(
        "negative-increment-unreachable-only",
        """CREATE SEQUENCE s INCREMENT -3 MAXVALUE -1;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (-2), (-3), (-5), (-6), (1), (7);""",
        ok=("t",),
    ),
    Scenario(
        "start-min-max",
        """CREATE SEQUENCE s START 1000 MINVALUE 500 MAXVALUE 100000;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (998), (1003), (1500), (100001);""",
        (collision("t", 1000, 1003, 3, 1500),),
    ),
    Scenario(
        "cycle-wrap",  # 9, 10, then back to 1: the 4th insert gets 2
        """CREATE SEQUENCE s MAXVALUE 10 CYCLE;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (2), (3), (5);
           SELECT setval('s', 8);""",
        (collision("t", 9, 2, 3, 5),),
    ),
    Scenario(
        "cycle-before-wrap",
        """CREATE SEQUENCE s MAXVALUE 10 CYCLE;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (2), (10);
           SELECT setval('s', 8);""",
        (collision("t", 9, 10, 1, 10),),
    ),
    # --- table shapes -------------------------------------------------------------------
    Scenario(
        "partitioned-list",  # two levels of partitions, all read through the parent
        """CREATE TABLE m (id bigserial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);
           CREATE TABLE m_us_low PARTITION OF m_us FOR VALUES FROM (MINVALUE) TO (100);
           CREATE TABLE m_us_high PARTITION OF m_us FOR VALUES FROM (100) TO (MAXVALUE);
           INSERT INTO m (id, region) VALUES (3, 'eu'), (5, 'us'), (250, 'us');""",
        (collision("m", 1, 3, 2, 250),),
    ),
    Scenario(
        # the PostgreSQL 10 way: no key on the parent, the partitions' own keys fail (on
        # the parent, which the application inserts into); m_asia has none: its 2 is free
        "partitions-with-own-primary-keys",
        """CREATE TABLE m (id bigserial, region text) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia');
           ALTER TABLE m_eu ADD PRIMARY KEY (id);
           ALTER TABLE m_us ADD PRIMARY KEY (id);
           INSERT INTO m (id, region) VALUES (3, 'eu'), (5, 'us'), (7, 'us'), (2, 'asia');""",
        (collision("m", 1, 3, 2, 7),),
    ),
    Scenario(
        "partitioned-range-identity",
        """CREATE TABLE m (id int GENERATED BY DEFAULT AS IDENTITY, at date,
                           PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE m_2023 PARTITION OF m FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
           CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           INSERT INTO m (at) VALUES ('2023-05-01'), ('2024-05-01');
           INSERT INTO m (id, at) VALUES (4, '2023-06-01'), (9, '2024-06-01');""",
        (collision("m", 3, 4, 1, 9),),
    ),
    Scenario(
        "inheritance-children",  # parent read ONLY: its PK does not cover the children
        """CREATE TABLE parent (id serial PRIMARY KEY, v int);
           CREATE TABLE child () INHERITS (parent);
           ALTER TABLE child ADD PRIMARY KEY (id);
           CREATE TABLE loose () INHERITS (parent);
           INSERT INTO parent (id) VALUES (1), (2);
           INSERT INTO child (id) VALUES (6), (8);
           INSERT INTO loose (id) VALUES (4);
           SELECT setval('parent_id_seq', 2);""",
        (collision("child", 3, 6, 3, 8),),
        ok=("parent",),
        duplicates=("loose",),
    ),
    # --- names --------------------------------------------------------------------------
    Scenario(
        "mixed-case",
        """CREATE TABLE "MixedCase" ("Id" serial PRIMARY KEY);
           INSERT INTO "MixedCase" ("Id") VALUES (2);""",
        (collision(("public", "MixedCase", "Id"), 1, 2, 1, 2),),
    ),
    Scenario(
        "spaces-and-quotes",
        '''CREATE SCHEMA "my ""odd"" schema";
           CREATE TABLE "my ""odd"" schema"."tab le's ""x""" ("i d" serial PRIMARY KEY);
           INSERT INTO "my ""odd"" schema"."tab le's ""x""" ("i d") VALUES (1), (2);''',
        (collision(('my "odd" schema', 'tab le\'s "x"', "i d"), 1, 1, 0, 2),),
    ),
    Scenario(
        "unicode-and-backslash",
        r"""CREATE SCHEMA "Ünï cödé";
            CREATE TABLE "Ünï cödé"."back\slash ü" (id serial PRIMARY KEY);
            INSERT INTO "Ünï cödé"."back\slash ü" (id) VALUES (3);""",
        (collision(("Ünï cödé", "back\\slash ü"), 1, 3, 2, 3),),
    ),
    Scenario(
        "63-byte-name",
        f"CREATE TABLE t{'x' * 62} (id serial PRIMARY KEY);"
        f"INSERT INTO t{'x' * 62} (id) VALUES (5);",
        (collision("t" + "x" * 62, 1, 5, 4, 5),),
    ),
    Scenario(
        "same-name-two-schemas",
        """CREATE SCHEMA s1; CREATE SCHEMA s2;
           CREATE TABLE s1.t (id serial PRIMARY KEY, v int);
           CREATE TABLE s2.t (id serial PRIMARY KEY, v int);
           INSERT INTO s1.t (v) VALUES (1), (2), (3);
           INSERT INTO s2.t (id) VALUES (1), (2), (3);""",
        (collision(("s2", "t"), 1, 1, 0, 3),),
        ok=(("s1", "t"),),
    ),
    # --- no drift -----------------------------------------------------------------------
    Scenario("empty-table", "CREATE TABLE t (id serial PRIMARY KEY);", ok=("t",)),
    Scenario(
        "sequence-in-step",
        "CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) SELECT generate_series(1, 5);",
        ok=("t",),
    ),
    Scenario(
        "ids-below-sequence",
        "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) VALUES (1), (2), (3);"
        "SELECT setval('t_id_seq', 10);",
        ok=("t",),
    ),
    Scenario(
        "not-called-at-next-free",
        "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) SELECT generate_series(1, 5);"
        "SELECT setval('t_id_seq', 6, false);",
        ok=("t",),
    ),
    Scenario(
        "called-at-max",
        "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) SELECT generate_series(1, 5);"
        "SELECT setval('t_id_seq', 5);",
        ok=("t",),
    ),
    Scenario(
        "called-at-max-minus-1",
        "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) SELECT generate_series(1, 5);"
        "SELECT setval('t_id_seq', 4);",
        (collision("t", 5, 5, 0, 5),),
    ),
    Scenario(
        "not-called-at-max",
        "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) SELECT generate_series(1, 5);"
        "SELECT setval('t_id_seq', 5, false);",
        (collision("t", 5, 5, 0, 5),),
    ),
    # --- columns that cannot collide, or cannot be judged ----------------------------------
    Scenario(
        "no-unique-index",
        """CREATE TABLE t (id serial, v int); CREATE INDEX ON t (id);
           INSERT INTO t (id) VALUES (1), (2), (3);""",
        duplicates=("t",),
    ),
    Scenario(
        "not-plain-nextval",
        """CREATE SEQUENCE s;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s') * 16 + 3);
           INSERT INTO t (id) VALUES (19), (35);""",
        unchecked=("t",),
    ),
    # --- capacity -----------------------------------------------------------------------
    Scenario(
        "overflow-int-column-bigint-sequence",
        f"""CREATE SEQUENCE s AS bigint;
            CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
            SELECT setval('s', {INT_MAX - 647});""",
        (capacity("t", "overflow", INT_MAX - 646, 647, INT_MAX - 647),),
    ),
    Scenario(
        "pre-pg10-serial-far-from-2-31",
        """CREATE TABLE t (id serial PRIMARY KEY);
           ALTER SEQUENCE t_id_seq AS bigint;
           INSERT INTO t (id) VALUES (999999), (1000000);
           SELECT setval('t_id_seq', 1000000);""",
        ok=("t",),
    ),
    Scenario(
        "exhaustion-maxvalue-100",
        """CREATE SEQUENCE s MAXVALUE 100;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           SELECT setval('s', 90);""",
        (capacity("t", "exhaustion", 91, 10, 90),),
    ),
    Scenario(
        "widened-serial-integer-sequence",
        f"""CREATE TABLE t (id serial PRIMARY KEY);
            ALTER TABLE t ALTER COLUMN id TYPE bigint;
            SELECT setval('t_id_seq', {INT_MAX - 647});""",
        (capacity("t", "exhaustion", INT_MAX - 646, 647, INT_MAX - 647),),
    ),
    Scenario(
        "smallserial-near-32767",
        "CREATE TABLE t (id smallserial PRIMARY KEY); SELECT setval('t_id_seq', 32000);",
        (capacity("t", "exhaustion", 32001, 767, 32000),),
    ),
    Scenario(
        "negative-exhaustion-minvalue-100",
        """CREATE SEQUENCE s INCREMENT -1 MINVALUE -100 MAXVALUE -1;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           SELECT setval('s', -90);""",
        (capacity("t", "exhaustion", -91, 10, 90),),
    ),
    Scenario(
        "at-maxvalue-not-called",  # one value left: MAXVALUE itself
        """CREATE SEQUENCE s MAXVALUE 100;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           SELECT setval('s', 100, false);""",
        (capacity("t", "exhaustion", 100, 1, 99),),
    ),
    Scenario(
        "at-maxvalue-called",
        """CREATE SEQUENCE s MAXVALUE 100;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) VALUES (1), (50), (100);
           SELECT setval('s', 100);""",
        (capacity("t", "exhaustion", None, 0, 1),),
    ),
    Scenario(
        "fewer-values-left-than-rows",  # 70% used, 300 left, 400 rows already there
        """CREATE SEQUENCE s MAXVALUE 1000;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) SELECT generate_series(1, 400);
           SELECT setval('s', 700);""",
        (capacity("t", "exhaustion", 701, 300, 700),),
    ),
    Scenario(
        "as-many-values-left-as-rows",
        """CREATE SEQUENCE s MAXVALUE 1000;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           INSERT INTO t (id) SELECT generate_series(1, 300);
           SELECT setval('s', 700);""",
        ok=("t",),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(db: Conn, scenario: Scenario) -> None:
    db.execute(scenario.sql)
    report = check(db)
    assert_report(
        report,
        scenario.findings,
        ok=scenario.ok,
        duplicates=scenario.duplicates,
        unchecked=scenario.unchecked,
    )
    assert_fixes_clear(db, report)


@pytest.mark.parametrize(("threshold", "reported"), [(0.85, True), (0.9, True), (0.95, False)])
def test_capacity_threshold(db: Conn, threshold: float, reported: bool) -> None:
    db.execute(
        """CREATE SEQUENCE s MAXVALUE 100;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'));
           SELECT setval('s', 90);"""
    )
    expected = (capacity("t", "exhaustion", 91, 10, 90),) if reported else ()
    report = check(db, threshold=threshold)
    assert_report(report, expected, ok=() if reported else ("t",))


def test_partitioned_key_columns_name_the_partition_key(db: Conn) -> None:
    db.execute(
        """CREATE TABLE m (id serial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           INSERT INTO m (id, region) VALUES (1, 'eu');"""
    )
    (finding,) = check(db).findings
    assert finding.column.table == "m"
    assert finding.column.partitioned
    assert finding.column.key_columns == ("id", "region")


def test_smallest_unique_key_wins(db: Conn) -> None:
    db.execute(
        """CREATE TABLE t (id serial, region text, PRIMARY KEY (id, region), UNIQUE (id));
           INSERT INTO t (id, region) VALUES (1, 'eu');"""
    )
    (finding,) = check(db).findings
    assert finding.column.key_columns == ("id",)


DRIFT_IN_TWO_SCHEMAS = """
    CREATE SCHEMA s1;
    CREATE TABLE public.t (id serial PRIMARY KEY);
    CREATE TABLE public.t_log (id serial PRIMARY KEY);
    CREATE TABLE public.u (id serial PRIMARY KEY);
    CREATE TABLE s1.t (id serial PRIMARY KEY);
    INSERT INTO public.t (id) VALUES (1);
    INSERT INTO public.t_log (id) VALUES (1);
    INSERT INTO public.u (id) VALUES (1);
    INSERT INTO s1.t (id) VALUES (1);
"""


@pytest.mark.parametrize(
    ("options", "reported"),
    [
        ({}, {("public", "t"), ("public", "t_log"), ("public", "u"), ("s1", "t")}),
        ({"schemas": ["s1"]}, {("s1", "t")}),
        ({"schemas": ["public"]}, {("public", "t"), ("public", "t_log"), ("public", "u")}),
        ({"schemas": ["s1", "nowhere"]}, {("s1", "t")}),
        ({"schemas": []}, set()),
        ({"exclude_tables": ["t"]}, {("public", "t_log"), ("public", "u")}),
        ({"exclude_tables": ["public.t*"]}, {("public", "u"), ("s1", "t")}),
        ({"exclude_tables": ["s1.*", "u"]}, {("public", "t"), ("public", "t_log")}),
        ({"schemas": ["public"], "exclude_tables": ["*_log"]}, {("public", "t"), ("public", "u")}),
    ],
)
def test_schema_and_table_filters(
    db: Conn, options: dict[str, Any], reported: set[tuple[str, str]]
) -> None:
    db.execute(DRIFT_IN_TWO_SCHEMAS)
    report = check(db, **options)
    assert {(f.column.schema, f.column.table) for f in report.findings} == reported
    assert {(c.column.schema, c.column.table) for c in report.checked} == reported


@pytest.fixture
def reader(db: Conn) -> Iterator[str]:
    """A role of our own (roles are cluster-wide: a unique name, dropped afterwards)."""
    role = f"seqdrift_reader_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    yield role
    db.execute("RESET ROLE")
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_unreadable_tables_and_sequences_are_skipped(db: Conn, reader: str) -> None:
    db.execute(
        """CREATE TABLE readable (id serial PRIMARY KEY);
           CREATE TABLE hidden (id serial PRIMARY KEY);
           CREATE TABLE seq_hidden (id serial PRIMARY KEY);
           CREATE TABLE other_column (id serial PRIMARY KEY, v int);
           CREATE SCHEMA locked;
           CREATE TABLE locked.t (id serial PRIMARY KEY);
           INSERT INTO readable (id) VALUES (2);
           INSERT INTO hidden (id) VALUES (2);
           INSERT INTO seq_hidden (id) VALUES (2);
           INSERT INTO other_column (id) VALUES (2);
           INSERT INTO locked.t (id) VALUES (2);"""
    )
    role = sql.Identifier(reader)
    for grant in (
        "GRANT SELECT ON readable, readable_id_seq TO {}",
        "GRANT SELECT ON seq_hidden TO {}",
        "GRANT SELECT (v) ON other_column TO {}",
        "GRANT SELECT ON other_column_id_seq TO {}",
        # readable by privilege, yet behind a schema the role may not enter
        "GRANT SELECT ON locked.t, locked.t_id_seq TO {}",
    ):
        db.execute(sql.SQL(grant).format(role))
    db.execute(sql.SQL("SET ROLE {}").format(role))

    report = check(db)

    assert_report(
        report,
        (collision("readable", 1, 2, 1, 2),),
        skipped=("hidden", "seq_hidden", "other_column", ("locked", "t")),
    )
    reasons = {(s.schema, s.table, s.column): s.reason for s in report.skipped}
    assert all("permission denied" in reason for reason in reasons.values()), reasons
    assert "seq_hidden_id_seq" in reasons[("public", "seq_hidden", "id")]
    assert "locked" in reasons[("locked", "t", "id")]
    assert {s.sequence for s in report.skipped if s.table == "hidden"} == {"public.hidden_id_seq"}
    # the check left the connection as it was: still the role, still usable
    assert db.execute("SELECT current_user").fetchone() == (reader,)


def test_backslash_name_without_standard_conforming_strings(db: Conn) -> None:
    """pg_get_expr spells string literals after the session's setting: still plain."""
    db.execute(r"""CREATE TABLE "back\slash" (id serial PRIMARY KEY);
                   INSERT INTO "back\slash" (id) VALUES (2)""")
    db.execute("SET standard_conforming_strings = off")
    assert_report(check(db), (collision("back\\slash", 1, 2, 1, 2),))


def test_locked_table_is_skipped_not_waited_for(db: Conn) -> None:
    db.execute(
        """CREATE TABLE busy (id serial PRIMARY KEY); CREATE TABLE idle (id serial PRIMARY KEY);
           INSERT INTO busy (id) VALUES (1); INSERT INTO idle (id) VALUES (1);"""
    )
    with psycopg.connect(db.info.dsn) as migration:
        migration.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        report = check(db, lock_timeout_ms=50)
    assert_report(report, (collision("idle", 1, 1, 0, 1),), skipped=("busy",))
    (skipped,) = report.skipped
    assert "lock" in skipped.reason


def test_inside_the_callers_transaction(db: Conn) -> None:
    """The check sees the caller's uncommitted ids and leaves its transaction usable."""
    db.execute("CREATE TABLE t (id serial PRIMARY KEY)")
    with db.transaction(force_rollback=True):
        db.execute("INSERT INTO t (id) VALUES (4)")
        assert_report(check(db), (collision("t", 1, 4, 3, 4),))
        db.execute("INSERT INTO t (id) VALUES (5)")
    assert_report(check(db), (), ok=("t",))


def test_seed_story_json(db: Conn) -> None:
    db.execute(
        """CREATE TABLE profile_billingaddress (id serial PRIMARY KEY, street text);
           INSERT INTO profile_billingaddress (id, street)
           VALUES (7, 'a'), (9, 'b'), (12, 'c'), (14, 'd'), (16, 'e');"""
    )
    rendered = json.loads(json.dumps(as_dict(check(db))))
    assert {"findings", "checked"} <= set(rendered)
    (finding,) = rendered["findings"]
    fix_sql = finding.pop("fix_sql")
    assert finding == SEED_FINDING
    assert fix_sql.startswith("SELECT setval(")
    assert fix_sql.endswith(";")
    assert rendered["checked"] == [
        {
            "schema": "public",
            "table": "profile_billingaddress",
            "column": "id",
            "sequence": "public.profile_billingaddress_id_seq",
            "status": "finding",
        }
    ]


def test_fix_past_the_last_value_on_the_grid(db: psycopg.Connection[Any]) -> None:
    """INCREMENT 10 MAXVALUE 100 hands out 1, 11, ..., 91; ids 51 and 95 exist. Nothing is
    left past 95, but setval(51) leaves 61..91 free: the fix must find that."""
    db.execute(
        "CREATE SEQUENCE grid_seq INCREMENT 10 MAXVALUE 100;"
        "CREATE TABLE grid (id int PRIMARY KEY DEFAULT nextval('grid_seq'));"
        "INSERT INTO grid (id) VALUES (51), (95)"
    )
    (finding,) = [f for f in check(db).findings if f.kind == "collision"]
    assert (finding.first_collision, finding.inserts_until_collision) == (51, 5)
    assert "GREATEST(51, last_value)" in finding.fix_sql
    db.execute(finding.fix_sql)
    assert [f.kind for f in check(db).findings] == []
    inserted = [
        db.execute("INSERT INTO grid DEFAULT VALUES RETURNING id").fetchone() for _ in range(4)
    ]
    assert inserted == [(61,), (71,), (81,), (91,)]


def test_no_name_can_end_a_comment_in_the_fix(db: psycopg.Connection[Any]) -> None:
    """Commented advice (CYCLE wraps, overflow) quotes names: a table or sequence whose
    name holds a line break must not turn the rest of the line into SQL."""
    db.execute(
        'CREATE SEQUENCE "s\nDROP TABLE victim; --" MAXVALUE 10 CYCLE;'
        "SELECT setval('\"s\nDROP TABLE victim; --\"', 9);"
        'CREATE TABLE "t\nDROP TABLE victim; --" (id smallint PRIMARY KEY'
        " DEFAULT nextval('\"s\nDROP TABLE victim; --\"'));"
        'INSERT INTO "t\nDROP TABLE victim; --" VALUES (2);'
        "CREATE TABLE victim (x int)"
    )
    (finding,) = check(db).findings
    assert finding.after_wrap
    assert all(line.startswith("-- ") for line in finding.fix_sql.splitlines())
    db.execute(finding.fix_sql + "\nSELECT 1")
    assert db.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone() == (True,)
