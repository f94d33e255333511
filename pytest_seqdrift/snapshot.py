"""Read, diff and restore the state of every sequence in a database.

``nextval`` is not rolled back with a transaction or a savepoint: whoever advances
sequences in a test database (the probe, or a test itself) must put them back with
``setval(seq, last_value, is_called)``. A snapshot records exactly that pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from pytest_seqdrift.db.adapters import open_session
from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import SequenceState
from pytest_seqdrift.read.reader import read_sequence_states

# every sequence the role can read, in every schema but the system ones
SEQUENCES = """
SELECT s.oid::int8, n.nspname::text, s.relname::text
FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE s.relkind = 'S'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT pg_is_other_temp_schema(n.oid)
  AND has_table_privilege(s.oid, 'SELECT')  -- safe on any relkind, unlike has_sequence_privilege
ORDER BY n.nspname, s.relname
"""


@dataclass(frozen=True)
class Moved:
    sequence: str  # schema.name
    before: SequenceState | None  # None: the sequence did not exist
    after: SequenceState | None  # None: the sequence was dropped


@dataclass(frozen=True)
class SequenceKey:
    oid: int
    schema: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


def read_states(conn: Any) -> dict[SequenceKey, SequenceState]:
    """The state of every readable sequence: one query, then a statement per 1,000."""
    with open_session(conn) as session, session.transaction():
        return _read_states(session)


def _read_states(session: Session) -> dict[SequenceKey, SequenceState]:
    keys = [SequenceKey(*row) for row in session.run(SEQUENCES)]
    states = read_sequence_states(session, keys)
    return {
        key: state
        for key in keys
        # dropped meanwhile, or locked: nothing to record or restore
        if not isinstance(state := states[key.oid], ReadFailure)
    }


def diff(
    before: Mapping[SequenceKey, SequenceState], after: Mapping[SequenceKey, SequenceState]
) -> list[Moved]:
    """The sequences whose state differs, created or dropped between two readings."""
    moved = []
    for key in sorted(set(before) | set(after), key=lambda k: (k.schema, k.name, k.oid)):
        old, new = before.get(key), after.get(key)
        if old != new:
            moved.append(Moved(key.label, old, new))
    return moved


def restore(conn: Any, states: Mapping[SequenceKey, SequenceState]) -> int:
    """Put every recorded sequence back exactly (``last_value`` and ``is_called``);
    returns how many were moved. Sequences dropped since are left alone. ``setval``
    is not transactional: the restore holds even if the caller's transaction rolls back.
    """
    with open_session(conn) as session, session.transaction():
        return _restore(session, states)


def _restore(session: Session, states: Mapping[SequenceKey, SequenceState]) -> int:
    current = _read_states(session)
    changed = [(k, s) for k, s in states.items() if k in current and current[k] != s]
    answers = session.batch(
        [
            (
                sql.SQL("SELECT setval(%s::oid::regclass, %s, %s)"),
                (k.oid, s.last_value, s.is_called),
            )
            for k, s in changed
        ]
    )
    failed = [
        (k, a) for (k, _), a in zip(changed, answers, strict=True) if isinstance(a, ReadFailure)
    ]
    if failed:
        names = ", ".join(f"{k.label} ({a.message})" for k, a in failed)
        raise CannotCheck(f"could not restore sequences: {names}")
    return len(changed)
