"""An outside corpus of less common table shapes, judged against PostgreSQL itself.

No expected number is written down here. For each shape, a truth oracle
(tests/support/shapes.py) runs the application's own INSERT -- the id taken the way the
application takes it -- one at a time, in a transaction that is rolled back, and counts
the inserts that go in before PostgreSQL refuses one with a unique or exclusion
violation. ``check()`` and ``probe()`` must then say the same:

- the oracle sees a collision after k inserts: ``check()`` reports a collision for the
  column after k inserts, on the same value, with the same next value -- unless a
  trigger or rule decides what is stored, where it says "unchecked" and names it; and
  ``probe(mode="insert")`` reports that collision;
- the oracle sees none: neither reports one;
- ``probe()`` never raises, and leaves every sequence as it found it.

A shape also says whether it is built to collide (``collides``): the oracle must agree,
or the shape is not the one it claims to be. That is a check of the corpus, not of the
product.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from psycopg import sql
from support.cli import dsn, login_role, seqdrift
from support.shapes import (
    Judged,
    Truth,
    Where,
    check_problems,
    collisions,
    probe_problems,
    said,
    sequence_states,
    truth,
    verdicts,
)

from pytest_seqdrift import check
from pytest_seqdrift.db.aio import AsyncpgSession, AsyncPsycopgSession, on_loop
from pytest_seqdrift.db.drivers import PsycopgSession
from pytest_seqdrift.db.session import Session
from pytest_seqdrift.model import Report
from pytest_seqdrift.probe import Mode, ProbeReport, probe
from pytest_seqdrift.read import prepared, remembered
from pytest_seqdrift.render import as_dict

Conn = psycopg.Connection[Any]
T = TypeVar("T")
LIMIT = 200  # inserts the oracle tries; every shape's collision is well within it

_RESET = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP
        EXECUTE format('DROP EXTENSION %I CASCADE', name);
    END LOOP;
    FOR name IN SELECT nspname FROM pg_namespace
                WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                  AND nspname NOT LIKE 'pg\\_%' LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', name);
    END LOOP;
END $$;
CREATE SCHEMA public AUTHORIZATION pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
"""


@pytest.fixture(scope="module")
def shapes_database(postgresql_proc: Any) -> Iterator[dict[str, Any]]:
    """One database for the module: a fresh database per test costs more than all of a
    shape's inserts. ``db`` empties it before each test."""
    proc = postgresql_proc
    params = {"host": proc.host, "port": proc.port, "user": proc.user}
    if proc.password:
        params["password"] = proc.password
    name = "seqdrift_shapes"
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    yield {**params, "dbname": name}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db(shapes_database: dict[str, Any]) -> Iterator[Conn]:
    """The module's database, emptied: every schema but the system's dropped, every
    extension but plpgsql, and an empty public schema as CREATE DATABASE makes it."""
    with psycopg.connect(autocommit=True, **shapes_database) as conn:
        conn.execute(_RESET)
        yield conn


@dataclass(frozen=True)
class Shape:
    id: str
    sql: str  # builds the shape (one script)
    insert: str  # the application's INSERT: it takes the column's value as the app does
    collides: bool  # what the shape is built to do (the oracle says how, and when)
    # other INSERTs the application may send: another value for the rest of a composite
    # key, a row routed to another partition. The check cannot know which one comes, so
    # the truth is the earliest collision any of them meets (each run on its own)
    others: tuple[str, ...] = ()
    table: str = "t"
    column: str = "id"
    judged: Judged = "exact"
    names: str | None = None  # what an "unchecked" note must name (trigger, rule, function)
    statuses: tuple[str, ...] = ("ok",)  # allowed verdicts where nothing collides
    prepare: tuple[str, ...] = ()  # run inside the oracle's transaction, before the inserts
    failing: tuple[str, ...] = ()  # run after ``sql``, one at a time: each must fail
    probe_past_max: bool = True  # False: the probe need find only collisions before the max
    limit: int = LIMIT
    server: int = 0  # the lowest server_version_num the shape needs
    extension: str | None = None  # an extension the shape needs, skipped where not available

    @property
    def where(self) -> Where:
        return "public", self.table, self.column


def build(db: Conn, shape: Shape) -> None:
    __tracebackhide__ = True
    (version,) = db.execute("SHOW server_version_num").fetchone() or (0,)
    if int(version) < shape.server:
        pytest.skip(f"needs server_version_num {shape.server}, this server is {version}")
    if shape.extension is not None:
        row = db.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = %s", [shape.extension]
        ).fetchone()
        if row is None:
            pytest.skip(f"the {shape.extension} extension is not available")
    db.execute(shape.sql)
    for statement in shape.failing:
        with pytest.raises(psycopg.Error):
            db.execute(statement)


def oracle(db: Conn, shape: Shape) -> Truth:
    __tracebackhide__ = True
    told = [
        truth(
            db,
            table=shape.table,
            column=shape.column,
            insert=insert,
            limit=shape.limit,
            prepare=shape.prepare,
        )
        for insert in (shape.insert, *shape.others)
    ]
    colliding = [t for t in told if t.inserts is not None]
    t = min(colliding, key=lambda t: t.inserts or 0) if colliding else told[0]
    built = "a collision" if shape.collides else "no collision"
    assert t.collides == shape.collides, f"the shape is built for {built}, the oracle says {t}"
    return t


def assert_agrees(db: Conn, shape: Shape) -> None:
    """The shape built, the oracle asked, check() and probe() compared with it."""
    __tracebackhide__ = True
    build(db, shape)
    t = oracle(db, shape)
    problems: list[str] = []
    report = attempt(problems, "check()", lambda: check(db))
    if report is not None:
        problems += check_problems(
            report, shape.where, t, judged=shape.judged, names=shape.names, statuses=shape.statuses
        )
    modes: tuple[Mode, ...] = ("insert", "default")
    for mode in modes:
        before = sequence_states(db)
        result = attempt(
            problems, f"probe({mode})", partial(probe, db, mode=mode, limit=shape.limit)
        )
        after = sequence_states(db)
        if result is not None and mode == "insert":
            must_find = shape.probe_past_max or not t.passed_max
            problems += probe_problems(result, shape.where, t, must_find=must_find)
        moved = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
        if moved:
            problems.append(f"probe({mode}): sequences not put back (before, after): {moved}")
    assert not problems, f"{shape.id}: the oracle: {t}\n  " + "\n  ".join(problems)


def attempt(problems: list[str], what: str, call: Callable[[], T]) -> T | None:
    """``call()``; where it raises, the exception joins ``problems`` (the session is
    rolled back) and None is returned: one shape's report names every disagreement."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 -- never raising is part of the contract
        problems.append(f"{what} raised {type(exc).__name__}: {exc}")
        return None


def ids(shapes: list[Shape]) -> list[str]:
    return [s.id for s in shapes]


# -- the oracle itself -------------------------------------------------------------------


def test_the_oracle_tells_the_seed_story(db: Conn) -> None:
    """The one number written down: the seed story (7, 9, 12, 14, 16 copied in, the
    sequence at its start) breaks on the seventh insert, on 7."""
    db.execute(
        "CREATE TABLE t (id serial PRIMARY KEY, v int);"
        "INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);"
    )
    before = sequence_states(db)
    t = truth(db, table="t", column="id", insert="INSERT INTO t (v) VALUES (0)")
    assert (t.inserts, t.value, t.first, t.passed_max) == (6, 7, 1, False)
    assert sequence_states(db) == before
    far = truth(db, table="t", column="id", insert="INSERT INTO t (v) VALUES (0)", limit=3)
    assert (far.inserts, far.first) == (None, 1)


def test_the_oracle_finds_the_value_behind_an_expression(db: Conn) -> None:
    """Where the error spells the expression's value (id * 2 = 14), the oracle still
    gives the column's (7)."""
    db.execute(
        "CREATE TABLE t (id serial, g int GENERATED ALWAYS AS (id * 2) STORED UNIQUE, v int);"
        "INSERT INTO t (id) VALUES (7);"
    )
    t = truth(db, table="t", column="id", insert="INSERT INTO t (v) VALUES (0)")
    assert (t.inserts, t.value, t.first) == (6, 7, 1)


# -- 1. which keys count -----------------------------------------------------------------

PARTIAL = """
CREATE TABLE t (id {type}, active boolean NOT NULL DEFAULT true, v int);
CREATE UNIQUE INDEX t_active_id ON t (id) WHERE active;
"""

KEYS = [
    # partial unique indexes: only the rows the predicate admits collide
    Shape(
        "partial-serial-inactive-rows-first",
        PARTIAL.format(type="serial")
        + """INSERT INTO t (id, active) SELECT i, false FROM generate_series(3, 8) AS i;
             INSERT INTO t (id, active) VALUES (9, true), (12, true), (13, false);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "partial-identity-bigint-increment-3",
        PARTIAL.format(type="bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT 3)")
        + """INSERT INTO t (id, active) VALUES
                 (1, false), (4, false), (7, false), (8, true), (10, true), (13, false);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "partial-free-sequence-next-insert-fails",
        "CREATE SEQUENCE s;"
        + PARTIAL.format(type="int DEFAULT nextval('s')")
        + "INSERT INTO t (id, active) VALUES (1, true), (2, false), (3, false);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "partial-serial-far",
        PARTIAL.format(type="serial")
        + """INSERT INTO t (id, active) SELECT i, false FROM generate_series(1, 100) AS i;
             INSERT INTO t (id, active) VALUES (120, true);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "partial-only-inactive-rows-ahead",
        PARTIAL.format(type="serial")
        + """INSERT INTO t (id, active) SELECT i, i <= 10 FROM generate_series(1, 40) AS i;
             SELECT setval('t_id_seq', 10);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "partial-soft-delete",
        """CREATE TABLE t (id bigserial, deleted_at timestamptz, v int);
           CREATE UNIQUE INDEX t_live_id ON t (id) WHERE deleted_at IS NULL;
           INSERT INTO t (id, deleted_at) SELECT i, now() FROM generate_series(2, 6) AS i;
           INSERT INTO t (id) VALUES (7);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "partial-predicate-on-the-id",  # odd ids are outside the index, and repeat
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_even_id ON t (id) WHERE id % 2 = 0;
           INSERT INTO t (id) VALUES (3), (3), (5), (8);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    # unique indexes on an expression of the id, or on a column generated from it
    Shape(
        "expression-id-text",
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_id_text ON t ((id::text));
           INSERT INTO t (id) VALUES (5), (6), (9);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "expression-id-bigint-identity-increment-2",
        """CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY (INCREMENT 2), v int);
           CREATE UNIQUE INDEX t_id_big ON t ((id::bigint));
           INSERT INTO t (id) VALUES (6), (7), (20);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "expression-id-times-2-next-insert-fails",
        """CREATE SEQUENCE s;
           CREATE TABLE t (id bigint DEFAULT nextval('s'), v int);
           CREATE UNIQUE INDEX t_id_twice ON t ((id * 2));
           INSERT INTO t (id) VALUES (1), (2);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "expression-id-text-past-the-max",
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_id_text ON t ((id::text));
           INSERT INTO t (id) VALUES (2), (5);
           SELECT setval('t_id_seq', 5);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "generated-column-bigserial-far",
        """CREATE TABLE t (id bigserial, g bigint GENERATED ALWAYS AS (id * 2) STORED UNIQUE,
                          v int);
           INSERT INTO t (id) SELECT generate_series(40, 45);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "generated-column-identity-always",
        """CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY,
                          g bigint GENERATED ALWAYS AS (id * 2) STORED UNIQUE, v int);
           INSERT INTO t (id) OVERRIDING SYSTEM VALUE VALUES (3), (4);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    # a key that is not injective: exact, or unchecked with a note -- never "ok"
    Shape(
        "modulo-1000-before-the-max",  # 3 runs into 1003
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_id_mod ON t ((id % 1000));
           INSERT INTO t (id) VALUES (5), (1003);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        probe_past_max=False,
    ),
    Shape(
        "modulo-1000-past-the-max",  # 1005 runs into 5
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_id_mod ON t ((id % 1000));
           INSERT INTO t (id) VALUES (5), (6);
           SELECT setval('t_id_seq', 1000);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        probe_past_max=False,
    ),
    Shape(
        "modulo-1000-far",  # 6 .. 1004 go in, 1005 runs into 5
        """CREATE TABLE t (id serial, v int);
           CREATE UNIQUE INDEX t_id_mod ON t ((id % 1000));
           INSERT INTO t (id) VALUES (5);
           SELECT setval('t_id_seq', 5);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        probe_past_max=False,
        limit=1100,
    ),
    Shape(
        "divide-by-10-increment-10",  # 10, 20, 30, then 40 runs into 47 (both 4)
        """CREATE SEQUENCE s START 10 INCREMENT 10;
           CREATE TABLE t (id int DEFAULT nextval('s'), v int);
           CREATE UNIQUE INDEX t_id_tens ON t ((id / 10));
           INSERT INTO t (id) VALUES (5), (47);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        probe_past_max=False,
    ),
    Shape(
        "divide-by-10-increment-10-past-the-rows",  # 30, 40 ... never share a ten with 5, 15
        """CREATE SEQUENCE s START 10 INCREMENT 10;
           CREATE TABLE t (id int DEFAULT nextval('s'), v int);
           CREATE UNIQUE INDEX t_id_tens ON t ((id / 10));
           INSERT INTO t (id) VALUES (5), (15);
           SELECT setval('s', 20);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="loose",
    ),
    # exclusion constraints with =
    Shape(
        "exclude-btree-serial",
        """CREATE TABLE t (id serial, v int, EXCLUDE USING btree (id WITH =));
           INSERT INTO t (id) VALUES (3), (4), (9);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "exclude-btree-identity-bigint-increment-5",
        """CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT 5), v int,
                          EXCLUDE USING btree (id WITH =));
           INSERT INTO t (id) VALUES (3), (11), (16);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "exclude-btree-past-the-max",
        """CREATE TABLE t (id serial, v int, EXCLUDE USING btree (id WITH =));
           INSERT INTO t (id) SELECT generate_series(1, 5);
           SELECT setval('t_id_seq', 5);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "exclude-gist-free-sequence",
        """CREATE EXTENSION IF NOT EXISTS btree_gist;
           CREATE SEQUENCE s;
           CREATE TABLE t (id int DEFAULT nextval('s'), v int, EXCLUDE USING gist (id WITH =));
           INSERT INTO t (id) VALUES (2), (50);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        extension="btree_gist",
    ),
    # indexes that enforce nothing
    Shape(
        "failed-concurrent-index-serial",
        """CREATE TABLE t (id serial, v int);
           INSERT INTO t (id) VALUES (1), (1), (2), (2), (3);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        statuses=("ok", "duplicates"),
        failing=("CREATE UNIQUE INDEX CONCURRENTLY t_id_uq ON t (id)",),
    ),
    Shape(
        "failed-concurrent-index-identity-increment-2",
        """CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT 2), v int);
           INSERT INTO t (id) VALUES (1), (1), (3), (5), (5);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        statuses=("ok", "duplicates"),
        failing=("CREATE UNIQUE INDEX CONCURRENTLY t_id_uq ON t (id)",),
    ),
    Shape(
        "index-on-only-parent",
        """CREATE TABLE m (id bigserial, region text NOT NULL) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           CREATE UNIQUE INDEX m_id_region ON ONLY m (id, region);
           INSERT INTO m (id, region) SELECT i, 'us' FROM generate_series(1, 5) AS i;""",
        "INSERT INTO m (region) VALUES ('us')",
        collides=False,
        table="m",
        statuses=("ok", "duplicates"),
    ),
    Shape(
        "index-on-only-parent-free-sequence-increment-2",
        """CREATE SEQUENCE s INCREMENT 2;
           CREATE TABLE m (id int DEFAULT nextval('s'), region text NOT NULL)
               PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           CREATE UNIQUE INDEX m_id_region ON ONLY m (id, region);
           INSERT INTO m (id, region) SELECT i, 'eu' FROM generate_series(1, 9) AS i;""",
        "INSERT INTO m (region) VALUES ('eu')",
        collides=False,
        table="m",
        statuses=("ok", "duplicates"),
    ),
    Shape(
        "index-on-only-parent-one-partition-attached",  # m_us's own index enforces
        """CREATE TABLE m (id bigserial, region text NOT NULL) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           CREATE UNIQUE INDEX m_id_region ON ONLY m (id, region);
           CREATE UNIQUE INDEX m_us_id_region ON m_us (id, region);
           ALTER INDEX m_id_region ATTACH PARTITION m_us_id_region;
           INSERT INTO m (id, region) VALUES (3, 'us'), (4, 'eu');""",
        "INSERT INTO m (region) VALUES ('us')",
        collides=True,
        table="m",
    ),
    # composite keys with NULLs
    Shape(
        "nulls-distinct-every-tag-null",
        """CREATE TABLE t (id serial, tag text, UNIQUE (id, tag));
           INSERT INTO t (id) SELECT generate_series(1, 10);""",
        "INSERT INTO t (tag) VALUES ('x')",
        collides=False,
    ),
    Shape(
        # every insert has tag NULL: under NULLS DISTINCT it never collides, but the
        # application may as well send 'x', which collides at once
        "nulls-distinct-inserting-null-or-x",
        """CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY, tag text,
                          UNIQUE (id, tag));
           INSERT INTO t (id, tag) SELECT i, 'x' FROM generate_series(1, 10) AS i;""",
        "INSERT INTO t (tag) VALUES (NULL)",
        collides=True,
        others=("INSERT INTO t (tag) VALUES ('x')",),
    ),
    Shape(
        "nulls-distinct-some-tags-x",
        """CREATE TABLE t (id serial, tag text, UNIQUE (id, tag));
           INSERT INTO t (id, tag) VALUES (3, NULL), (4, 'y'), (6, 'x'), (7, 'x');""",
        "INSERT INTO t (tag) VALUES ('x')",
        collides=True,
        others=("INSERT INTO t (tag) VALUES ('y')", "INSERT INTO t (tag) VALUES (NULL)"),
    ),
    Shape(
        "nulls-distinct-some-tags-x-bigint-increment-2",
        """CREATE SEQUENCE s AS bigint INCREMENT 2;
           CREATE TABLE t (id bigint DEFAULT nextval('s'), tag text, UNIQUE (id, tag));
           INSERT INTO t (id, tag) VALUES (5, NULL), (7, 'x'), (8, 'x');""",
        "INSERT INTO t (tag) VALUES ('x')",
        collides=True,
        others=("INSERT INTO t (tag) VALUES (NULL)",),
    ),
    Shape(
        "nulls-not-distinct-inserting-null",
        """CREATE TABLE t (id serial, tag text, UNIQUE NULLS NOT DISTINCT (id, tag));
           INSERT INTO t (id, tag) VALUES (3, NULL), (4, NULL), (9, 'x');""",
        "INSERT INTO t (tag) VALUES (NULL)",
        collides=True,
        others=("INSERT INTO t (tag) VALUES ('x')",),
        server=150000,
    ),
    Shape(
        # 'x' never collides; NULL does, on 3, as 'y' would on 5
        "nulls-not-distinct-inserting-x-or-null",
        """CREATE TABLE t (id serial, tag text, UNIQUE NULLS NOT DISTINCT (id, tag));
           INSERT INTO t (id, tag) VALUES (3, NULL), (4, NULL), (5, 'y');""",
        "INSERT INTO t (tag) VALUES ('x')",
        collides=True,
        others=("INSERT INTO t (tag) VALUES (NULL)", "INSERT INTO t (tag) VALUES ('y')"),
        server=150000,
    ),
    # a partitioned parent with no key, its partitions with their own
    Shape(
        "partition-of-then-own-primary-key",
        """CREATE TABLE m (id bigserial, region text NOT NULL) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           ALTER TABLE m_eu ADD PRIMARY KEY (id);
           ALTER TABLE m_us ADD PRIMARY KEY (id);
           INSERT INTO m_us (id, region) VALUES (4, 'us'), (6, 'us');
           INSERT INTO m_eu (id, region) VALUES (2, 'eu');""",
        "INSERT INTO m (region) VALUES ('us')",
        collides=True,
        others=("INSERT INTO m (region) VALUES ('eu')",),
        table="m",
    ),
    Shape(
        "standalone-partitions-attached-next-insert-fails",
        """CREATE TABLE m (id bigserial, region text NOT NULL) PARTITION BY LIST (region);
           CREATE TABLE m_us (id bigint PRIMARY KEY, region text NOT NULL);
           CREATE TABLE m_eu (id bigint PRIMARY KEY, region text NOT NULL);
           INSERT INTO m_us VALUES (1, 'us'), (2, 'us'), (9, 'us');
           ALTER TABLE m ATTACH PARTITION m_us FOR VALUES IN ('us');
           ALTER TABLE m ATTACH PARTITION m_eu FOR VALUES IN ('eu');""",
        "INSERT INTO m (region) VALUES ('us')",
        collides=True,
        others=("INSERT INTO m (region) VALUES ('eu')",),
        table="m",
    ),
    Shape(
        "standalone-partitions-attached-increment-3-far",
        """CREATE SEQUENCE s INCREMENT 3;
           CREATE TABLE m (id int DEFAULT nextval('s'), region text NOT NULL)
               PARTITION BY LIST (region);
           CREATE TABLE m_us (id int PRIMARY KEY, region text NOT NULL);
           CREATE TABLE m_eu (id int, region text NOT NULL);
           ALTER TABLE m ATTACH PARTITION m_us FOR VALUES IN ('us');
           ALTER TABLE m ATTACH PARTITION m_eu FOR VALUES IN ('eu');
           INSERT INTO m_us (id, region) VALUES (100, 'us'), (103, 'us');
           INSERT INTO m_eu (id, region) VALUES (1, 'eu'), (4, 'eu');""",
        "INSERT INTO m (region) VALUES ('us')",
        collides=True,
        others=("INSERT INTO m (region) VALUES ('eu')",),
        table="m",
    ),
]


@pytest.mark.parametrize("shape", KEYS, ids=ids(KEYS))
def test_which_keys_count(db: Conn, shape: Shape) -> None:
    assert_agrees(db, shape)


@pytest.mark.parametrize(
    "shape", [s for s in KEYS if s.id.startswith("partial-")], ids=lambda s: s.id
)
def test_a_row_outside_the_predicate_breaks_nothing(db: Conn, shape: Shape) -> None:
    """Inserting a row the partial index does not admit never fails; check() assumes the
    new row is admitted, so only: nothing raises, and every sequence is put back."""
    build(db, shape)
    outside = (
        "INSERT INTO t (v, deleted_at) VALUES (0, now())"
        if "deleted_at" in shape.sql
        else "INSERT INTO t (v, active) VALUES (0, false)"
        if "active" in shape.sql
        else "INSERT INTO t (id) VALUES (nextval('t_id_seq') * 2 + 1)"
    )
    t = truth(db, table=shape.table, column=shape.column, insert=outside)
    assert not t.collides, t
    check(db)
    before = sequence_states(db)
    probe(db, mode="insert", limit=LIMIT)
    assert sequence_states(db) == before


# -- 2. how many values one INSERT draws -------------------------------------------------

TWO_COLUMNS = """
CREATE SEQUENCE s {options};
CREATE TABLE t (a {type} DEFAULT nextval('s') CONSTRAINT t_a_key UNIQUE,
                b {type} DEFAULT nextval('s') CONSTRAINT t_b_key UNIQUE, v int);
"""

IDENTITY_AND_ITS_SEQUENCE = """
CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                ref int CONSTRAINT t_ref_key UNIQUE, v int);
ALTER TABLE t ALTER ref SET DEFAULT {default};
INSERT INTO t (id, ref) VALUES (7, 100), (8, 10);
"""

AUDIT = """
CREATE SEQUENCE s;
CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'), v int);
CREATE TABLE audit (id int PRIMARY KEY DEFAULT nextval('s'), t_id int);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (t_id) VALUES (NEW.id); RETURN NULL; END $$;
CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_row();
"""

RULE = """
CREATE TABLE t (id serial PRIMARY KEY, v int);
CREATE TABLE log (t_id int);
CREATE RULE t_log_rule AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (NEW.id);
"""

RENUMBER = """
CREATE SEQUENCE other_seq START {start};
CREATE TABLE t (id serial PRIMARY KEY, v int);
CREATE FUNCTION renumber() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.id := nextval('other_seq'); RETURN NEW; END $$;
INSERT INTO t (id) VALUES {rows};
CREATE TRIGGER t_renumber BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION renumber();
"""

FILL_ID = """
CREATE SEQUENCE t_seq {options};
CREATE TABLE t (id {type} PRIMARY KEY, v int);
CREATE FUNCTION fill_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS NULL THEN NEW.id := nextval('{seq}'); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER t_fill_id BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION fill_id();
"""

NEXT_ID = """
CREATE SEQUENCE ids;
{function};
CREATE TABLE t (id bigint PRIMARY KEY DEFAULT next_id(), v int);
"""

TOUCH = """
CREATE TABLE t (id {type} PRIMARY KEY, v int, updated_at timestamptz);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER t_touch BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch();
"""

DRAWS = [
    # one sequence feeding two columns: each insert draws twice. Each column is judged
    # on its own key: the oracle drops the other column's.
    Shape(
        "two-columns-one-sequence-a",  # a gets 1, 3, 5 ...
        TWO_COLUMNS.format(options="", type="int")
        + "INSERT INTO t (a, b) VALUES (11, 1000), (1001, 20), (10, 2000);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="a",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_b_key",),
    ),
    Shape(
        "two-columns-one-sequence-b",  # b gets 2, 4, 6 ...
        TWO_COLUMNS.format(options="", type="int")
        + "INSERT INTO t (a, b) VALUES (11, 1000), (1001, 20), (10, 2000);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="b",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_a_key",),
    ),
    Shape(
        "two-columns-bigint-increment-2-a",  # a gets 1, 5, 9, 13; 7 is never reached
        TWO_COLUMNS.format(options="AS bigint INCREMENT 2", type="bigint")
        + "INSERT INTO t (a, b) VALUES (7, 1000), (13, 1001), (1003, 11);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="a",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_b_key",),
    ),
    Shape(
        "two-columns-bigint-increment-2-b",  # b gets 3, 7, 11
        TWO_COLUMNS.format(options="AS bigint INCREMENT 2", type="bigint")
        + "INSERT INTO t (a, b) VALUES (7, 1000), (13, 1001), (1003, 11);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="b",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_a_key",),
    ),
    Shape(
        "two-columns-only-one-keyed",  # a gets 1, 3, 5, 7: 6 is never reached
        """CREATE SEQUENCE s;
           CREATE TABLE t (a int PRIMARY KEY DEFAULT nextval('s'), b int DEFAULT nextval('s'),
                           v int);
           INSERT INTO t (a, b) VALUES (6, 0), (7, 0);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="a",
    ),
    Shape(
        "two-columns-other-parity-only",  # a gets 51, 53 ...: 52 and 54 are b's to take
        TWO_COLUMNS.format(options="", type="int")
        + "INSERT INTO t (a, b) VALUES (52, 1000), (54, 1001); SELECT setval('s', 50);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        column="a",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_b_key",),
    ),
    Shape(
        "identity-and-a-default-on-its-sequence-id",
        IDENTITY_AND_ITS_SEQUENCE.format(default="nextval('t_id_seq')"),
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        prepare=("ALTER TABLE t DROP CONSTRAINT t_ref_key",),
    ),
    Shape(
        "identity-and-a-default-on-its-sequence-ref",
        IDENTITY_AND_ITS_SEQUENCE.format(default="nextval('t_id_seq')"),
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="ref",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_pkey",),
    ),
    Shape(
        "identity-and-pg-get-serial-sequence-default-id",
        IDENTITY_AND_ITS_SEQUENCE.format(default="nextval(pg_get_serial_sequence('t', 'id'))"),
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_ref_key",),
    ),
    Shape(
        "identity-and-pg-get-serial-sequence-default-ref",
        IDENTITY_AND_ITS_SEQUENCE.format(default="nextval(pg_get_serial_sequence('t', 'id'))"),
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        column="ref",
        judged="loose",
        prepare=("ALTER TABLE t DROP CONSTRAINT t_pkey",),
    ),
    # triggers and rules that draw, or that decide what is stored
    Shape(
        "after-trigger-audit-draws-the-same-sequence",
        AUDIT + "INSERT INTO t (id) VALUES (9), (10);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="t_audit",
    ),
    Shape(
        "after-trigger-audit-other-parity-only",  # t gets 11, 13 ...; audit 12, 14 ...
        AUDIT + "INSERT INTO t (id) VALUES (12), (14); SELECT setval('s', 10);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="loose",
        names="t_audit",
    ),
    Shape(
        "rule-also-insert-draws-again",  # NEW.id is the default: the rule draws too
        RULE + "INSERT INTO t (id) VALUES (5), (7);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="t_log_rule",
    ),
    Shape(
        "rule-also-insert-other-parity-only",
        RULE + "INSERT INTO t (id) VALUES (4), (6);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="loose",
        names="t_log_rule",
    ),
    Shape(
        "before-trigger-renumbers-from-another-sequence",
        RENUMBER.format(start=100, rows="(103), (104)"),
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="decided",
        names="t_renumber",
    ),
    Shape(
        "before-trigger-renumbers-past-the-rows",  # the default alone would collide at once
        RENUMBER.format(start=1000, rows="(1), (2), (3), (4), (5)"),
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="decided",
        names="t_renumber",
    ),
    Shape(
        "before-trigger-fills-an-id-without-default",
        FILL_ID.format(options="", type="int", seq="t_seq") + "INSERT INTO t (id) VALUES (4), (5);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="decided",
        names="t_fill_id",
    ),
    Shape(
        "before-trigger-fills-a-bigint-id-increment-10",
        FILL_ID.format(options="AS bigint INCREMENT 10", type="bigint", seq="public.t_seq")
        + "INSERT INTO t (id) VALUES (41), (42);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="decided",
        names="t_fill_id",
    ),
    Shape(
        "before-trigger-fills-an-id-past-the-rows",
        FILL_ID.format(options="", type="int", seq="t_seq")
        + "INSERT INTO t (id) VALUES (1), (2); SELECT setval('t_seq', 2);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="decided",
        names="t_fill_id",
    ),
    Shape(
        "default-sql-function-calls-nextval",
        NEXT_ID.format(
            function="CREATE FUNCTION next_id() RETURNS bigint LANGUAGE sql "
            "AS 'SELECT nextval(''ids'')'"
        )
        + "INSERT INTO t (id) VALUES (3), (4);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="next_id",
    ),
    Shape(
        "default-plpgsql-function-offsets-nextval",
        NEXT_ID.format(
            function="CREATE FUNCTION next_id() RETURNS bigint LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN 1000 + nextval('ids'); END $$"
        )
        + "INSERT INTO t (id) VALUES (1005), (1006);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="next_id",
    ),
    Shape(
        "default-sql-standard-function-next-insert-fails",
        NEXT_ID.format(
            function="CREATE FUNCTION next_id() RETURNS bigint LANGUAGE sql RETURN nextval('ids')"
        )
        + "INSERT INTO t (id) VALUES (1);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="next_id",
        server=140000,
    ),
    Shape(
        "default-sql-function-past-the-rows",
        NEXT_ID.format(
            function="CREATE FUNCTION next_id() RETURNS bigint LANGUAGE sql "
            "AS 'SELECT nextval(''ids'')'"
        )
        + "INSERT INTO t (id) VALUES (1), (2); SELECT setval('ids', 2);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="loose",
        names="next_id",
    ),
    # a harmless trigger: "unchecked" is allowed, a wrong number never
    Shape(
        "harmless-before-trigger-serial",
        TOUCH.format(type="serial") + "INSERT INTO t (id) VALUES (5), (6);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="t_touch",
    ),
    Shape(
        "harmless-before-trigger-identity-bigint-increment-2",
        TOUCH.format(type="bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT 2)")
        + "INSERT INTO t (id) VALUES (4), (7);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
        judged="loose",
        names="t_touch",
    ),
    Shape(
        "harmless-before-trigger-past-the-rows",
        TOUCH.format(type="serial")
        + "INSERT INTO t (id) VALUES (1), (2); SELECT setval('t_id_seq', 2);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
        judged="loose",
        names="t_touch",
    ),
]


@pytest.mark.parametrize("shape", DRAWS, ids=ids(DRAWS))
def test_values_one_insert_draws(db: Conn, shape: Shape) -> None:
    assert_agrees(db, shape)


# -- 3. which rows the checker sees: row-level security ----------------------------------

RLS_TABLES = {
    "serial": """
        CREATE TABLE t (id serial PRIMARY KEY, v int);
        INSERT INTO t (id) SELECT generate_series(1, 10);
        INSERT INTO t (id) VALUES (40), (41);
        SELECT setval('t_id_seq', 10);
    """,
    "identity-bigint-increment-3": """
        CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT 3) PRIMARY KEY,
                        v int);
        INSERT INTO t (id) VALUES (1), (4), (7), (31), (100);
        SELECT setval(pg_get_serial_sequence('t', 'id'), 7);
    """,
}
# rows above 20 are hidden from everyone the policy applies to
RLS = """
ALTER TABLE t ENABLE ROW LEVEL SECURITY;
CREATE POLICY t_low_ids ON t USING (id <= 20);
"""
ROW_LEVEL_SECURITY = re.compile(r"row[- ]level security", re.IGNORECASE)

# who checks: (hidden rows, set-up of the role); the role is {role}
WHO = {
    "reader": (True, "GRANT SELECT ON t TO {role}"),
    "owner-forced": (True, "ALTER TABLE t OWNER TO {role}; ALTER TABLE t FORCE ROW LEVEL SECURITY"),
    "reader-bypassrls": (False, "GRANT SELECT ON t TO {role}; ALTER ROLE {role} BYPASSRLS"),
    "owner": (False, "ALTER TABLE t OWNER TO {role}"),
    "superuser": (False, ""),
}


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("table", list(RLS_TABLES))
def test_rows_hidden_by_row_level_security(db: Conn, table: str, who: str) -> None:
    """A role that RLS hides rows from must never judge the column on what it sees: the
    column is skipped, with the reason. A role that sees every row gets the exact
    finding."""
    db.execute(RLS_TABLES[table] + RLS)
    t = truth(db, table="t", column="id", insert="INSERT INTO t (v) VALUES (0)")
    assert t.collides, t  # the hidden rows are the ones in the way
    where: Where = ("public", "t", "id")
    hidden, setup = WHO[who]
    if who == "superuser":
        report = check(db)
    else:
        with login_role(db) as role:
            ident = sql.Identifier(role).as_string(db)
            db.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")
            db.execute(
                sql.SQL("GRANT SELECT ON SEQUENCE {} TO {}").format(
                    sql.SQL(one_value(db, "SELECT pg_get_serial_sequence('t', 'id')")),
                    sql.Identifier(role),
                )
            )
            db.execute(setup.format(role=ident))
            with psycopg.connect(db.info.dsn, user=role, autocommit=True) as conn:
                report = check(conn)
    message = f"check() as {who}: {said(report, where)}; the oracle (as superuser): {t}"
    if hidden:
        skipped = [s for s in report.skipped if (s.schema, s.table, s.column) == where]
        assert skipped, message
        assert all(ROW_LEVEL_SECURITY.search(s.reason) for s in skipped), message
        assert not verdicts(report, where), message  # skipped, not also judged
    else:
        problems = check_problems(report, where, t)
        assert not problems, message + "\n  " + "\n  ".join(problems)


def one_value(db: Conn, query: str) -> Any:
    row = db.execute(query).fetchone()
    assert row is not None
    return row[0]


# -- 4. discovery gaps -------------------------------------------------------------------

OLD_STYLE = """
CREATE SEQUENCE s {options};
CREATE TABLE t (id {type} PRIMARY KEY DEFAULT nextval('{seq}'::text), v int);
"""

DOMAINS = """
CREATE DOMAIN id_base AS {type};
CREATE DOMAIN id_t AS id_base CHECK (VALUE > 0);
CREATE TABLE t (id id_t PRIMARY KEY, v int);
CREATE SEQUENCE t_id_seq AS {type} {options} OWNED BY t.id;
ALTER TABLE t ALTER id SET DEFAULT nextval('t_id_seq');
"""

CYCLE = """
CREATE SEQUENCE s {options} CYCLE;
CREATE TABLE t (id {type} PRIMARY KEY DEFAULT nextval('s'), v int);
"""

DISCOVERY = [
    # an old-style default: nextval('s'::text) leaves no dependency on the sequence
    Shape(
        "old-style-text-default",
        OLD_STYLE.format(options="", type="int", seq="s") + "INSERT INTO t (id) VALUES (3), (4);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "old-style-text-default-bigint-increment-2",
        OLD_STYLE.format(options="AS bigint INCREMENT 2", type="bigint", seq="public.s")
        + "INSERT INTO t (id) VALUES (4), (5);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "old-style-text-default-next-insert-fails",
        OLD_STYLE.format(options="", type="int", seq="s") + "INSERT INTO t (id) VALUES (1);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "old-style-text-default-past-the-rows",
        OLD_STYLE.format(options="", type="int", seq="s")
        + "INSERT INTO t (id) VALUES (1), (2); SELECT setval('s', 2);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    # a domain over a domain over an integer type
    Shape(
        "domain-over-domain-over-integer",
        DOMAINS.format(type="integer", options="") + "INSERT INTO t (id) VALUES (6), (7);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "domain-over-domain-over-bigint-increment-3",
        DOMAINS.format(type="bigint", options="INCREMENT 3") + "INSERT INTO t (id) VALUES (7);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "domain-over-domain-past-the-rows",
        DOMAINS.format(type="integer", options="")
        + "INSERT INTO t (id) VALUES (1), (2); SELECT setval('t_id_seq', 2);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    # a sequence owned by a column with no default: the application draws nextval itself
    Shape(
        "owned-sequence-app-draws-order-number",
        """CREATE TABLE t (id serial PRIMARY KEY, order_number int UNIQUE, v int);
           CREATE SEQUENCE t_order_number_seq OWNED BY t.order_number;
           INSERT INTO t (order_number) VALUES (3), (4);""",
        "INSERT INTO t (order_number, v) VALUES (nextval('t_order_number_seq'), 0)",
        collides=True,
        column="order_number",
    ),
    Shape(
        "owned-sequence-app-draws-bigint-id-increment-5",
        """CREATE TABLE t (id bigint PRIMARY KEY, v int);
           CREATE SEQUENCE t_id_seq AS bigint INCREMENT 5 OWNED BY t.id;
           INSERT INTO t (id) VALUES (11), (12);""",
        "INSERT INTO t (id, v) VALUES (nextval('t_id_seq'), 0)",
        collides=True,
    ),
    Shape(
        "owned-sequence-app-draws-next-insert-fails",
        """CREATE TABLE t (id int PRIMARY KEY, v int);
           CREATE SEQUENCE t_id_seq AS int OWNED BY t.id;
           INSERT INTO t (id) VALUES (1), (2);""",
        "INSERT INTO t (id, v) VALUES (nextval('t_id_seq'), 0)",
        collides=True,
    ),
    Shape(
        "owned-sequence-app-draws-past-the-rows",
        """CREATE TABLE t (id int PRIMARY KEY, v int);
           CREATE SEQUENCE t_id_seq AS int OWNED BY t.id;
           INSERT INTO t (id) VALUES (1), (2);
           SELECT setval('t_id_seq', 2);""",
        "INSERT INTO t (id, v) VALUES (nextval('t_id_seq'), 0)",
        collides=False,
    ),
    # CYCLE: a wrap a million values away is no finding; one about to happen is
    Shape(
        "cycle-big-free-sequence",
        CYCLE.format(options="MAXVALUE 1000000", type="int")
        + "INSERT INTO t (id) SELECT generate_series(1, 5); SELECT setval('s', 15);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "cycle-big-increment-10",
        CYCLE.format(options="INCREMENT 10 MAXVALUE 1000000", type="bigint")
        + "INSERT INTO t (id) VALUES (1), (11), (21); SELECT setval('s', 121);",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "cycle-big-identity",
        """CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY (MAXVALUE 1000000 CYCLE)
                              PRIMARY KEY, v int);
           INSERT INTO t (id) SELECT generate_series(1, 5);
           SELECT setval(pg_get_serial_sequence('t', 'id'), 15);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=False,
    ),
    Shape(
        "cycle-small-wraps-onto-the-rows",  # 19, 20, then 1
        CYCLE.format(options="MAXVALUE 20", type="int")
        + "INSERT INTO t (id) SELECT generate_series(1, 15); SELECT setval('s', 18);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "cycle-small-wraps-then-a-few",  # 19, 20, 1 .. 4, then 5
        CYCLE.format(options="MAXVALUE 20", type="bigint")
        + "INSERT INTO t (id) SELECT generate_series(5, 15); SELECT setval('s', 18);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "cycle-small-identity",
        """CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY (MAXVALUE 20 CYCLE)
                              PRIMARY KEY, v int);
           INSERT INTO t (id) SELECT generate_series(2, 15);
           SELECT setval(pg_get_serial_sequence('t', 'id'), 19);""",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
    Shape(
        "cycle-small-negative-increment",  # 2, 1, then 20
        CYCLE.format(options="INCREMENT -1 MINVALUE 1 MAXVALUE 20", type="int")
        + "INSERT INTO t (id) SELECT generate_series(8, 20); SELECT setval('s', 3);",
        "INSERT INTO t (v) VALUES (0)",
        collides=True,
    ),
]


@pytest.mark.parametrize("shape", DISCOVERY, ids=ids(DISCOVERY))
def test_discovery_gaps(db: Conn, shape: Shape) -> None:
    assert_agrees(db, shape)


# -- the command line on many shapes at once ---------------------------------------------

SEED = Shape(
    "seed-story",
    "CREATE TABLE t (id serial PRIMARY KEY, v int);"
    "INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);",
    "INSERT INTO t (v) VALUES (0)",
    collides=True,
)
TOGETHER = [SEED] + [
    s
    for s in KEYS + DRAWS + DISCOVERY
    if s.id
    in {
        "partial-serial-inactive-rows-first",
        "expression-id-text",
        "generated-column-identity-always",
        "modulo-1000-before-the-max",
        "exclude-btree-serial",
        "nulls-distinct-some-tags-x",
        "partition-of-then-own-primary-key",
        "two-columns-one-sequence-a",
        "rule-also-insert-draws-again",
        "before-trigger-fills-an-id-without-default",
        "default-sql-function-calls-nextval",
        "old-style-text-default",
        "domain-over-domain-over-integer",
        "owned-sequence-app-draws-order-number",
        "cycle-big-free-sequence",
        "cycle-small-wraps-onto-the-rows",
    }
]


def contract(report: Report) -> dict[str, Any]:
    """The report as the JSON contract spells it, fix_sql and notes aside, in a stable
    order."""
    findings = sorted(
        (
            f.kind,
            f.column.schema,
            f.column.table,
            f.column.column,
            f.sequence.qualified,
            f.next_value,
            f.first_collision,
            f.inserts_until_collision,
            f.max_existing,
            f.values_left,
        )
        for f in report.findings
    )
    checked = sorted(
        (c.column.schema, c.column.table, c.column.column, c.sequence.qualified, c.status)
        for c in report.checked
    )
    skipped = sorted((s.schema, s.table, s.column, s.sequence) for s in report.skipped)
    return {"findings": findings, "checked": checked, "skipped": skipped}


def contract_of_json(out: dict[str, Any]) -> dict[str, Any]:
    findings = sorted(
        (
            f["kind"],
            f["schema"],
            f["table"],
            f["column"],
            f["sequence"],
            f["next_value"],
            f.get("first_collision"),
            f.get("inserts_until_collision"),
            f.get("max_existing"),
            f.get("values_left"),
        )
        for f in out["findings"]
    )
    checked = sorted(
        (c["schema"], c["table"], c["column"], c["sequence"], c["status"]) for c in out["checked"]
    )
    skipped = sorted((s["schema"], s["table"], s["column"], s["sequence"]) for s in out["skipped"])
    return {"findings": findings, "checked": checked, "skipped": skipped}


def test_the_command_line_says_what_check_says(db: Conn) -> None:
    """Many shapes in one database, each in a schema of its own: ``seqdrift check
    --format json`` reports what ``check()`` does, number for number, and exits 1 on
    findings."""
    for i, shape in enumerate(TOGETHER):
        schema = sql.Identifier(f"shape_{i}")
        db.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        db.execute(sql.SQL("SET search_path TO {}").format(schema))
        db.execute(shape.sql)
    db.execute("RESET search_path")
    report = check(db)
    seed = ("shape_0", "t", "id")
    assert [f.inserts_until_collision for f in collisions(report, seed)] == [6]

    result = seqdrift("check", dsn(db), "--format", "json")
    assert result.returncode == (1 if report.findings else 0), result.stderr
    assert contract_of_json(json.loads(result.stdout)) == contract(report)


# -- the async drivers -------------------------------------------------------------------

ASYNC_DRIVERS = ("asyncpg", "psycopg-async")


async def _async_check_and_probe(
    db: Conn, driver: str, limit: int
) -> tuple[Report, int, ProbeReport]:
    """check() and probe() through an async driver's session on this loop: the report,
    the statements the check sent, and the probe's report."""
    loop = asyncio.get_running_loop()
    info = db.info
    params: dict[str, Any] = {
        "host": info.host,
        "port": info.port,
        "user": info.user,
        "password": info.password,
    }
    if driver == "asyncpg":
        conn: Any = await asyncpg.connect(**params, database=info.dbname)
        make: Callable[[Any], Session] = lambda c: AsyncpgSession(c, on_loop(loop))  # noqa: E731
    else:
        conn = await psycopg.AsyncConnection.connect(**params, dbname=info.dbname, autocommit=True)
        make = lambda c: AsyncPsycopgSession(c, on_loop(loop))  # noqa: E731
    try:
        session = make(conn)
        report = await asyncio.to_thread(check, session)
        result = await asyncio.to_thread(partial(probe, make(conn), limit=limit))
        return report, session.statements, result
    finally:
        await conn.close()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
@pytest.mark.parametrize("shape", KEYS + DRAWS + DISCOVERY, ids=ids(KEYS + DRAWS + DISCOVERY))
def test_async_drivers_say_what_psycopg_says(db: Conn, shape: Shape, driver: str) -> None:
    """Every shape, through asyncpg and psycopg's AsyncConnection: the same report as
    check() and probe() on psycopg 3, number for number, note for note, with the same
    statements; every sequence put back."""
    build(db, shape)
    sync = PsycopgSession(db)
    remembered.forget()  # each check discovers: the same statements
    expected = as_dict(check(sync))
    expected_probe = probe(db, limit=shape.limit)
    before = sequence_states(db)
    remembered.forget()
    report, statements, result = asyncio.run(_async_check_and_probe(db, driver, shape.limit))
    assert as_dict(report) == expected
    assert statements == sync.statements
    assert as_dict(result.report) == as_dict(expected_probe.report)
    assert [(p.column.label, p.inserts_until_collision, p.note) for p in result.probed] == [
        (p.column.label, p.inserts_until_collision, p.note) for p in expected_probe.probed
    ]
    assert sequence_states(db) == before


@pytest.mark.parametrize("shape", KEYS + DRAWS + DISCOVERY, ids=ids(KEYS + DRAWS + DISCOVERY))
def test_prepared_reads_say_what_the_block_says(
    db: Conn, shape: Shape, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shape, checked and probed again and again on one connection, as the plugin
    does after each migration: the reads go through the read block the first time,
    through a statement prepared for them from the second (read/prepared.py), and every
    report is the first one, number for number; the later checks are answered by the
    prepared statement alone."""
    build(db, shape)
    answered: list[bool] = []
    read = prepared.read

    def spy(*args: Any) -> Any:
        out = read(*args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(prepared, "read", spy)
    remembered.forget()
    with psycopg.connect(dsn(db), autocommit=True) as conn:
        reports, runs = [], []
        for _ in range(4):
            answered.clear()
            reports.append(as_dict(check(conn)))
            runs.append(list(answered))
        assert not any(runs[0]), "the first check prepared what it had not seen before"
        assert all(runs[2] + runs[3]), "a repeated check did not use its statement"
        assert reports[1:] == [reports[0]] * 3
        probes = [probe(conn, limit=shape.limit) for _ in range(3)]
        assert as_dict(probes[2].report) == as_dict(probes[0].report)
        assert [(p.column.label, p.inserts_until_collision, p.note) for p in probes[2].probed] == [
            (p.column.label, p.inserts_until_collision, p.note) for p in probes[0].probed
        ]
        names = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'seqdrift\\_%'"
        ).fetchone()
        assert names is not None
        assert 1 <= names[0] <= prepared.KEPT
