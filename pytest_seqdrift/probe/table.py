"""A table made ready for the insert probe, inside the column's savepoint: its other
unique and exclusion keys dropped, so that only the key under test can collide, and
what runs on an INSERT into it (triggers and rules)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pytest_seqdrift.db.session import (
    LOCK_NOT_AVAILABLE,
    OBJECT_IN_USE,
    Session,
    error_line,
    sqlstate,
)
from pytest_seqdrift.model import Column, printable
from pytest_seqdrift.probe.target import _CannotCopy

# The table's unique and exclusion constraints and unique indexes. For a partitioned
# table, the names of the partitions' indexes attached to each one, so that a violation
# reported by a partition is recognised as the key's.
_TABLE_KEYS = """
WITH RECURSIVE keys AS (
    SELECT i.indexrelid, i.indnkeyatts, i.indisprimary, c.conname::text AS conname,
           coalesce(c.condeferrable, false) AS deferrable
    FROM pg_index i
    LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
    WHERE i.indrelid = %(table)s AND (i.indisunique OR c.contype = 'x')
), attached (root, indexrelid) AS (
    SELECT indexrelid, indexrelid FROM keys
    UNION ALL
    SELECT a.root, h.inhrelid FROM attached a JOIN pg_inherits h ON h.inhparent = a.indexrelid
)
SELECT k.conname, ic.relname::text,
       ARRAY(SELECT x.relname::text FROM attached a JOIN pg_class x ON x.oid = a.indexrelid
             WHERE a.root = k.indexrelid) AS names,
       k.deferrable
FROM keys k JOIN pg_class ic ON ic.oid = k.indexrelid
ORDER BY k.indnkeyatts, k.indisprimary DESC, k.indexrelid
"""

_COPYABLE = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = '' AND a.attidentity <> 'a' AND a.attnum <> %s
ORDER BY a.attnum
"""

# What runs on an INSERT into the table or into a table under it (partitions, to
# which rows are routed; inheritance children too, to err on the safe side): triggers
# of the user's (not the internal ones of foreign keys), and rules. ``decides``: a
# BEFORE ROW trigger or a rule, which may change the value stored; every other one (and
# every rule) runs statements of its own, after the row or once per statement.
# ``instead``: a DO INSTEAD rule of the table itself, which does another INSERT.
_HOOKS = """
WITH RECURSIVE tree (relid) AS (
    SELECT %(table)s::oid
    UNION
    SELECT h.inhrelid FROM tree t JOIN pg_inherits h ON h.inhparent = t.relid
)
SELECT g.tgtype::int & 67 = 3 AS decides, g.tgtype::int & 67 <> 3 AS hooks, false AS instead,
       format('trigger %%I on %%I.%%I (%%s INSERT%%s)', g.tgname, n.nspname, c.relname,
              CASE WHEN g.tgtype::int & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END,
              CASE WHEN g.tgtype::int & 1 = 1 THEN '' ELSE ', per statement' END) AS name
FROM tree t JOIN pg_trigger g ON g.tgrelid = t.relid
JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND g.tgtype::int & 4 = 4 AND g.tgenabled <> 'D'
UNION ALL
SELECT true, true, r.is_instead AND r.ev_class = %(table)s::oid,
       format('rule %%I on %%I.%%I', r.rulename, n.nspname, c.relname)
FROM tree t JOIN pg_rewrite r ON r.ev_class = t.relid AND r.ev_type = '3' AND r.ev_enabled <> 'D'
JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 4
"""


@dataclass(frozen=True)
class _Table:
    """A table made ready for the insert probe (``_prepare_table``)."""

    key: frozenset[str]  # the names a violation of the key under test can carry
    copyable: tuple[str, ...]  # the columns a copied row carries
    deferrable: str | None = None  # the key's constraint, where it is deferrable
    deciders: tuple[str, ...] = ()  # BEFORE INSERT row triggers and rules: may change the value
    hooks: tuple[str, ...] = ()  # AFTER and statement triggers, and rules: run statements
    replaced_by: tuple[str, ...] = ()  # DO INSTEAD rules: the INSERT is another one


def _prepare_table(session: Session, column: Column) -> _Table:
    """Drop, inside the current savepoint, every unique or exclusion constraint and
    unique index of the table but the key under test. Says what the probe needs to know
    of the table."""
    ((attnum,),) = session.run(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s",
        [column.table_oid, column.column],
    )
    rows = session.run(_TABLE_KEYS, {"table": column.table_oid})
    deferrable: str | None = None
    table = sql.Identifier(column.schema, column.table)
    # the keys the check counts (keys.py) are the key under test, on the table or on
    # its partitions; every other unique or exclusion key of the table is dropped
    counted = {k.name for k in column.keys}
    key = set(counted)
    for conname, index_name, names, can_defer in rows:
        # (a parent's index is kept where one of its partitions' is counted: dropping it
        # drops theirs)
        if conname in counted or counted & set(names):
            key |= set(names)
            if can_defer and deferrable is None:
                deferrable = conname  # SET CONSTRAINTS on it reaches its partitions' too
            continue
        if conname is not None:
            _alter(
                session,
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} CASCADE").format(
                    table, sql.Identifier(conname)
                ),
            )
        else:
            _alter(
                session,
                sql.SQL("DROP INDEX {} CASCADE").format(sql.Identifier(column.schema, index_name)),
            )
    if not key:
        raise _CannotCopy("no unique key covers the column")
    # not the columns drawn from the same sequence: each insert draws for them too
    copyable = [
        name
        for (name,) in session.run(_COPYABLE, [column.table_oid, attnum])
        if name not in column.siblings
    ]
    if not copyable:
        raise _CannotCopy("the table has no other column to copy")
    hooks = session.run(_HOOKS, {"table": column.table_oid})
    return _Table(
        frozenset(key),
        tuple(copyable),
        deferrable,
        tuple(printable(name) for decides, _, _, name in hooks if decides),
        tuple(printable(name) for _, runs, _, name in hooks if runs),
        tuple(printable(name) for _, _, instead, name in hooks if instead),
    )


def _immediate(session: Session, column: Column, constraint: str | None) -> None:
    """A deferrable key fires at COMMIT, or once made IMMEDIATE: inside the savepoint
    the probe rolls back it would never fire.

    ``SET CONSTRAINTS`` lasts until the transaction ends. PostgreSQL saves the modes as
    they were at the level of the (sub)transaction it runs in, and puts them back when
    that level is rolled back; run in a savepoint that is then released, the saved modes
    go with it and the new mode stays for good (trigger.c, AfterTriggerSetState and
    AfterTriggerEndSubXact). So it runs right here, at the level of the column's
    savepoint, never in a savepoint of its own: that savepoint's rollback gives the
    caller's transaction back its own modes, whatever they were (DEFERRED, or IMMEDIATE
    since a SET CONSTRAINTS of its own), which setting them back by hand could not
    know. A key whose pending checks fail now (the caller's transaction holds a
    duplicate it means to remove before COMMIT) cannot be made IMMEDIATE: its table is
    probed by evaluating the default."""
    if constraint is None:
        return
    try:
        session.run(
            sql.SQL("SET CONSTRAINTS {} IMMEDIATE").format(
                sql.Identifier(column.schema, constraint)
            )
        )
    except session.Error as exc:
        if session.broken:
            raise
        raise _CannotCopy(
            f"the deferrable key {constraint} cannot be made immediate: {error_line(exc)}"
        ) from exc


def _alter(session: Session, statement: sql.Composed) -> None:
    """One of ``_prepare_table``'s statements. Where the table cannot be altered now --
    another session's open transaction holds a lock on it (often the test's own, on a
    connection of its own), or the caller's transaction has deferred checks pending on
    it that fail -- the column is probed without altering anything instead."""
    try:
        session.run(statement)
    except session.Error as exc:
        if session.broken or sqlstate(exc) not in (LOCK_NOT_AVAILABLE, OBJECT_IN_USE):
            raise
        reason = error_line(exc)
        if sqlstate(exc) == LOCK_NOT_AVAILABLE:
            reason = "the table is locked by another session"
        raise _CannotCopy(reason) from exc
