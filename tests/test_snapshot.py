"""Sequence snapshots against a real server: read, diff and restore, exactly.

``setval`` is not transactional, and neither is ``nextval``: a restore must hold
whatever the transaction around it does, and must put back ``is_called`` as well as
``last_value`` (``(5, false)`` hands out 5 next, ``(5, true)`` hands out 6).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pytest_seqdrift import CannotCheck, snapshot
from pytest_seqdrift.model import SequenceState
from pytest_seqdrift.snapshot import Moved, SequenceKey

Conn = psycopg.Connection[Any]
States = dict[SequenceKey, SequenceState]


def S(last_value: int, is_called: bool) -> SequenceState:
    return SequenceState(last_value, is_called)


def by_label(states: States) -> dict[str, SequenceState]:
    labels = [k.label for k in states]
    assert len(set(labels)) == len(labels), labels
    return {k.label: s for k, s in states.items()}


def oid(db: Conn, qualified: str) -> int:
    row = db.execute("SELECT %s::regclass::oid::int8", [qualified]).fetchone()
    assert row is not None
    return int(row[0])


def key(db: Conn, schema: str, name: str) -> SequenceKey:
    return SequenceKey(oid(db, sql.Identifier(schema, name).as_string(db)), schema, name)


def move(db: Conn, qualified: str, *, draws: int = 3, then: tuple[int, bool] | None = None) -> None:
    """Advance a sequence with nextval, then optionally setval it elsewhere."""
    db.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [qualified, draws])
    if then is not None:
        db.execute("SELECT setval(%s::regclass, %s, %s)", [qualified, *then])


KINDS = r"""
    CREATE TABLE serial_t (id serial PRIMARY KEY);
    CREATE TABLE ident_t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
    INSERT INTO ident_t (v) VALUES (1), (2);
    CREATE SCHEMA "Odd Schema";
    CREATE SEQUENCE "Odd Schema"."Seq ""q"" é" START 10;
    SELECT setval('"Odd Schema"."Seq ""q"" é"', 42, false);
    CREATE SEQUENCE down INCREMENT -3 MINVALUE -100 MAXVALUE -1;
    SELECT nextval('down'), nextval('down');
    CREATE SEQUENCE big AS bigint START 5000000000;
    SELECT setval('big', 9000000000);
"""


def test_read_states_and_restore_cover_every_kind_of_sequence(db: Conn) -> None:
    """serial, identity, quoted names in a quoted schema, negative, bigint: every one,
    with its own oid, last_value and is_called; and each one is put back."""
    db.execute(KINDS)
    states = snapshot.read_states(db)
    assert by_label(states) == {
        'Odd Schema.Seq "q" é': S(42, False),
        "public.big": S(9_000_000_000, True),
        "public.down": S(-4, True),
        "public.ident_t_id_seq": S(2, True),
        "public.serial_t_id_seq": S(1, False),
    }
    assert set(states) == {
        key(db, "Odd Schema", 'Seq "q" é'),
        key(db, "public", "big"),
        key(db, "public", "down"),
        key(db, "public", "ident_t_id_seq"),
        key(db, "public", "serial_t_id_seq"),
    }
    for k in states:
        move(db, sql.Identifier(k.schema, k.name).as_string(db))
    assert snapshot.diff(states, snapshot.read_states(db)) != []
    assert snapshot.restore(db, states) == len(states)
    assert snapshot.read_states(db) == states


def test_diff_lists_exactly_what_moved_was_created_or_dropped(db: Conn) -> None:
    db.execute(
        """CREATE SEQUENCE a; CREATE SEQUENCE b; CREATE SEQUENCE c; CREATE SEQUENCE d;
           CREATE SEQUENCE f;
           SELECT setval('b', 5, true);"""
    )
    old_f = key(db, "public", "f")
    before = snapshot.read_states(db)
    db.execute(
        """SELECT nextval('a');                  -- (1, false) -> (1, true)
           SELECT setval('b', 5, false);         -- only is_called moves
           SELECT setval('c', 1, false);         -- set to what it was: not a move
           DROP SEQUENCE d;
           CREATE SEQUENCE e START 7;
           DROP SEQUENCE f; CREATE SEQUENCE f;   -- the same name, another sequence"""
    )
    new_f = key(db, "public", "f")
    after = snapshot.read_states(db)
    # one entry each, in oid order: the old f was dropped, a new f was born
    dropped_and_born = [Moved("public.f", S(1, False), None), Moved("public.f", None, S(1, False))]

    assert snapshot.diff(before, after) == [
        Moved("public.a", S(1, False), S(1, True)),
        Moved("public.b", S(5, True), S(5, False)),
        Moved("public.d", S(1, False), None),
        Moved("public.e", None, S(7, False)),
        *(dropped_and_born if old_f.oid < new_f.oid else dropped_and_born[::-1]),
    ]
    assert snapshot.diff(before, before) == []
    assert snapshot.diff(after, snapshot.read_states(db)) == []


STATES = [
    pytest.param((1, False), id="fresh"),
    pytest.param((1, True), id="one-drawn"),
    pytest.param((42, False), id="setval-false"),
    pytest.param((42, True), id="setval-true"),
    pytest.param((-100, False), id="at-minvalue-not-called"),
    pytest.param((100, True), id="exhausted"),
]


@pytest.mark.parametrize("increment", [1, -4])
@pytest.mark.parametrize("state", STATES)
def test_restore_puts_last_value_and_is_called_back(
    db: Conn, state: tuple[int, bool], increment: int
) -> None:
    db.execute(
        f"CREATE SEQUENCE s INCREMENT {increment} MINVALUE -100 MAXVALUE 100 CYCLE;"
        "CREATE SEQUENCE untouched"
    )
    db.execute("SELECT setval('s', %s, %s)", list(state))
    before = snapshot.read_states(db)
    assert by_label(before)["public.s"] == S(*state)

    # move it both ways: forward, and to the same last_value with is_called flipped
    move(db, "s", then=(state[0], not state[1]))
    assert by_label(snapshot.read_states(db))["public.s"] == S(state[0], not state[1])
    assert snapshot.restore(db, before) == 1
    assert snapshot.read_states(db) == before

    move(db, "s", draws=5)
    assert snapshot.restore(db, before) == 1
    assert snapshot.read_states(db) == before
    assert snapshot.restore(db, before) == 0  # nothing left to put back
    # and the sequence hands out what it would have
    expected = state[0] + increment if state[1] else state[0]
    if not -100 <= expected <= 100:  # CYCLE: past the end it starts over
        expected = -100 if increment > 0 else 100
    assert db.execute("SELECT nextval('s')").fetchone() == (expected,)


def test_restore_leaves_dropped_and_new_sequences_alone(db: Conn) -> None:
    db.execute("CREATE SEQUENCE a; CREATE SEQUENCE gone")
    before = snapshot.read_states(db)
    move(db, "a")
    move(db, "gone")
    db.execute("DROP SEQUENCE gone; CREATE SEQUENCE born; SELECT nextval('born')")
    assert snapshot.restore(db, before) == 1
    assert by_label(snapshot.read_states(db)) == {
        "public.a": S(1, False),
        "public.born": S(1, True),
    }


@pytest.fixture
def moved(db: Conn) -> States:
    """Three sequences; the snapshot taken before ``a`` and ``b`` moved."""
    db.execute(
        """CREATE SEQUENCE a; CREATE SEQUENCE b INCREMENT -1 MAXVALUE 0; CREATE SEQUENCE c;
           SELECT setval('a', 10, false);"""
    )
    before = snapshot.read_states(db)
    move(db, "a")
    move(db, "b", then=(-50, False))
    return before


def test_restore_on_an_autocommit_connection(db: Conn, moved: States) -> None:
    assert db.autocommit
    assert snapshot.restore(db, moved) == 2
    assert snapshot.read_states(db) == moved
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_restore_inside_a_transaction_that_is_rolled_back_holds(db: Conn, moved: States) -> None:
    with db.transaction(force_rollback=True):
        move(db, "c")  # moved inside the transaction too: nextval is not undone either
        assert snapshot.restore(db, moved) == 3
        assert snapshot.read_states(db) == moved
    assert snapshot.read_states(db) == moved


def test_restore_in_an_implicit_transaction_that_is_rolled_back_holds(
    db: Conn, moved: States
) -> None:
    db.autocommit = False
    move(db, "c")
    assert snapshot.restore(db, moved) == 3
    db.rollback()
    db.autocommit = True
    assert snapshot.read_states(db) == moved


def test_restore_names_what_it_could_not_put_back_and_restores_the_rest(db: Conn) -> None:
    db.execute("CREATE SEQUENCE a; CREATE SEQUENCE narrowed; SELECT setval('narrowed', 50)")
    before = snapshot.read_states(db)
    move(db, "a")
    db.execute("SELECT setval('narrowed', 5); ALTER SEQUENCE narrowed MAXVALUE 10")
    with pytest.raises(CannotCheck, match=r"could not restore sequences: public\.narrowed \(") as e:
        snapshot.restore(db, before)
    assert "public.a" not in str(e.value)
    assert by_label(snapshot.read_states(db)) == {
        "public.a": S(1, False),
        "public.narrowed": S(5, True),
    }


@pytest.fixture
def reader(db: Conn) -> Iterator[str]:
    """A role of our own (roles belong to the whole server: a unique name, dropped)."""
    role = f"seqdrift_reader_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        db.execute("RESET ROLE")
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_sequence_the_role_cannot_read_is_left_out(db: Conn, reader: str) -> None:
    db.execute("CREATE SEQUENCE visible; CREATE SEQUENCE hidden; SELECT setval('hidden', 9)")
    db.execute(sql.SQL("GRANT SELECT, UPDATE ON visible TO {}").format(sql.Identifier(reader)))
    db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
    before = snapshot.read_states(db)
    assert by_label(before) == {"public.visible": S(1, False)}
    move(db, "visible")
    assert snapshot.restore(db, before) == 1
    assert snapshot.read_states(db) == before
