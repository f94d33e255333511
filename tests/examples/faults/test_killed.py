"""The database's server process is killed while the plugin checks or probes it.

A migration holds a lock, the probe waits for it, and another session terminates the
probe's backend: that test must fail with the reason, and the run must go on.
"""

import threading
import time

import psycopg
import pytest

SCHEMA = """
CREATE TABLE parent (code text PRIMARY KEY);
INSERT INTO parent VALUES ('a');
CREATE TABLE child (id serial PRIMARY KEY, code text REFERENCES parent);
INSERT INTO child (id, code) VALUES (3, 'a');  -- drift: the probe inserts into child
CREATE TABLE busy (id serial PRIMARY KEY);
"""

SEED = """
CREATE TABLE profile_billingaddress (id serial PRIMARY KEY, street text);
INSERT INTO profile_billingaddress (id, street) VALUES (7, 'a'), (9, 'b'), (16, 'c');
"""


def _kill_when_it_waits(dsn, pid, killed, stop):
    """Terminate backend ``pid`` as soon as it waits for a lock."""
    with psycopg.connect(dsn, autocommit=True) as other:
        while not stop.is_set():
            (waiting,) = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                [pid],
            ).fetchone()
            if waiting:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
                killed.set()
                return
            time.sleep(0.002)


@pytest.fixture
def killer(postgresql):
    """Migrate (the test body calls it: the drift is the test's, not its set-up's), then
    hold ACCESS EXCLUSIVE on the table the test names, like a migration in another
    session; kill the test's backend once it waits for that lock."""
    killed, stop = threading.Event(), threading.Event()
    holder = psycopg.connect(postgresql.info.dsn)

    def start(table):
        postgresql.execute(SCHEMA)
        postgresql.commit()
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(
            target=_kill_when_it_waits,
            args=(postgresql.info.dsn, postgresql.info.backend_pid, killed, stop),
            daemon=True,
        )
        thread.start()
        threads.append(thread)

    threads = []
    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    holder.close()
    assert killed.is_set(), "the test's backend was never seen waiting"


@pytest.mark.seqdrift
def test_killed_while_checked(postgresql, killer):
    killer("busy")  # the check reads busy: it waits, and is killed


@pytest.mark.seqdrift
def test_killed_while_probed(postgresql, killer):
    killer("parent")  # only the probe's insert into child needs parent: it waits


@pytest.mark.seqdrift
def test_the_run_goes_on(postgresql):
    postgresql.execute(SEED)
    postgresql.commit()


@pytest.mark.seqdrift
def test_and_on(postgresql):
    postgresql.execute("CREATE TABLE fine (id serial PRIMARY KEY, v int)")
    postgresql.execute("INSERT INTO fine (v) VALUES (1)")
    postgresql.commit()


@pytest.fixture
def migration(postgresql):
    """Another session, its transaction open until the test's teardown."""
    conn = psycopg.connect(postgresql.info.dsn)
    yield conn
    conn.close()


@pytest.mark.seqdrift
def test_a_locked_table_is_left_alone(postgresql, migration):
    postgresql.execute(SEED + "CREATE TABLE busy (id serial PRIMARY KEY, v int);")
    postgresql.execute("INSERT INTO busy (id) VALUES (5)")
    postgresql.commit()
    migration.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")


@pytest.mark.seqdrift
def test_a_sequence_altered_by_a_migration(postgresql, migration):
    postgresql.execute(SEED)
    postgresql.commit()
    migration.execute("ALTER SEQUENCE profile_billingaddress_id_seq RESTART 100")
