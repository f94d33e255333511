"""The reported numbers, proven by PostgreSQL itself.

For each story: ``inserts_until_collision`` real INSERTs that take the id from its
default all succeed, and the next one raises UniqueViolation on ``first_collision``.
Everything is rolled back, and the sequence is put back (nextval is not transactional).
Then the finding's fix_sql is run for real: the collision is gone, the inserts that
used to fail succeed, and the sequence never moved backwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from pytest_seqdrift import check
from pytest_seqdrift.model import Finding, PgSequence, Report

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Story:
    id: str
    sql: str
    table: str  # the table whose collision is proven
    insert: str  # an INSERT that takes the id from its default
    inserts_until: int
    setval_fixes: bool = True  # False: a CYCLE sequence wraps onto the ids whatever setval does


STORIES = [
    Story(
        "serial-seed-story",
        """CREATE TABLE t (id serial PRIMARY KEY, v int);
           INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);""",
        "t",
        "INSERT INTO t (v) VALUES (0)",
        6,
    ),
    Story(
        "next-insert-fails",
        """CREATE TABLE t (id serial PRIMARY KEY, v int);
           INSERT INTO t (id) SELECT generate_series(1, 5);
           SELECT setval('t_id_seq', 4);""",
        "t",
        "INSERT INTO t (v) VALUES (0)",
        0,
    ),
    Story(
        "identity-always",
        """CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
           INSERT INTO t (id, v) OVERRIDING SYSTEM VALUE VALUES (3, 'a'), (4, 'b'), (8, 'c');""",
        "t",
        "INSERT INTO t (v) VALUES ('x')",
        2,
    ),
    Story(
        "increment-3",  # 1, 4, 7 pass 2, 3, 5, 6 (never handed out); 10 fails
        """CREATE SEQUENCE s INCREMENT 3;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (2), (3), (5), (6), (10), (11);""",
        "t",
        "INSERT INTO t (v) VALUES (0)",
        3,
    ),
    Story(
        "negative-increment",  # -1, -3 pass -2, -4; -5 fails
        """CREATE SEQUENCE s INCREMENT -2 MAXVALUE -1;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (-2), (-4), (-5), (-9);""",
        "t",
        "INSERT INTO t (v) VALUES (0)",
        2,
    ),
    Story(
        "shared-sequence",
        """CREATE SEQUENCE s;
           CREATE TABLE a (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           CREATE TABLE b (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO a (v) VALUES (1), (2), (3);
           INSERT INTO b (v) VALUES (4), (5);
           INSERT INTO b (id) VALUES (8);""",
        "b",
        "INSERT INTO b (v) VALUES (0)",
        2,
    ),
    Story(
        "partitioned-pk-id-region",  # (3, 'eu') is what an 'eu' row runs into
        """CREATE TABLE m (id bigserial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           INSERT INTO m (id, region) VALUES (3, 'eu'), (5, 'us'), (9, 'us');""",
        "m",
        "INSERT INTO m (region) VALUES ('eu')",
        2,
    ),
    Story(
        # no key on the parent: the partitions' own primary keys fail, m_eu's first;
        # reported on the parent, which the application inserts into
        "partition-own-pk",
        """CREATE TABLE m (id bigserial, region text) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           ALTER TABLE m_eu ADD PRIMARY KEY (id);
           ALTER TABLE m_us ADD PRIMARY KEY (id);
           INSERT INTO m (id, region) VALUES (3, 'eu'), (5, 'us'), (7, 'us');""",
        "m",
        "INSERT INTO m (region) VALUES ('eu')",
        2,
    ),
    Story(
        # partitions made on their own, with a key and no default, then attached
        "partition-attached-pk",
        """CREATE TABLE m (id bigserial, region text) PARTITION BY LIST (region);
           CREATE TABLE m_eu (id bigint PRIMARY KEY, region text);
           CREATE TABLE m_us (region text, id bigint NOT NULL, UNIQUE (id));
           ALTER TABLE m ATTACH PARTITION m_eu FOR VALUES IN ('eu');
           ALTER TABLE m ATTACH PARTITION m_us FOR VALUES IN ('us');
           INSERT INTO m (id, region) VALUES (6, 'eu'), (4, 'us'), (9, 'us');""",
        "m",
        "INSERT INTO m (region) VALUES ('us')",
        3,
    ),
    Story(
        "cycle-wrap",  # 9, 10, then 1 after the wrap; 2 fails
        """CREATE SEQUENCE s MAXVALUE 10 CYCLE;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (2), (3), (5);
           SELECT setval('s', 8);""",
        "t",
        "INSERT INTO t (v) VALUES (0)",
        3,
        setval_fixes=False,
    ),
]


def collision_for(report: Report, table: str) -> Finding:
    __tracebackhide__ = True
    found = [f for f in report.findings if f.kind == "collision" and f.column.table == table]
    assert len(found) == 1, report.findings
    return found[0]


def seq_ident(seq: PgSequence) -> sql.Identifier:
    return sql.Identifier(seq.schema, seq.name)


def one_row(db: Conn, query: sql.Composed | str) -> tuple[Any, ...]:
    row = db.execute(query).fetchone()
    assert row is not None
    return tuple(row)


def state(db: Conn, seq: PgSequence) -> tuple[int, bool]:
    query = sql.SQL("SELECT last_value, is_called FROM {}").format(seq_ident(seq))
    last_value, is_called = one_row(db, query)
    return int(last_value), bool(is_called)


def position(db: Conn, seq: PgSequence) -> int:
    """last_value in the direction the sequence walks: bigger is further on."""
    return state(db, seq)[0] * (1 if seq.increment > 0 else -1)


@contextmanager
def undone(db: Conn, seq: PgSequence) -> Iterator[None]:
    """Roll back whatever happens inside, and put the sequence back as it was."""
    before = state(db, seq)
    try:
        with db.transaction(force_rollback=True):
            yield
    finally:
        db.execute("SELECT setval(%s::oid::regclass, %s, %s)", [seq.oid, *before])
    assert state(db, seq) == before


def insert_ids(db: Conn, story: Story, count: int) -> list[int]:
    """``count`` INSERTs through the default, each must succeed: the ids they got."""
    returning = f"{story.insert} RETURNING id"
    return [int(one_row(db, returning)[0]) for _ in range(count)]


def numbers(f: Finding) -> tuple[Any, ...]:
    return (f.next_value, f.first_collision, f.inserts_until_collision, f.max_existing)


@pytest.mark.parametrize("story", STORIES, ids=[s.id for s in STORIES])
def test_inserts_until_collision_is_true(db: Conn, story: Story) -> None:
    db.execute(story.sql)
    report = check(db)
    f = collision_for(report, story.table)
    assert f.inserts_until_collision == story.inserts_until

    k = f.inserts_until_collision
    with undone(db, f.sequence):
        ids = insert_ids(db, story, k)
        with pytest.raises(errors.UniqueViolation) as failed, db.transaction():
            db.execute(story.insert)

    assert len(set(ids)) == len(ids) == k
    assert ids[:1] == ([f.next_value] if ids else [])
    assert f.first_collision not in ids
    detail = failed.value.diag.message_detail or ""
    assert re.search(rf"=\({f.first_collision}[,)]", detail), detail
    # the sequence was put back: the same finding, to the number
    assert numbers(collision_for(check(db), story.table)) == numbers(f)


FIXABLE = [s for s in STORIES if s.setval_fixes]


@pytest.mark.parametrize("story", FIXABLE, ids=[s.id for s in FIXABLE])
def test_fix_sql_clears_the_collision_without_moving_back(db: Conn, story: Story) -> None:
    db.execute(story.sql)
    f = collision_for(check(db), story.table)
    assert f.next_value is not None
    assert f.max_existing is not None
    seq = f.sequence

    before = position(db, seq)
    db.execute(f.fix_sql)
    assert position(db, seq) >= before
    column = (f.column.table_oid, f.column.column)
    left = [g for g in check(db).findings if (g.column.table_oid, g.column.column) == column]
    assert not [g for g in left if g.kind == "collision"], left

    # the truth: every value up to the old max, and one more, now inserts cleanly
    span = abs(f.max_existing - f.next_value) // abs(seq.increment) + 2
    with undone(db, seq):
        insert_ids(db, story, span)

    # run late, after the sequence has moved on past the fix: it stays where it is
    ahead = state(db, seq)[0] + 1000 * seq.increment
    db.execute("SELECT setval(%s::oid::regclass, %s)", [seq.oid, ahead])
    db.execute(f.fix_sql)
    assert state(db, seq) == (ahead, True)
