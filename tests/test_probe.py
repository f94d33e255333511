"""The probe against a real server: exact numbers, exact restores, nothing left behind.

Every test builds its schema with SQL, runs ``probe()`` and compares what it reports
with the arithmetic (``check()``) and, where they must differ, with what PostgreSQL
itself does. After every probe the database must be exactly as before: every
sequence's ``last_value`` *and* ``is_called``, every row, every index and constraint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from support.probe import (
    MODES,
    SEED_STORY,
    Conn,
    States,
    checked_for,
    collision_for,
    contents,
    numbers,
    probed_for,
    saw,
    states,
    structure,
    unchanged,
)

from pytest_seqdrift import check, snapshot
from pytest_seqdrift.db.drivers import PsycopgSession
from pytest_seqdrift.model import Checked, SequenceState
from pytest_seqdrift.probe import Mode, Probed, probe
from pytest_seqdrift.probe import disagreement as probe_disagreement
from pytest_seqdrift.probe import insert as probe_insert
from pytest_seqdrift.probe import run as probe_run
from pytest_seqdrift.probe import sequences as probe_sequences
from pytest_seqdrift.read import prepared, remembered


def next_position(state: SequenceState, increment: int) -> int:
    """The value the sequence hands out next, signed so that bigger is further on."""
    value = state.last_value + increment if state.is_called else state.last_value
    return value if increment > 0 else -value


def increments(db: Conn) -> dict[int, int]:
    return {int(o): int(i) for o, i in db.execute("SELECT seqrelid, seqincrement FROM pg_sequence")}


# -- 1. restore is exact -----------------------------------------------------------------


@dataclass(frozen=True)
class SeqSpec:
    increment: int
    cycle: bool
    lo: int  # MINVALUE
    hi: int  # MAXVALUE
    last_value: int
    is_called: bool
    # each table the sequence feeds: the ids planted in it, and whether its default is
    # an expression (``nextval(...) + 0``: the arithmetic leaves it to the probe)
    tables: tuple[tuple[frozenset[int], bool], ...]


@st.composite
def seq_specs(draw: st.DrawFn) -> SeqSpec:
    increment = draw(st.integers(1, 5)) * draw(st.sampled_from([1, -1]))
    lo = draw(st.integers(-40, 40))
    hi = lo + draw(st.integers(1, 60))
    table = st.tuples(st.frozensets(st.integers(lo - 3, hi + 3), max_size=8), st.booleans())
    return SeqSpec(
        increment=increment,
        cycle=draw(st.booleans()),
        lo=lo,
        hi=hi,
        last_value=draw(st.integers(lo, hi)),
        is_called=draw(st.booleans()),
        # a second table makes the sequence shared
        tables=tuple(draw(st.lists(table, min_size=1, max_size=2))),
    )


def build(db: Conn, specs: list[SeqSpec]) -> None:
    db.execute("DROP SCHEMA IF EXISTS h CASCADE; CREATE SCHEMA h")
    for i, spec in enumerate(specs):
        seq = sql.Identifier("h", f"s{i}")
        db.execute(
            sql.SQL("CREATE SEQUENCE {} INCREMENT {} MINVALUE {} MAXVALUE {} START {} {}").format(
                seq,
                sql.Literal(spec.increment),
                sql.Literal(spec.lo),
                sql.Literal(spec.hi),
                sql.Literal(spec.lo if spec.increment > 0 else spec.hi),
                sql.SQL("CYCLE" if spec.cycle else "NO CYCLE"),
            )
        )
        db.execute(
            "SELECT setval(%s::regclass, %s, %s)", [f"h.s{i}", spec.last_value, spec.is_called]
        )
        for j, (ids, expression) in enumerate(spec.tables):
            table = sql.Identifier("h", f"t{i}_{j}")
            db.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY DEFAULT nextval({}){}, v text)"
                ).format(table, sql.Literal(f"h.s{i}"), sql.SQL(" + 0" if expression else ""))
            )
            db.execute(
                sql.SQL(
                    "INSERT INTO {} (id, v) SELECT x, 'row ' || x FROM unnest(%s::bigint[]) AS x"
                ).format(table),
                [sorted(ids)],
            )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(specs=st.lists(seq_specs(), min_size=1, max_size=3))
def test_probe_restores_every_sequence_exactly(db: Conn, specs: list[SeqSpec]) -> None:
    """Random sequence states (both directions, CYCLE or not, is_called either way,
    shared or not, plain default or expression) and random planted ids: after a probe
    in either mode every sequence is back to its exact state and every table holds
    exactly what it held. And where the arithmetic foresees a collision before any
    wrap, the probe sees the same one (and sees none where the arithmetic sees none)."""
    build(db, specs)
    arithmetic = check(db)
    for mode in MODES:
        with unchanged(db):
            result = probe(db, mode=mode)
        assert result.disagreements == []
        for p in result.probed:
            expected = collision_for(arithmetic, p.column.table)
            if not p.column.plain_default:
                continue  # the arithmetic cannot judge it: only the restore is checked
            assert p.passed_max
            # the probe walks up to the highest existing value, never round a CYCLE
            want: tuple[int | None, int | None] = (None, None)
            if expected is not None and not expected.after_wrap:
                want = (expected.inserts_until_collision, expected.first_collision)
            assert saw(p) == want


def _raise_after(original: Callable[..., Any], how: str) -> Callable[..., Any]:
    """``original``, then an error: a Python one, or one from the server, which leaves
    the probe's transaction aborted."""

    def wrapper(session: PsycopgSession, *args: Any, **kwargs: Any) -> Any:
        original(session, *args, **kwargs)
        if how == "server":
            session.run("SELECT 1 / 0")
        raise RuntimeError("interrupted")

    return wrapper


@pytest.mark.parametrize(
    ("mode", "module", "where"),
    [("insert", probe_insert, "_locate"), ("default", probe_run, "_draw")],
    ids=["insert-_locate", "default-_draw"],
)
def test_an_interrupted_probe_restores_and_reraises(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode, module: Any, where: str
) -> None:
    """An error of ours (not of the database's shape) ends the probe, and every
    sequence is restored all the same."""
    db.execute(SEED_STORY)
    monkeypatch.setattr(module, where, _raise_after(getattr(module, where), "python"))
    with unchanged(db), pytest.raises(RuntimeError):
        probe(db, mode=mode)
    # the connection is left as the probe found it
    assert db.autocommit
    assert db.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.parametrize(
    ("mode", "module", "where"),
    [("insert", probe_insert, "_locate"), ("default", probe_run, "_draw")],
    ids=["insert-_locate", "default-_draw"],
)
def test_a_server_error_probing_a_column_is_its_note(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode, module: Any, where: str
) -> None:
    """An error the server raises half-way through one column's probe (its
    transaction aborted) becomes that column's note; the arithmetic's finding stands,
    the next column is probed as if nothing happened, and every sequence is restored."""
    db.execute(SEED_STORY)
    db.execute("CREATE TABLE u (id serial PRIMARY KEY, v int); INSERT INTO u (id) VALUES (3)")
    original = getattr(module, where)
    failing = _raise_after(original, "server")

    def on_t_only(session: PsycopgSession, target: Any, *args: Any, **kwargs: Any) -> Any:
        call = failing if target.column.table == "t" else original
        return call(session, target, *args, **kwargs)

    monkeypatch.setattr(module, where, on_t_only)
    with unchanged(db):
        result = probe(db, mode=mode)
    monkeypatch.undo()
    t = probed_for(result, "t")
    assert t.note == "could not be probed: division by zero; the arithmetic's verdict stands"
    assert (t.mode, t.drawn, saw(t), t.passed_max) == (mode, 0, (None, None), True)
    u = probed_for(result, "u")
    assert (u.mode, u.note, saw(u)) == (mode, None, (2, 3))
    assert [(f.column.table, numbers(f)) for f in result.report.findings] == [
        ("t", (1, 7, 6, 16)),
        ("u", (1, 3, 2, 3)),
    ]
    assert db.autocommit
    assert db.info.transaction_status == TransactionStatus.IDLE


def _terminate(db: Conn) -> None:
    """Kill the connection's server process, from another connection, and wait for it."""
    pid = db.info.backend_pid
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(500):
            gone = other.execute(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", [pid]
            ).fetchone()
            if gone and gone[0]:
                return
            other.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"backend {pid} did not go away")  # pragma: no cover


KILL_POINTS = [
    ("insert", probe_insert, "_locate", "after"),  # a batch collided: the sequence moved
    ("default", probe_run, "_draw", "after"),  # values drawn
    ("insert", probe_run, "_put_back", "before"),  # a column probed, nothing put back yet
]


@pytest.mark.parametrize(
    ("mode", "module", "where", "when"), KILL_POINTS, ids=[f"{m}-{w}" for m, _, w, _ in KILL_POINTS]
)
def test_a_killed_probe_leaves_sequences_only_ahead(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode, module: Any, where: str, when: str
) -> None:
    """Why a killed probe can only leave a sequence *ahead* of where it was (harmless
    gaps), never behind (future collisions):

    * the probe reads every sequence's state (``snapshot.read_states``) before it runs
      a single ``nextval`` -- ``test_the_probe_reads_states_before_it_draws`` shows it;
    * ``nextval`` only ever moves a sequence forward, in its own direction;
    * every ``setval`` the probe runs goes back either to a state read *during* the
      probe (to replay a batch that collided or ran out in smaller chunks, after
      ``_peek``, before a fallback), which is itself at or ahead of the snapshot, or
      to the snapshot itself (the restore, after each column and at the end).

    So at every instant each sequence is at or ahead of its snapshot, and a process
    killed at any point leaves it there; the server rolls back the rows and DDL of the
    dead transaction. Here the backend is really terminated mid-probe (no CYCLE, so
    that "ahead" is a plain comparison)."""
    db.execute(SEED_STORY)
    db.execute(
        """CREATE SEQUENCE down INCREMENT -2 MAXVALUE -1;
           CREATE TABLE n (id int PRIMARY KEY DEFAULT nextval('down'), v int);
           INSERT INTO n (id) VALUES (-2), (-4), (-5), (-9);"""
    )
    before, rows, step = states(db), contents(db), increments(db)
    original = getattr(module, where)

    def killer(*args: Any, **kwargs: Any) -> Any:
        if when == "before":
            _terminate(db)
        result = original(*args, **kwargs)
        _terminate(db)
        return result

    monkeypatch.setattr(module, where, killer)
    with pytest.raises(psycopg.OperationalError):
        probe(db, mode=mode)
    monkeypatch.undo()

    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        after = states(other)
        assert contents(other) == rows
    assert after.keys() == before.keys()
    moves = {
        k.label: next_position(after[k], step[k.oid]) - next_position(before[k], step[k.oid])
        for k in before
    }
    assert all(m >= 0 for m in moves.values()), moves
    assert any(m > 0 for m in moves.values()), moves  # the kill did come after a nextval


def test_the_probe_reads_states_before_it_draws(db: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot the probe restores is taken before any function that can draw a
    value runs, it equals the states before the probe, and every restore puts back
    that very snapshot."""
    db.execute(SEED_STORY)
    db.execute(
        """CREATE SEQUENCE s;
           CREATE TABLE sharded (id bigint PRIMARY KEY DEFAULT nextval('s') * 16 + 3, v int);
           INSERT INTO sharded (id) VALUES (83);"""
    )
    expected = states(db)
    events: list[str] = []  # calls, in order
    read: list[States] = []
    restored_to: list[States] = []

    def spy(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            events.append(name)
            if name in ("restore", "_put_back"):
                restored_to.append(dict(args[1]))
            answer = original(*args, **kwargs)
            if name == "read_states" and not read:
                read.append(answer)
            return answer

        monkeypatch.setattr(module, name, wrapper)

    # each where it is looked up: the final restore's _put_back in sequences, the
    # re-probe's _insert in disagreement
    for module, name in [
        (probe_run, "_peek"),
        (probe_run, "_insert"),
        (probe_disagreement, "_insert"),
        (probe_run, "_draw"),
        (probe_insert, "_locate"),
        (probe_run, "_put_back"),
        (probe_sequences, "_put_back"),
    ]:
        spy(module, name)
    spy(snapshot, "read_states")
    spy(snapshot, "restore")

    probe(db, mode="insert")
    monkeypatch.undo()

    drawing = [i for i, e in enumerate(events) if e in ("_peek", "_insert", "_draw", "_locate")]
    assert drawing, events
    assert events.index("read_states") < drawing[0], events
    assert read == [expected]
    assert restored_to, events
    assert all(r == expected for r in restored_to)
    # the final restore is a _put_back too (one statement that moves only what moved;
    # snapshot.restore is its fallback): the last word is a restore to the snapshot
    assert [e for e in events if e != "read_states"][-1] == "_put_back", events
    assert states(db) == expected


# -- 2. the probe agrees with the arithmetic ---------------------------------------------


@dataclass(frozen=True)
class Story:
    id: str
    sql: str
    until: int  # inserts before the collision
    value: int  # the colliding value
    table: str = "t"


AGREEING = [
    Story("seed-story", SEED_STORY, 6, 7),
    Story(
        "identity-always",
        """CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
           INSERT INTO t (id, v) OVERRIDING SYSTEM VALUE VALUES (3, 'a'), (4, 'b'), (8, 'c');""",
        2,
        3,
    ),
    Story(
        "increment-3",  # 1, 4, 7 pass 2, 3, 5, 6 (never handed out); 10 collides
        """CREATE SEQUENCE s INCREMENT 3;
           CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (2), (3), (5), (6), (10), (11);""",
        3,
        10,
    ),
    Story(
        "negative-increment",  # -1, -3 pass -2, -4; -5 collides
        """CREATE SEQUENCE s INCREMENT -2 MAXVALUE -1;
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s'), v int);
           INSERT INTO t (id) VALUES (-2), (-4), (-5), (-9);""",
        2,
        -5,
    ),
    Story(
        # (3, 'eu') is the only 'eu' row: a copied 'us' row would take id 3 unharmed
        "partitioned-id-region",
        """CREATE TABLE m (id bigserial, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           INSERT INTO m (id, region) VALUES (3, 'eu'), (10, 'us'), (11, 'us'), (12, 'us'),
                                             (13, 'us');""",
        2,
        3,
        table="m",
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("story", AGREEING, ids=[s.id for s in AGREEING])
def test_the_probe_agrees_with_the_arithmetic(db: Conn, story: Story, mode: Mode) -> None:
    db.execute(story.sql)
    arithmetic = check(db)
    with unchanged(db):
        result = probe(db, mode=mode)
    p = probed_for(result, story.table)
    assert (p.mode, p.note, p.passed_max) == (mode, None, True)
    assert saw(p) == (story.until, story.value)
    assert p.drawn == story.until + 1
    f = collision_for(arithmetic, story.table)
    assert f is not None
    assert (f.inserts_until_collision, f.first_collision) == (story.until, story.value)
    # the probe adds nothing to a collision the arithmetic already reported
    assert [numbers(g) for g in result.report.findings] == [numbers(f)]


SHARED = """
    CREATE SEQUENCE s;
    CREATE TABLE a (id int PRIMARY KEY DEFAULT nextval('s'), v int);
    CREATE TABLE b (id int PRIMARY KEY DEFAULT {b_default}, v int);
    INSERT INTO a (id) VALUES (10), (20);
    INSERT INTO b (id) VALUES (8);
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_shared_sequence_is_probed_from_its_real_state_for_each_table(
    db: Conn, mode: Mode
) -> None:
    """Probing ``a`` draws 10 values from ``s``; ``b`` must still be probed from where
    ``s`` really stands (1), where its 8th insert collides."""
    db.execute(SHARED.format(b_default="nextval('s')"))
    with unchanged(db):
        result = probe(db, mode=mode)
    assert saw(probed_for(result, "a")) == (9, 10)
    assert saw(probed_for(result, "b")) == (7, 8)
    assert result.disagreements == []


@pytest.mark.parametrize("mode", MODES)
def test_a_shared_sequence_behind_an_expression_is_not_missed(db: Conn, mode: Mode) -> None:
    """The same, where only the probe can see ``b``'s collision."""
    db.execute(SHARED.format(b_default="nextval('s') + 0"))
    with unchanged(db):
        result = probe(db, mode=mode)
    assert saw(probed_for(result, "b")) == (7, 8)
    f = collision_for(result.report, "b")
    assert f is not None
    assert numbers(f) == (1, 8, 7, 8)


# -- 3. the probe catches what the arithmetic cannot -------------------------------------

SHARDED = """
    CREATE SEQUENCE s;
    CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s') * 16 + 3, v int);
    -- the default yields 19, 35, 51, 67, 83: the 5th collides
    INSERT INTO t (id) VALUES (20), (83), (84), (100);
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_sharded_default_collision_is_found_by_the_probe(db: Conn, mode: Mode) -> None:
    db.execute(SHARDED)
    arithmetic = check(db)
    assert arithmetic.findings == []
    assert checked_for(arithmetic, "t").status == "unchecked"

    with unchanged(db):
        result = probe(db, mode=mode)
    p = probed_for(result, "t")
    assert (p.mode, p.note, p.first_value, p.top) == (mode, None, 19, 100)
    assert saw(p) == (4, 83)
    f = collision_for(result.report, "t")
    assert f is not None
    assert numbers(f) == (19, 83, 4, 100)
    assert f.sequence.qualified == "public.s"
    assert "public.s" in f.fix_sql
    verdict = checked_for(result.report, "t")
    assert (verdict.status, verdict.note) == ("finding", "collision seen by the probe")
    assert not result.report.ok


def test_a_trigger_that_maps_new_ids_onto_old_ones_is_caught_past_the_max(db: Conn) -> None:
    """The sequence is past every id, so the arithmetic sees nothing; but the trigger
    stores next value - 3, an id the table holds. The insert probe inserts once even
    with nothing to pass, for a table with such a trigger, and PostgreSQL says no."""
    db.execute(
        """CREATE TABLE back (id serial PRIMARY KEY, v int);
           INSERT INTO back (v) SELECT g FROM generate_series(1, 16) g;
           CREATE FUNCTION back_three() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.id := NEW.id - 3; RETURN NEW; END $$;
           CREATE TRIGGER back BEFORE INSERT ON back FOR EACH ROW EXECUTE FUNCTION back_three();"""
    )
    assert check(db).findings == []
    # the truth: the very next insert fails
    with (
        db.transaction(force_rollback=True),
        pytest.raises(errors.UniqueViolation, match=r"\(id\)=\(14\)"),
    ):
        db.execute("INSERT INTO back (v) VALUES (0)")
    db.execute("SELECT setval('back_id_seq', 16)")
    with unchanged(db):
        result = probe(db, mode="insert")
    p = probed_for(result, "back")
    assert (p.mode, saw(p)) == ("insert", (0, 14))
    assert [(f.column.table, f.first_collision) for f in result.report.findings] == [("back", 14)]
    with unchanged(db):  # evaluating the default cannot see what the trigger does
        assert probe(db, mode="default").report.findings == []


SHIFTING_TRIGGER = """
    CREATE TABLE t (id serial PRIMARY KEY, v int);
    INSERT INTO t (id) VALUES (103);
    CREATE FUNCTION shift_id() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN NEW.id := NEW.id + 100; RETURN NEW; END $$;
    CREATE TRIGGER shift BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION shift_id();
"""


def test_a_trigger_that_moves_the_id_is_caught_by_the_insert_probe(db: Conn) -> None:
    """The default is a plain ``nextval``: walking 1, 2, ... the 103rd insert would meet
    id 103. But the trigger stores 101, 102, 103: PostgreSQL fails the 3rd insert. The
    check cannot know it, and says so, naming the trigger; only inserting (not
    evaluating the default) can see it."""
    db.execute(SHIFTING_TRIGGER)
    report = check(db)
    assert collision_for(report, "t") is None
    verdict = checked_for(report, "t")
    assert verdict.status == "unchecked"
    assert verdict.note is not None
    assert "trigger shift" in verdict.note

    # the truth, from PostgreSQL itself: two inserts pass, the third fails on 103
    with unchanged(db) as before:
        with db.transaction(force_rollback=True):
            insert = "INSERT INTO t (v) VALUES (0) RETURNING id"
            got = [db.execute(insert).fetchall() for _ in range(2)]
            with pytest.raises(errors.UniqueViolation, match=r"\(id\)=\(103\)"):
                db.execute(insert)
        assert got == [[(101,)], [(102,)]]
        snapshot.restore(db, before)

    with unchanged(db):
        inserted = probe(db, mode="insert")
    p = probed_for(inserted, "t")
    assert (p.mode, saw(p), p.first_value) == ("insert", (2, 103), 101)
    assert p.decided_by == ("trigger shift on public.t (BEFORE INSERT)",)
    # what the inserts do is reported, and the fix names the trigger
    f = collision_for(inserted.report, "t")
    assert f is not None
    assert numbers(f) == (101, 103, 2, 103)
    assert "trigger shift on public.t (BEFORE INSERT) decides the value" in f.fix_sql

    # evaluating the default bypasses the trigger: it can only repeat the arithmetic
    with unchanged(db):
        drawn = probe(db, mode="default")
    q = probed_for(drawn, "t")
    assert (q.mode, saw(q), q.note) == ("default", (102, 103), None)


def test_a_far_collision_is_found_in_a_few_statements(db: Conn) -> None:
    """4,999 inserts succeed, the 5,000th collides: the batch that collides is replayed
    in halving chunks, not one insert at a time (three round trips per value)."""
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (id) VALUES (5000)")
    session = PsycopgSession(db)
    with unchanged(db):
        result = probe(session)
    assert saw(probed_for(result, "t")) == (4999, 5000)
    assert session.statements < 100, session.statements


def test_each_column_starts_from_the_snapshot_also_after_a_setval_to_not_called(
    db: Conn,
) -> None:
    """Probing ``a`` fires a trigger that moves sequence ``other`` to (50, not called);
    ``b`` draws from ``other`` and must be probed from its recorded state (1, not
    called), or it would miss its collision: the restore after each column compares
    ``last_value`` too where ``is_called`` is false before and after."""
    db.execute(
        """CREATE SEQUENCE other;
           CREATE TABLE a (id serial PRIMARY KEY, v int);
           INSERT INTO a (id) VALUES (1), (2);
           CREATE FUNCTION move_other() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM setval('other', 50, false); RETURN NEW; END $$;
           CREATE TRIGGER move BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION move_other();
           CREATE TABLE b (id int PRIMARY KEY DEFAULT nextval('other'), v int);
           INSERT INTO b (id) VALUES (3);"""
    )
    with unchanged(db):
        result = probe(db)
    assert [p.column.table for p in result.probed] == ["a", "b"]
    p = probed_for(result, "b")
    assert (saw(p), p.note) == ((2, 3), None)


# -- 4. the insert probe leaves the table exactly as it was ------------------------------

CONSTRAINED = """
    CREATE TABLE t (
        id serial PRIMARY KEY,
        email text NOT NULL UNIQUE,
        during tsrange,
        EXCLUDE USING gist (during WITH &&)
    );
    CREATE UNIQUE INDEX t_lower_email ON t (lower(email));
    CREATE TABLE child (email text REFERENCES t (email));
    INSERT INTO t (id, email, during)
        SELECT i, 'u' || i || '@example.com',
               tsrange('2024-01-01'::timestamp + i * interval '1 day',
                       '2024-01-01'::timestamp + (i + 1) * interval '1 day')
        FROM unnest(ARRAY[7, 9, 12, 14, 16]) AS i;
    INSERT INTO child VALUES ('u7@example.com');
"""


@pytest.mark.parametrize("where", ["autocommit", "committed", "rolled-back"])
def test_the_insert_probe_leaves_the_table_as_it_was(db: Conn, where: str) -> None:
    """Copies of a row violate the unique email, its lower() index and the exclusion
    constraint (dropping the email key cascades to the child's foreign key): all are
    dropped inside the probe's savepoint, only the key under test collides, and
    everything comes back -- also when the probe runs inside the caller's transaction,
    committed or rolled back afterwards."""
    db.execute(CONSTRAINED)
    rows, indexes_and_constraints = contents(db), structure(db)
    with unchanged(db) as before:
        if where == "autocommit":
            result = probe(db, mode="insert")
        else:
            with db.transaction(force_rollback=where == "rolled-back"):
                result = probe(db, mode="insert")
                # inside the caller's transaction too, before it ends
                assert db.info.transaction_status == TransactionStatus.INTRANS
                assert (states(db), contents(db), structure(db)) == (
                    before,
                    rows,
                    indexes_and_constraints,
                )
    p = probed_for(result, "t")
    assert (p.mode, p.note, saw(p)) == ("insert", None, (6, 7))


# -- 5. fallbacks and the limit ----------------------------------------------------------

UNCOPYABLE = [
    pytest.param(
        """CREATE TABLE t (id serial PRIMARY KEY);
           INSERT INTO t (id) VALUES (7), (9), (12), (14), (16);""",
        "the table has no other column to copy",
        id="only-the-id",
    ),
    pytest.param(
        # uniqueness kept by a trigger: the probe cannot drop it as it drops constraints
        """CREATE TABLE t (id serial PRIMARY KEY, email text NOT NULL);
           CREATE FUNCTION email_taken() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF EXISTS (SELECT FROM t WHERE lower(email) = lower(NEW.email)) THEN
                   RAISE EXCEPTION 'email % is taken', NEW.email;
               END IF;
               RETURN NEW;
           END $$;
           INSERT INTO t (id, email) SELECT i, 'u' || i FROM unnest(ARRAY[7, 9, 12, 14, 16]) i;
           CREATE TRIGGER unique_email BEFORE INSERT ON t
               FOR EACH ROW EXECUTE FUNCTION email_taken();""",
        "a copied row is rejected: email u7 is taken",
        id="trigger-enforced-unique",
    ),
    pytest.param(
        # a unique index on one partition only: not the parent's, so not dropped
        """CREATE TABLE t (id serial, region text, code text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE t_eu PARTITION OF t FOR VALUES IN ('eu');
           CREATE TABLE t_us PARTITION OF t FOR VALUES IN ('us');
           CREATE UNIQUE INDEX t_eu_code ON t_eu (code);
           INSERT INTO t (id, region, code) VALUES (7, 'eu', 'a'), (9, 'us', 'b'),
               (12, 'us', 'c'), (14, 'us', 'd'), (16, 'us', 'e');""",
        "a copied row violates t_eu_code, not the key under test",
        id="partition-only-unique-index",
    ),
]


@pytest.mark.parametrize(("schema", "reason"), UNCOPYABLE)
def test_rows_that_cannot_be_copied_fall_back_to_the_default_probe(
    db: Conn, schema: str, reason: str
) -> None:
    db.execute(schema)
    with unchanged(db):
        result = probe(db, mode="insert")
    p = probed_for(result, "t")
    assert p.mode == "default"
    assert p.note == f"fell back to the default probe: {reason}"
    assert (saw(p), p.passed_max) == ((6, 7), True)
    assert result.disagreements == []


@pytest.mark.parametrize("mode", MODES)
def test_the_limit_stops_the_probe_and_the_arithmetic_stands(db: Conn, mode: Mode) -> None:
    """The 7th value collides; with a limit of 3 the probe sees none and says it did
    not pass the max. The arithmetic's finding is reported all the same."""
    db.execute(SEED_STORY)
    with unchanged(db):
        result = probe(db, mode=mode, limit=3)
    p = probed_for(result, "t")
    assert (p.mode, p.drawn, saw(p), p.passed_max, p.note) == (mode, 3, (None, None), False, None)
    f = collision_for(result.report, "t")
    assert f is not None
    assert numbers(f) == (1, 7, 6, 16)
    assert checked_for(result.report, "t").status == "finding"


@pytest.mark.parametrize("mode", MODES)
def test_the_limit_stops_a_probe_of_an_expression(db: Conn, mode: Mode) -> None:
    db.execute(SHARDED)
    with unchanged(db):
        result = probe(db, mode=mode, limit=3)
    p = probed_for(result, "t")
    assert (p.drawn, saw(p), p.passed_max) == (3, (None, None), False)
    assert result.report.findings == []
    assert checked_for(result.report, "t").status == "unchecked"


# -- a sequence that runs out ------------------------------------------------------------

RUNNING_OUT = [
    # the default yields 2, 4, 6 ... 20, then nextval fails
    pytest.param("(6), (41)", (2, 6), 3, id="collides-before-the-end"),
    pytest.param("(41)", (None, None), 10, id="ends-before-the-max"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("ids", "expected", "drawn"), RUNNING_OUT)
def test_a_sequence_that_runs_out_ends_the_probe_cleanly(
    db: Conn, mode: Mode, ids: str, expected: tuple[int | None, int | None], drawn: int
) -> None:
    """A probe draws in batches: one that reaches past MAXVALUE must not make the probe
    fail; the values before the end are still looked at, one by one."""
    db.execute(
        f"""CREATE SEQUENCE s MAXVALUE 10;
            CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s') * 2, v int);
            INSERT INTO t (id) VALUES {ids};"""
    )
    with unchanged(db):
        result = probe(db, mode=mode)
    p = probed_for(result, "t")
    assert (p.mode, saw(p), p.drawn, p.first_value, p.note) == (mode, expected, drawn, 2, None)


@pytest.mark.parametrize("mode", MODES)
def test_an_exhausted_sequence_is_probed_without_error(db: Conn, mode: Mode) -> None:
    db.execute(
        """CREATE SEQUENCE s MAXVALUE 10;
           SELECT setval('s', 10);
           CREATE TABLE t (id int PRIMARY KEY DEFAULT nextval('s') * 2, v int);
           INSERT INTO t (id) VALUES (4);"""
    )
    with unchanged(db):
        result = probe(db, mode=mode)
    p = probed_for(result, "t")
    assert (p.drawn, saw(p), p.first_value) == (0, (None, None), None)


# -- 6. clean columns are settled without a probe of their own ---------------------------

# Every sequence but cyc's is past the highest existing value: probing those columns
# inserts nothing and draws nothing, in either mode. Some of their tables may store
# something else than the default's value (a trigger, a rule, a trigger on a partition);
# cyc wraps onto an existing id (a finding).
CLEAN_KINDS = """
    CREATE TABLE plain (id serial PRIMARY KEY, v int);
    INSERT INTO plain (v) VALUES (1), (2);
    CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
    INSERT INTO ident (v) VALUES ('a');
    CREATE SEQUENCE down INCREMENT -1 MAXVALUE -1;
    CREATE TABLE neg (id int PRIMARY KEY DEFAULT nextval('down'), v int);
    INSERT INTO neg (v) VALUES (1), (2);
    CREATE TABLE only_id (id serial PRIMARY KEY);
    INSERT INTO only_id DEFAULT VALUES;
    CREATE SEQUENCE ended MAXVALUE 3;
    SELECT setval('ended', 3);
    CREATE TABLE ended_t (id int PRIMARY KEY DEFAULT nextval('ended'), v int);
    INSERT INTO ended_t (id) VALUES (2);
    CREATE TABLE part (id bigserial, region text, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE part_eu PARTITION OF part FOR VALUES IN ('eu');
    INSERT INTO part (region) VALUES ('eu'), ('eu');
    CREATE TABLE deferred (id serial PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v int);
    INSERT INTO deferred (v) VALUES (1);
    CREATE TABLE parent (id serial PRIMARY KEY, v int);
    CREATE TABLE heir () INHERITS (parent);
    INSERT INTO parent (v) VALUES (1);
    INSERT INTO heir (v) VALUES (2);

    CREATE FUNCTION back_to_one() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN NEW.id := 1; RETURN NEW; END $$;
    CREATE TABLE trig (id serial PRIMARY KEY, v int);
    INSERT INTO trig (v) VALUES (1);
    CREATE TRIGGER back BEFORE INSERT ON trig FOR EACH ROW EXECUTE FUNCTION back_to_one();
    CREATE TABLE ruled (id serial PRIMARY KEY, v int);
    INSERT INTO ruled (v) VALUES (1);
    CREATE TABLE ruled_log (v int);
    CREATE RULE log AS ON INSERT TO ruled DO ALSO INSERT INTO ruled_log VALUES (NEW.v);
    CREATE TABLE ptrig (id bigserial, region text, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE ptrig_eu PARTITION OF ptrig FOR VALUES IN ('eu');
    INSERT INTO ptrig (region) VALUES ('eu');
    CREATE TRIGGER back BEFORE INSERT ON ptrig_eu FOR EACH ROW EXECUTE FUNCTION back_to_one();
    CREATE SEQUENCE cyc MAXVALUE 5 CYCLE;
    SELECT setval('cyc', 5);
    CREATE TABLE cyc_t (id int PRIMARY KEY DEFAULT nextval('cyc'), v int);
    INSERT INTO cyc_t (id) VALUES (2);
"""
# tables whose inserts may store another value, or with a finding: the real probe
REWRITING = {"trig", "ruled", "ptrig"}
WITH_FINDING = {"cyc_t"}  # wraps onto 2 after 5


def _probed_tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables whose columns go through ``_probe_column``, the probe of its own."""
    seen: list[str] = []
    original = probe_run._probe_column

    def spy(session: Any, verdict: Checked, *args: Any) -> Probed:
        seen.append(verdict.column.table)
        return original(session, verdict, *args)

    monkeypatch.setattr(probe_run, "_probe_column", spy)
    return seen


@pytest.mark.parametrize("mode", MODES)
def test_a_settled_column_is_reported_exactly_as_its_probe_would_report_it(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    """The shortcut changes nothing but the cost: with it and without it (every column
    through ``_probe_column``, as before the shortcut), the probe reports the very same
    columns, modes, notes and findings, and leaves the database as it was."""
    db.execute(CLEAN_KINDS)
    fast_session = PsycopgSession(db)
    with unchanged(db):
        fast = probe(fast_session, mode=mode)
    probed = _probed_tables(monkeypatch)
    monkeypatch.setattr(probe_run, "_settled", lambda *args: {})
    full_session = PsycopgSession(db)
    with unchanged(db):
        full = probe(full_session, mode=mode)
    monkeypatch.undo()

    assert fast.probed == full.probed
    assert [numbers(f) for f in fast.report.findings] == [numbers(f) for f in full.report.findings]
    assert [(f.kind, f.column.table) for f in fast.report.findings] == [
        (f.kind, f.column.table) for f in full.report.findings
    ]
    assert fast.report.checked == full.report.checked
    # not vacuous: every table took the full path in the second run, and the first one
    # was cheaper; the fallback note of a table it cannot copy from is still there
    tables = {p.column.table for p in full.probed}
    assert {"plain", "ident", "neg", "only_id", "ended_t", "part", "deferred", "parent"} < tables
    assert sorted(probed) == sorted(tables)
    assert fast_session.statements < full_session.statements
    only_id = probed_for(fast, "only_id")
    if mode == "insert":
        assert (only_id.mode, only_id.note) == (
            "default",
            "fell back to the default probe: the table has no other column to copy",
        )
    else:
        assert (only_id.mode, only_id.note) == ("default", None)
    # a table with a trigger or rule that may change the value is unchecked by the
    # arithmetic: probed in both modes
    inserted_once = REWRITING
    assert all(
        p.drawn == 0 for p in fast.probed if p.column.table not in WITH_FINDING | inserted_once
    )
    assert all(p.passed_max for p in fast.probed)
    collided = sorted(f.column.table for f in fast.report.findings if f.kind == "collision")
    if mode == "insert":  # one insert each: the trigger stores id 1, which the table holds
        assert all(probed_for(fast, t).drawn == 1 for t in REWRITING)
        assert collided == ["cyc_t", "ptrig", "trig"]
    else:  # evaluating the default cannot see what a trigger does
        assert collided == ["cyc_t"]


@pytest.mark.parametrize("mode", MODES)
def test_two_columns_of_one_sequence_are_reported_as_their_probe_reports_them(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    """A clean table whose two columns are drawn from one sequence: its copies carry
    neither (each insert draws for both), so the insert probe falls back -- and the
    shortcut must say so too, not settle it as copyable."""
    db.execute(
        """CREATE SEQUENCE pair_s;
           CREATE TABLE pair (a int DEFAULT nextval('pair_s') UNIQUE,
                              b int DEFAULT nextval('pair_s') UNIQUE);
           INSERT INTO pair DEFAULT VALUES;"""
    )
    with unchanged(db):
        fast = probe(db, mode=mode)
    monkeypatch.setattr(probe_run, "_settled", lambda *args: {})
    with unchanged(db):
        full = probe(db, mode=mode)
    monkeypatch.undo()
    assert fast.probed == full.probed
    assert fast.report.findings == full.report.findings == []
    fell_back = "fell back to the default probe: the table has no other column to copy"
    assert [(p.mode, p.note) for p in fast.probed] == (
        [("default", fell_back)] * 2 if mode == "insert" else [("default", None)] * 2
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_table_whose_insert_may_store_another_value_is_still_probed(
    db: Conn, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    """A BEFORE INSERT trigger (on the table or on a partition) or an INSERT rule can
    make an insert store something else than the sequence's value, which the arithmetic
    cannot see: the check leaves such a column unchecked, and the probe probes it in
    either mode, as it does a column with a finding."""
    db.execute(CLEAN_KINDS)
    probed = _probed_tables(monkeypatch)
    with unchanged(db):
        probe(db, mode=mode)
    expected = REWRITING | WITH_FINDING
    assert sorted(probed) == sorted(expected)


def _clean_tables(db: Conn, n: int) -> None:
    db.execute("DROP SCHEMA IF EXISTS many CASCADE; CREATE SCHEMA many")
    db.execute(
        sql.SQL(
            """DO $$ BEGIN FOR i IN 1..{} LOOP
                   EXECUTE format('CREATE TABLE many.c%s (id %s PRIMARY KEY, v int)', i,
                       CASE WHEN i % 2 = 0 THEN 'serial'
                            ELSE 'bigint GENERATED BY DEFAULT AS IDENTITY' END);
                   EXECUTE format('INSERT INTO many.c%s (v) VALUES (1), (2)', i);
               END LOOP; END $$"""
        ).format(sql.Literal(n))
    )


@pytest.mark.parametrize("mode", MODES)
def test_statements_per_probe_do_not_grow_with_clean_tables(db: Conn, mode: Mode) -> None:
    """Next to a drifted table and a trigger table, 20 or 40 clean tables: the probe sends
    the same number of statements (the check's are constant too). A database that is
    all clean costs the check and, in ``insert`` mode, one catalog query: no sequence is
    read or restored, since no ``nextval`` runs."""
    db.execute(SEED_STORY)
    db.execute(
        """CREATE TABLE trig (id serial PRIMARY KEY, v int);
           INSERT INTO trig (v) VALUES (1);
           CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
           CREATE TRIGGER keep BEFORE INSERT ON trig FOR EACH ROW EXECUTE FUNCTION keep();"""
    )
    sent: list[int] = []
    clean: list[tuple[int, int]] = []
    for n in (20, 40):  # more reads than prepared.DIRECT: the block's statements
        _clean_tables(db, n)
        session = PsycopgSession(db)
        prepared.forget(db)  # the seed story's reads were sent before: not prepared
        with unchanged(db):
            result = probe(session, mode=mode)
        assert len(result.probed) == n + 2
        assert [f.column.table for f in result.report.findings] == ["t"]
        sent.append(session.statements)

        checked, probed = PsycopgSession(db), PsycopgSession(db)
        remembered.forget()  # each discovers: the same statements
        check(checked, schemas=["many"])
        remembered.forget()
        prepared.forget(db)  # and its reads: the same statements as the check's
        with unchanged(db):
            result = probe(probed, schemas=["many"], mode=mode)
        assert len(result.probed) == n
        assert result.restored == 0
        clean.append((probed.statements, checked.statements))
    assert sent[0] == sent[1], sent
    catalog_query = 3 if mode == "insert" else 0  # BEGIN, the query, COMMIT
    assert clean[0] == clean[1] == (clean[0][1] + catalog_query, clean[0][1]), clean
