"""The sequences the probe moves: one read or set again, and every one that moved put
back. ``nextval`` is not rolled back with a savepoint: every sequence is read before
the probe draws a value, and put back exactly (``last_value`` and ``is_called``)."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg import sql

from pytest_seqdrift import snapshot
from pytest_seqdrift.db.session import SEQUENCE_LIMIT_EXCEEDED, Session, sqlstate
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.model import PgSequence, SequenceState
from pytest_seqdrift.read.reader import read_sequence_states


def _read_state(session: Session, seq: PgSequence) -> SequenceState:
    """Where one sequence is now."""
    ((last_value, is_called),) = session.run(
        sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(seq.schema, seq.name))
    )
    return SequenceState(int(last_value), bool(is_called))


def _set_state(session: Session, seq: PgSequence, state: SequenceState) -> None:
    """Move one sequence back to a state read before (``_read_state``)."""
    session.run(
        sql.SQL("SELECT setval({}::regclass, {}, {})").format(
            sql.Literal(seq.qualified), sql.Literal(state.last_value), sql.Literal(state.is_called)
        )
    )


# Every sequence of ``_put_back``'s that moved, set back in one statement: each setval
# takes its sequence by name, as recorded.
_SETVAL_ALL = """
SELECT setval(format('%%I.%%I', u.nsp, u.name)::regclass, u.lv, u.ic)
FROM unnest(%s::text[], %s::text[], %s::int8[], %s::bool[]) AS u(nsp, name, lv, ic)
"""


def _put_back(
    session: Session, states: Mapping[snapshot.SequenceKey, SequenceState]
) -> list[snapshot.SequenceKey]:
    """Every sequence of ``states`` that moved since, set back to its recorded state;
    returns them. The sequences are read with the check's read block (no XML, its
    locks let go), and set back in one statement. Sequences dropped since, or no
    longer readable, are left alone, as ``snapshot.restore`` leaves them. Where the
    setval fails (a sequence the role cannot ``setval``), ``snapshot.restore`` does it
    again and says which one."""
    if not states:
        return []
    keys = list(states)
    now = read_sequence_states(session, keys)
    moved = [k for k in keys if not isinstance(now[k.oid], ReadFailure) and now[k.oid] != states[k]]
    if not moved:
        return []
    params = [
        [k.schema for k in moved],
        [k.name for k in moved],
        [states[k].last_value for k in moved],
        [states[k].is_called for k in moved],
    ]
    (rows,) = session.batch([(_SETVAL_ALL, params)])
    if isinstance(rows, ReadFailure):
        snapshot.restore(session, states)
    return moved


def _put_back_at_end(
    session: Session, states: Mapping[snapshot.SequenceKey, SequenceState], lock_timeout_ms: int
) -> int:
    """``_put_back`` once more, once the probe's savepoint or transaction is rolled
    back: usually nothing has moved (each probed column was already followed by a
    ``_put_back``); this one is for a probe that failed half-way. Within the lock
    timeout: a sequence a migration holds (ALTER SEQUENCE) must not hang the test run;
    it could not have been drawn from either."""
    timeout = [f"{int(lock_timeout_ms)}ms"]
    if session.in_transaction:
        # the caller's transaction: its settings are its own, back after the savepoint
        with session.savepoint("seqdrift_restore", rollback=True):
            session.run("SELECT set_config('lock_timeout', %s, true)", timeout)
            return len(_put_back(session, states))
    with session.transaction():
        session.run("SELECT set_config('lock_timeout', %s, true)", timeout)
        # Our own transaction: its COMMIT need not wait for a WAL flush (a setval
        # assigns an xid, so a synchronous commit would wait). What a crash can lose
        # is this restore's WAL; recovery then replays the sequences' records that did
        # reach the disk, and every one the probe wrote moves a sequence to a state at
        # or ahead of the recorded one (``nextval`` only moves forward; each setval of
        # the probe goes back to a state read during the probe, or to the record
        # itself). A lost restore leaves a sequence ahead: gaps, never a collision.
        session.run("SELECT set_config('synchronous_commit', 'off', true)")
        return len(_put_back(session, states))


def _ran_out(exc: BaseException) -> bool:
    """nextval past MAXVALUE (MINVALUE) of a sequence without CYCLE."""
    return sqlstate(exc) == SEQUENCE_LIMIT_EXCEEDED
