"""check() and the connection it is given: transactions, settings and round trips."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from support.cli import dsn

from pytest_seqdrift import CannotCheck, check
from pytest_seqdrift.db.drivers import PsycopgSession
from pytest_seqdrift.db.session import Then
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.model import Report

SEED = """
CREATE TABLE billing (id serial PRIMARY KEY);
INSERT INTO billing (id) VALUES (7), (9), (12), (14), (16);
"""


def test_idle_connection_is_left_idle_with_its_autocommit(db: psycopg.Connection[Any]) -> None:
    db.execute(SEED)
    db.autocommit = False
    db.commit()
    report = check(db)
    assert [f.first_collision for f in report.findings] == [7]
    assert db.info.transaction_status == TransactionStatus.IDLE
    assert db.autocommit is False


def test_runs_read_only_in_its_own_transaction(db: psycopg.Connection[Any]) -> None:
    """The check's own transaction is READ ONLY: prove it from inside, through the
    same session machinery check() uses."""
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=500):
        assert session.run("SHOW transaction_read_only") == [("on",)]
        assert session.run("SHOW transaction_isolation") == [("repeatable read",)]
        assert session.run("SHOW lock_timeout") == [("500ms",)]
    assert db.execute("SHOW lock_timeout").fetchone() == ("0",)


def test_a_lazy_savepoint_goes_with_the_first_statement_and_reads_with_the_end(
    db: psycopg.Connection[Any],
) -> None:
    """Inside the caller's transaction, ``read_only(lazy=True)`` opens its savepoint and
    settings in the round trip of the block's first statement, and ``then`` reads in
    the round trip that ends the block -- inside the savepoint, before its rollback."""
    db.autocommit = False
    db.execute("SET LOCAL lock_timeout = '7s'")
    session = PsycopgSession(db)
    then = Then([("SELECT current_setting('lock_timeout')", ())])
    before = session.round_trips
    with session.read_only(lock_timeout_ms=500, lazy=True, then=then):
        assert session.round_trips == before  # nothing sent yet
        assert session.run("SHOW lock_timeout") == [("500ms",)]
        assert session.batch([("SELECT 2", ())]) == [[(2,)]]
    assert session.round_trips - before == 3  # the first statement, the batch, the end
    assert then.rows == [[("500ms",)]]
    assert db.info.transaction_status == TransactionStatus.INTRANS
    assert db.execute("SHOW lock_timeout").fetchone() == ("7s",)
    with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
        db.execute("RELEASE SAVEPOINT seqdrift_check")  # rolled back and released
    db.rollback()


def test_a_lazy_block_that_sends_nothing_opens_nothing(db: psycopg.Connection[Any]) -> None:
    db.autocommit = False
    db.execute("SELECT 1")
    session = PsycopgSession(db)
    then = Then([("SELECT 3", ())])
    before = session.statements
    with session.read_only(lock_timeout_ms=500, lazy=True, then=then):
        pass
    assert then.rows == [[(3,)]]
    # the reads alone, in a savepoint of the batch's own: SAVEPOINT, the read,
    # ROLLBACK TO, RELEASE -- no savepoint of the block, no settings
    assert session.statements - before == 4
    empty = Then([])
    with session.read_only(lock_timeout_ms=500, lazy=True, then=empty):
        pass
    assert session.statements - before == 4
    assert db.info.transaction_status == TransactionStatus.INTRANS
    db.rollback()


def test_reads_with_the_end_that_fail_lose_nothing(db: psycopg.Connection[Any]) -> None:
    """A ``then`` read that fails answers None; the savepoint is still undone, the
    caller's transaction usable and its settings its own. A block that raises runs no
    ``then``."""
    db.autocommit = False
    db.execute("SET LOCAL lock_timeout = '7s'")
    session = PsycopgSession(db)
    failing = Then([("SELECT 1 / 0", ())])
    with session.read_only(lock_timeout_ms=500, lazy=True, then=failing):
        session.run("SELECT 1")
    assert failing.rows is None
    assert db.execute("SHOW lock_timeout").fetchone() == ("7s",)
    unread = Then([("SELECT 4", ())])
    with (
        pytest.raises(CannotCheck, match="division by zero"),
        session.read_only(lock_timeout_ms=500, lazy=True, then=unread),
    ):
        session.run("SELECT 1 / 0")
    assert unread.rows is None
    assert db.info.transaction_status == TransactionStatus.INTRANS
    assert db.execute("SHOW lock_timeout").fetchone() == ("7s",)
    db.rollback()


def test_users_transaction_is_untouched_and_its_rows_are_seen(db: psycopg.Connection[Any]) -> None:
    db.autocommit = False
    db.execute(SEED)  # uncommitted: the check must see it, and must not end it
    db.execute("SET LOCAL lock_timeout = '7s'")
    report = check(db)
    assert [f.first_collision for f in report.findings] == [7]
    assert db.info.transaction_status == TransactionStatus.INTRANS
    assert db.execute("SHOW lock_timeout").fetchone() == ("7s",)
    db.rollback()
    assert check(db).findings == []


def test_failed_transaction_is_a_clear_error(db: psycopg.Connection[Any]) -> None:
    db.autocommit = False
    with pytest.raises(psycopg.errors.DivisionByZero):
        db.execute("SELECT 1 / 0")
    with pytest.raises(CannotCheck, match="failed transaction"):
        check(db)
    assert db.info.transaction_status == TransactionStatus.INERROR


def test_not_a_connection_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot check a builtins.str"):
        check("postgresql://localhost/db")


@pytest.mark.parametrize("threshold", [0.0, 1.5, -1])
def test_threshold_is_validated(db: psycopg.Connection[Any], threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        check(db, threshold=threshold)


def test_statements_do_not_grow_with_the_number_of_tables(db: psycopg.Connection[Any]) -> None:
    """Counted, not timed: the same statements and round trips for 20 tables as for 60,
    drifted or not (a drifted column's windows are read in a second block, once); and
    fewer when nothing has committed since the last check, which takes its discovery
    (read.remembered). The second check prepares its reads on the connection, the third
    only executes them (read.prepared)."""

    def sent(n: int, drifted: bool) -> tuple[int, ...]:
        schema = f"s{n}_{'drifted' if drifted else 'clean'}"
        db.execute(f"CREATE SCHEMA {schema}")
        for i in range(n):
            db.execute(f"CREATE TABLE {schema}.t{i} (id serial PRIMARY KEY)")
            db.execute(f"INSERT INTO {schema}.t{i} (id) VALUES (5)")
            if not drifted:
                db.execute(f"SELECT setval('{schema}.t{i}_id_seq', 5)")
        counts: list[int] = []
        # a connection of its own: no statement another size prepared takes its room
        with psycopg.connect(dsn(db), autocommit=db.autocommit) as conn:
            for _ in range(3):
                session = PsycopgSession(conn)
                report = check(session, schemas=[schema])
                assert len(report.checked) == n
                assert len(report.findings) == (n if drifted else 0)
                counts += [session.statements, session.round_trips]
        return tuple(counts)

    # the look for a remembered discovery (SAVEPOINT, the look, RELEASE) in one round
    # trip more; a discovery taken again saves discovery and the keys' round trip; a
    # read block (SAVEPOINT, its input, DO, its answers, RELEASE) prepared (SAVEPOINT,
    # PREPARE, ROLLBACK TO, RELEASE) in one round trip more, then executed (SAVEPOINT,
    # EXECUTE, ROLLBACK TO, RELEASE)
    # a few reads seen once are one statement, not the block (prepared.DIRECT): the
    # same round trips, and a statement less for each (SAVEPOINT, the statement,
    # ROLLBACK TO, RELEASE)
    assert sent(2, drifted=False) == (15, 6, 14, 5, 10, 4)
    assert sent(2, drifted=True) == (19, 7, 22, 7, 14, 5)
    assert sent(20, drifted=False) == sent(60, drifted=False) == (16, 6, 14, 5, 10, 4)
    assert sent(20, drifted=True) == sent(60, drifted=True) == (21, 7, 22, 7, 14, 5)


def test_one_statement_reads_agree_with_the_per_table_reads(db: psycopg.Connection[Any]) -> None:
    """The read block and the same reads as statements of their own answer alike."""
    from pytest_seqdrift import checker, drift
    from pytest_seqdrift.model import SequenceState
    from pytest_seqdrift.read import block, reader

    db.execute(
        '''
        CREATE SCHEMA "Odd ""Schema""";
        CREATE TABLE "Odd ""Schema"""."T ""1""" ("Id" serial PRIMARY KEY);
        INSERT INTO "Odd ""Schema"""."T ""1""" ("Id") VALUES (3), (-4), (9);
        CREATE TABLE "back\\slash ""{x}"", %s" ("\\"" i d" serial PRIMARY KEY);
        INSERT INTO "back\\slash ""{x}"", %s" VALUES (4);
        CREATE SEQUENCE neg INCREMENT -3 MINVALUE -100 MAXVALUE -1 START -1;
        CREATE TABLE n (id int PRIMARY KEY DEFAULT nextval('neg'));
        INSERT INTO n VALUES (-7), (-10), (-50);
        CREATE SEQUENCE five INCREMENT 5 MAXVALUE 60;
        CREATE TABLE f (id numeric PRIMARY KEY DEFAULT nextval('five'));
        INSERT INTO f VALUES (11), (12.5), (56);
        CREATE TABLE p (id bigserial, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
        CREATE TABLE p1 PARTITION OF p FOR VALUES IN ('a');
        CREATE TABLE p2 PARTITION OF p FOR VALUES IN ('b');
        INSERT INTO p VALUES (4, 'a'), (2, 'b'), (-9223372036854775808, 'b');
        CREATE SEQUENCE cyc MAXVALUE 10 CYCLE;
        SELECT setval('cyc', 9);
        CREATE TABLE c (id smallint PRIMARY KEY DEFAULT nextval('cyc'));
        INSERT INTO c VALUES (2), (5);
        '''
    )
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=1000):
        columns, sequences = reader.discover(session)
        states = reader.read_sequence_states(session, list(sequences.values()))
        reads: list[block.Read] = [block.StateRead(s) for s in sequences.values()]
        for c in columns:
            seq, state = sequences[c.sequence_oid], states[c.sequence_oid]
            assert isinstance(state, SequenceState)
            plan = drift.search(c, seq, state)
            reads.append(block.ColumnRead(c, block.search_slots(plan)))
            reads.append(block.ColumnRead(c, (None, None, checker._top_slot(c, seq), None)))
        before = session.statements
        in_the_block = reader._read(session, reads)
        assert session.statements - before == 5  # SAVEPOINT, set, DO, get, RELEASE
        one_by_one = reader._read_one_by_one(session, reads)
    assert len(columns) == 6
    assert in_the_block == one_by_one
    bounds = [block.as_bounds(a) for a in in_the_block[len(sequences) :] if isinstance(a, tuple)]
    assert any(b.after_wrap is not None for b in bounds)
    assert any(b.last_on_grid is not None for b in bounds)


@pytest.mark.parametrize(
    ("number", "text"), [(150018, "15.18"), (110000, "11.0"), (90624, "9.6.24"), (100023, "10.23")]
)
def test_server_versions_read_as_people_write_them(number: int, text: str) -> None:
    from pytest_seqdrift.db.session import version_text

    assert version_text(number) == text


ODD_IDS = """
CREATE SEQUENCE narrow MINVALUE 10 MAXVALUE 100;
SELECT setval('narrow', 40);
CREATE TABLE above (id int PRIMARY KEY DEFAULT nextval('narrow'));
INSERT INTO above VALUES (500), (30);           -- the max lies past MAXVALUE
CREATE TABLE above_hit (id int PRIMARY KEY DEFAULT nextval('narrow'));
INSERT INTO above_hit VALUES (500), (60);       -- ... and below it one collides
CREATE TABLE below (id int PRIMARY KEY DEFAULT nextval('narrow'));
INSERT INTO below VALUES (3), (-7);             -- every id below MINVALUE
CREATE SEQUENCE down INCREMENT -1 MINVALUE -100 MAXVALUE -10 START -10;
SELECT setval('down', -40);
CREATE TABLE deep (id bigint PRIMARY KEY DEFAULT nextval('down'));
INSERT INTO deep VALUES (-500), (-60);          -- the min lies past MINVALUE
CREATE TABLE shallow (id bigint PRIMARY KEY DEFAULT nextval('down'));
INSERT INTO shallow VALUES (-500), (-20);       -- only the one past MINVALUE
CREATE TABLE empty (id serial PRIMARY KEY);
CREATE TABLE plain (id serial PRIMARY KEY);
INSERT INTO plain (id) SELECT nextval('plain_id_seq') FROM generate_series(1, 3);
CREATE TABLE money (id numeric PRIMARY KEY DEFAULT nextval('narrow'));
INSERT INTO money VALUES (70.5), (45);
"""


def test_the_first_read_agrees_with_reading_every_window(db: psycopg.Connection[Any]) -> None:
    """check() reads each column's max (min) first, over all rows, and the rest of its
    plan only where needed; reading every window of every plan must judge alike,
    including where the max lies past the sequence's range."""
    from pytest_seqdrift import checker, drift
    from pytest_seqdrift.model import SequenceState
    from pytest_seqdrift.read import reader

    db.execute(ODD_IDS)
    report = check(db)
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=1000):
        columns, sequences = reader.discover(session)
        states = reader.read_sequence_states(session, list(sequences.values()))
        plans = []
        for c in columns:
            state = states[c.sequence_oid]
            assert isinstance(state, SequenceState)
            plans.append((c, sequences[c.sequence_oid], state))
        full = reader.read_bounds(session, [(c, drift.search(c, s, st)) for c, s, st in plans])
    expected = []
    for (c, seq, state), bounds in zip(plans, full, strict=True):
        assert not isinstance(bounds, ReadFailure)
        expected += drift.assess(c, seq, state, bounds)[0]
    assert len(columns) == 8
    judged = Report(findings=expected)
    checker._one_fix_per_sequence(judged)  # a shared sequence's fixes go as far as the furthest
    assert sorted(report.findings, key=str) == sorted(judged.findings, key=str)
    collided = {f.column.table: (f.first_collision, f.max_existing) for f in report.findings}
    assert collided == {"above_hit": (60, 60), "deep": (-60, -60), "money": (45, 45)}


def test_without_plpgsql_the_reads_go_as_statements(db: psycopg.Connection[Any]) -> None:
    """A role that may not use PL/pgSQL gets the same report, read statement by
    statement instead of in one block."""
    import uuid

    from psycopg import sql

    db.execute(ODD_IDS)
    with_block = PsycopgSession(db)
    expected = check(with_block)
    role = sql.Identifier(f"seqdrift_noplpgsql_{uuid.uuid4().hex[:12]}")
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    try:
        db.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role))
        db.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
        db.execute("REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC")
        db.execute(sql.SQL("SET ROLE {}").format(role))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute("DO $$ BEGIN END $$")
        without = PsycopgSession(db)
        report = check(without)
    finally:
        db.execute("RESET ROLE")
        db.execute(sql.SQL("DROP OWNED BY {}").format(role))
        db.execute(sql.SQL("DROP ROLE {}").format(role))
    assert report == expected
    assert report.skipped == []
    assert without.statements > with_block.statements


def test_statement_reads_stay_right_when_their_pipeline_aborts_again_and_again(
    db: psycopg.Connection[Any],
) -> None:
    """Without PL/pgSQL, reads go as a pipeline of statements; a locked table aborts
    that pipeline and the reads are sent again one by one. Many checks on one
    connection (psycopg prepares a statement it has seen five times) must keep working."""
    import uuid

    from psycopg import sql

    db.execute(ODD_IDS)
    role = sql.Identifier(f"seqdrift_noplpgsql_{uuid.uuid4().hex[:12]}")
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    db.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role))
    db.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
    db.execute("REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC")
    expected = check(db)
    locker = psycopg.connect(db.info.dsn)
    try:
        locker.execute("LOCK TABLE plain IN ACCESS EXCLUSIVE MODE")
        db.execute(sql.SQL("SET ROLE {}").format(role))
        for _ in range(8):
            report = check(db, lock_timeout_ms=20)
            assert [(s.table, s.reason) for s in report.skipped] == [
                ("plain", "canceling statement due to lock timeout")
            ]
            assert report.findings == expected.findings
    finally:
        locker.close()
        db.execute("RESET ROLE")
        db.execute(sql.SQL("DROP OWNED BY {}").format(role))
        db.execute(sql.SQL("DROP ROLE {}").format(role))


def test_a_generated_column_naming_a_sequence_is_listed_not_fatal(
    db: psycopg.Connection[Any],
) -> None:
    """A generated column's expression refers to other columns: it is deparsed with its
    table (without one, pg_get_expr fails, and with it the whole discovery)."""
    db.execute(
        """
        CREATE FUNCTION tagged(r regclass, x int) RETURNS bigint IMMUTABLE
            LANGUAGE sql AS 'SELECT x::bigint * 10';
        CREATE SEQUENCE tags;
        CREATE TABLE g (id int PRIMARY KEY,
                        code bigint GENERATED ALWAYS AS (tagged('tags'::regclass, id)) STORED);
        INSERT INTO g (id) VALUES (1), (2);
        """
    )
    (verdict,) = check(db).checked
    assert (verdict.column.column, verdict.status) == ("code", "unchecked")
    assert verdict.column.default_expr == "tagged('tags'::regclass, id)"


def test_jobs_share_one_snapshot(db: psycopg.Connection[Any]) -> None:
    """A sibling connection reads the rows of the check's own snapshot, not newer ones."""
    db.execute("CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t DEFAULT VALUES")
    session = PsycopgSession(db)
    with session.read_only(lock_timeout_ms=1000, share=True) as snapshot:
        assert snapshot is not None
        with psycopg.connect(db.info.dsn, autocommit=True) as writer:
            writer.execute("INSERT INTO t DEFAULT VALUES")  # committed after the snapshot
        sibling = session.sibling(snapshot, lock_timeout_ms=1000)
        assert sibling is not None
        try:
            assert sibling.run("SELECT count(*) FROM t") == [(1,)]
            assert sibling.run("SHOW transaction_read_only") == [("on",)]
        finally:
            sibling.conn.close()
        assert session.run("SELECT count(*) FROM t") == [(1,)]
    assert db.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_jobs_read_on_several_connections_and_agree(
    db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_seqdrift.read import reader

    db.execute(ODD_IDS)
    expected = check(db)
    opened: list[object] = []
    original = PsycopgSession.sibling

    def spy(self: PsycopgSession, *args: Any, **kwargs: Any) -> Any:
        opened.append(sibling := original(self, *args, **kwargs))
        return sibling

    monkeypatch.setattr(PsycopgSession, "sibling", spy)
    monkeypatch.setattr(reader, "PARALLEL_MIN_READS", 0)
    assert check(db, jobs=3) == expected
    assert len(opened) == 2
    assert None not in opened
    # inside the caller's transaction there is no snapshot to share: one connection
    opened.clear()
    with db.transaction():
        assert check(db, jobs=3) == expected
    assert opened == []
    with pytest.raises(ValueError, match="jobs"):
        check(db, jobs=0)


def test_a_read_block_answer_that_is_not_one_is_a_clear_error_not_a_traceback() -> None:
    from pytest_seqdrift.read import block

    answers = block.parse_result("0\t5\ttrue\t\t\n2\t!55P03 canceling statement", 3)
    assert answers == [("5", "true", None, None), None, ReadFailure("canceling statement", "55P03")]
    for garbage in ("no tab here", "x\t1", "7\t1\t2\t3\t4"):
        with pytest.raises(CannotCheck, match="the read block answered what no read asked"):
            block.parse_result(garbage, 3)
