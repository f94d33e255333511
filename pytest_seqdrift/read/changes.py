"""What may have changed in a database since a mark, read in one round trip: whether any
other transaction committed, whether this backend wrote to the catalog, which tables it
wrote and which sequences moved -- what the probe after a test needs to judge only what
the test could have changed (``probe.since``).

Each answer errs one way only: it may name a table or a sequence that did not change,
never leave out one that did.

* **Rows** change only by a transaction that commits, or inside the probe's own
  transaction. Every transaction that writes has an xid; those that may have committed
  since the mark are the ones in progress then (its snapshot's xip) and every xid
  assigned since (from its xmax on). ``pg_xact_status`` says of each whether it
  committed: if any did, anywhere in the cluster, the answer is "everything may have
  changed". The probe's own transaction's writes are counted per table by the
  backend's pending statistics (``pg_stat_get_xact_tuples_*``): they count the
  transaction's inserts, updates and deletes -- a trigger's too, aborted ones too, and
  those of earlier transactions whose counts were not flushed yet.
* **The catalog** (a new column, key, default, trigger, privilege) changes only by a
  transaction that commits (see above) or by the probe's own, whose catalog writes the
  same statistics count.
* **Sequences** move outside transactions. ``pg_sequence_last_value`` reads each one's
  last value where it was called; a sequence not called (``is_called`` false) reads as
  NULL whatever ``setval(..., false)`` made of it, so for those the backend's pending
  block fetches say whether it touched them since the mark. Those counts vanish when
  the backend flushes its statistics (about once a second, between transactions): a
  sentinel read many times at the mark tells a flush, and then every such sequence
  counts as moved. Another session that moves one of those without an xid (an
  unlogged sequence) is the one case this cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import CannotCheck, ReadFailure

# The catalogs whose rows discovery, the keys, the triggers and the privileges are read
# from; a write to any of them in the probe's own transaction means "judge everything".
CATALOGS = (
    "pg_class",
    "pg_attribute",
    "pg_attrdef",
    "pg_index",
    "pg_constraint",
    "pg_depend",
    "pg_sequence",
    "pg_trigger",
    "pg_rewrite",
    "pg_policy",
    "pg_inherits",
    "pg_namespace",
    "pg_proc",
    "pg_type",
    "pg_auth_members",
)

# More sequences than this are not followed: pg_sequence_last_value keeps a lock on
# each one until the probe's transaction ends (sequence.c keeps it in the top
# transaction's resource owner), and PostgreSQL's lock table is shared and finite.
MAX_SEQUENCES = 2000

# The sentinel: a catalog that tests do not scan (its rows are cached once per backend),
# read SENTINEL_READS times at each mark; fewer fetches pending later means a flush.
SENTINEL = "pg_catalog.pg_ts_config"
SENTINEL_READS = 64

# More xids than this since the mark are not looked at one by one: judge everything.
MAX_XIDS = 100_000

_WRITES = (
    "pg_stat_get_xact_tuples_inserted({0}) + pg_stat_get_xact_tuples_updated({0})"
    " + pg_stat_get_xact_tuples_deleted({0})"
)

# this backend's pending counts, and whether anything committed since the mark (read
# before the states: the state reads below add block fetches of their own)
# the parameters, once: the catalogs, the relations and sequences followed, the sentinel,
# and the mark's snapshot
_GIVEN = """
WITH given (catalogs, relations, uncalled, sentinel, since_xmax, since_xip, since_own) AS (
    VALUES (%s::regclass[], %s::text::oid[], %s::text::oid[], %s::regclass, %s::int8,
            %s::int8[], %s::int8)
), now AS (
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax
)
"""

# this backend's pending counts, and whether anything committed since the mark (read
# before the states: the state reads below add block fetches of their own)
OBSERVE = (
    _GIVEN
    + f"""
SELECT now.xmax,
       ARRAY(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
       coalesce(pg_current_xact_id_if_assigned()::text::int8, 0),
       pg_backend_pid(), pg_postmaster_start_time()::text,
       current_user::text, current_setting('search_path'),
       (SELECT coalesce(sum({_WRITES.format("c")}), 0)::int8 FROM unnest(g.catalogs) AS c),
       ARRAY(SELECT {_WRITES.format("t")}
             FROM unnest(g.relations) WITH ORDINALITY AS u(t, i) ORDER BY i),
       ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s)
             FROM unnest(g.uncalled) WITH ORDINALITY AS u(s, i) ORDER BY i),
       pg_stat_get_xact_blocks_fetched(g.sentinel),
       CASE WHEN g.since_xmax IS NULL THEN 0
            WHEN now.xmax - g.since_xmax > {MAX_XIDS} THEN NULL
            ELSE (SELECT count(*)::int8
                  FROM (SELECT unnest(g.since_xip)
                        UNION SELECT generate_series(g.since_xmax, now.xmax - 1)
                        UNION SELECT nullif(g.since_own, 0)) AS r(x)
                  WHERE x IS NOT NULL
                    AND coalesce(pg_xact_status(x::text::xid8), 'committed') = 'committed')
       END
FROM given AS g, now
"""
)

# every followed sequence's last value (NULL: not called); the role may read each one
# (``readable``; a GRANT or REVOKE is a catalog write)
STATES = """
SELECT ARRAY(SELECT pg_sequence_last_value(s)
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(s, i) ORDER BY i)
"""

READABLE = """
SELECT s::int8 FROM unnest(%s::oid[]) AS s WHERE has_sequence_privilege(s, 'SELECT,USAGE')
"""

# the sentinel read many times (a fresh scan each: the condition names the outer row),
# then what is pending once the mark is taken
BUMP = f"""
SELECT count((SELECT 1 FROM {SENTINEL} AS t WHERE t.oid::int8 <> -g LIMIT 1))
FROM generate_series(1, {SENTINEL_READS}) AS g
"""

FETCHED = f"""
SELECT ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s)
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(s, i) ORDER BY i),
       pg_stat_get_xact_blocks_fetched(%s::regclass),
       ARRAY(SELECT {_WRITES.format("t")}
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(t, i) ORDER BY i),
       (SELECT coalesce(sum({_WRITES.format("c")}), 0)::int8 FROM unnest(%s::regclass[]) AS c)
"""


@dataclass(frozen=True)
class Seen:
    """One look at a database from the probe's connection, inside its transaction."""

    xmax: int  # the next xid to be assigned
    xip: tuple[int, ...]  # the transactions in progress
    own_xid: int  # this transaction's xid (0: none assigned)
    backend: tuple[int, str]  # this backend's pid and its server's start
    role: str
    search_path: str
    catalog_writes: int  # this backend's pending writes to CATALOGS
    writes: tuple[int, ...]  # this backend's pending writes to each relation given
    fetched: tuple[int, ...]  # pending block fetches of each ``uncalled`` one, before STATES
    sentinel: int  # pending block fetches of SENTINEL
    committed: int | None  # xids committed since the mark given (None: too many to count)
    states: tuple[int | None, ...]  # pg_sequence_last_value of each sequence given


@dataclass(frozen=True)
class Since:
    """Where a look is taken from: the mark's snapshot (None: no mark)."""

    xmax: int | None = None
    xip: tuple[int, ...] = ()
    own_xid: int = 0


def oids(values: Seq[int]) -> str:
    """OIDs as the text of an array: what ``look`` and ``settle`` take (made once per
    mark; a list of thousands, adapted by the driver at every look, costs more than the
    look itself)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def look(
    session: Session,
    relations: str,
    sequences: str,
    uncalled: str,
    since: Since = Since(),
    *,
    lock_timeout_ms: int,
) -> Seen:
    """Look at the database (one round trip): what ``Seen`` says, for the relations and
    sequences given (``oids``; ``uncalled``: those whose block fetches count, the ones
    not called at the mark). In a savepoint rolled back at its end, under the lock
    timeout (a sequence another session alters); raises ``CannotCheck`` when it fails."""
    given = [list(CATALOGS), relations, uncalled, SENTINEL, since.xmax, list(since.xip)]
    timeout = "SELECT set_config('lock_timeout', %s, true)"
    _, observed, states = session.batch(
        [
            (timeout, [f"{int(lock_timeout_ms)}ms"]),
            (OBSERVE, [*given, since.own_xid]),
            (STATES, [sequences]),
        ],
        release_locks=True,
        replay=False,
    )
    if isinstance(observed, ReadFailure):
        raise CannotCheck(observed.message)
    if isinstance(states, ReadFailure):
        raise CannotCheck(states.message)
    ((xmax, xip, own, pid, started, role, path, catalog, written, fetched, sentinel, done),) = (
        observed
    )
    ((values,),) = states
    return Seen(
        xmax=int(xmax),
        xip=tuple(int(x) for x in xip),
        own_xid=int(own),
        backend=(int(pid), str(started)),
        role=str(role),
        search_path=str(path),
        catalog_writes=int(catalog),
        writes=tuple(int(w) for w in written),
        fetched=tuple(int(f) for f in fetched),
        sentinel=int(sentinel),
        committed=None if done is None else int(done),
        states=tuple(None if v is None else int(v) for v in values),
    )


@dataclass(frozen=True)
class Pending:
    """This backend's pending counts once a probe is done: what the next look compares
    with (its own reads and inserts are in them, and so not taken for the test's)."""

    fetched: tuple[int, ...]  # block fetches of each ``uncalled`` sequence
    sentinel: int  # block fetches of the sentinel, after SENTINEL_READS more
    writes: tuple[int, ...]  # writes to each relation
    catalog_writes: int


def settle(session: Session, relations: str, uncalled: str) -> Pending:
    """Once the probe is done: the sentinel read ``SENTINEL_READS`` times, then the
    counts pending (one round trip)."""
    given = [uncalled, SENTINEL, relations, list(CATALOGS)]
    _, counted = session.batch([(BUMP, ()), (FETCHED, given)], replay=False)
    if isinstance(counted, ReadFailure):
        raise CannotCheck(counted.message)
    ((fetched, sentinel, writes, catalog),) = counted
    return Pending(
        tuple(int(c) for c in fetched), int(sentinel), tuple(int(w) for w in writes), int(catalog)
    )


# every table with the tables under it (partitions, inheritance children): a write to
# one of those is a write to the table
FAMILY = """
WITH RECURSIVE tree (relid, top) AS (
    SELECT t, t FROM unnest(%s::oid[]) AS t
    UNION
    SELECT h.inhrelid, tree.top FROM tree JOIN pg_inherits h ON h.inhparent = tree.relid
)
SELECT relid::int8, top::int8 FROM tree
"""


def family(session: Session, tables: Seq[int]) -> dict[int, frozenset[int]]:
    """Each relation whose writes count as the given tables' (a table, its partitions
    and inheritance children), with the tables it counts for."""
    tops: dict[int, set[int]] = {}
    for relid, top in session.run(FAMILY, [list(tables)]):
        tops.setdefault(int(relid), set()).add(int(top))
    return {r: frozenset(t) for r, t in tops.items()}


def readable(session: Session, sequences: Seq[int]) -> list[int]:
    """The sequences the role may read (``pg_sequence_last_value`` fails on the others)."""
    return [int(s) for (s,) in session.run(READABLE, [list(sequences)])]
