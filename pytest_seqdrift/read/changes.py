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
from dataclasses import dataclass, replace
from typing import Any

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

# what this backend has written to a relation and not yet flushed to the statistics
PENDING_WRITES = (
    "pg_stat_get_xact_tuples_inserted({0}) + pg_stat_get_xact_tuples_updated({0})"
    " + pg_stat_get_xact_tuples_deleted({0})"
)

# this backend's pending counts against the baseline, and whether anything committed
# since (before the states are read: reading one adds a block fetch of its own)
OBSERVE = f"""
WITH given (catalogs, relations, sequences, sentinel, since_xmax, since_xip, since_own,
            base_writes, base_states, base_fetched, base_sentinel) AS (
    VALUES (%s::regclass[], %s::text::oid[], %s::text::oid[], %s::regclass, %s::int8,
            %s::int8[], %s::int8, %s::text::int8[], %s::text::int8[], %s::text::int8[],
            %s::int8)
), now AS (
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax,
           g.base_sentinel IS NOT NULL
           AND pg_stat_get_xact_blocks_fetched(g.sentinel) < g.base_sentinel AS flushed,
           ARRAY(SELECT {PENDING_WRITES.format("t")}
                 FROM unnest(g.relations) WITH ORDINALITY AS u(t, i) ORDER BY i) AS writes
    FROM given AS g
)
SELECT now.xmax,
       ARRAY(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
       coalesce(pg_current_xact_id_if_assigned()::text::int8, 0),
       pg_backend_pid(), pg_postmaster_start_time()::text,
       current_user::text, current_setting('search_path'),
       (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)::int8 FROM unnest(g.catalogs) AS c),
       now.flushed,
       ARRAY(SELECT r FROM unnest(g.relations, now.writes, g.base_writes) AS x(r, w, b)
             WHERE r IS NOT NULL
               AND w > CASE WHEN now.flushed OR b IS NULL THEN 0 ELSE b END),
       now.writes::text,
       ARRAY(SELECT s FROM unnest(g.sequences, g.base_states, g.base_fetched) AS x(s, v, f)
             WHERE g.base_states IS NOT NULL AND s IS NOT NULL AND v IS NULL
               AND (now.flushed OR pg_stat_get_xact_blocks_fetched(s) > f)),
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

# every followed sequence's last value (NULL: not called; the role may read each one,
# ``readable``: a GRANT or REVOKE is a catalog write), and those that differ from the
# baseline's
STATES = """
WITH now AS MATERIALIZED (
    SELECT u.s, u.i, pg_sequence_last_value(u.s) AS v
    FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(s, i)
)
SELECT ARRAY(SELECT n.s FROM now AS n
             LEFT JOIN unnest(%s::text::int8[]) WITH ORDINALITY AS b(v, i) ON b.i = n.i
             WHERE n.v IS DISTINCT FROM b.v),
       ARRAY(SELECT n.v FROM now AS n ORDER BY n.i)::text
"""

READABLE = """
SELECT s::int8 FROM unnest(%s::oid[]) AS s WHERE has_sequence_privilege(s, 'SELECT,USAGE')
"""

# the sentinel read many times (a fresh scan each: the condition names the outer row),
# then the block fetches pending: the baseline of the next look
BUMP = f"""
SELECT count((SELECT 1 FROM {SENTINEL} AS t WHERE t.oid::int8 <> -g LIMIT 1))
FROM generate_series(1, {SENTINEL_READS}) AS g
"""

FETCHED = """
SELECT ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s)
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(s, i) ORDER BY i)::text,
       pg_stat_get_xact_blocks_fetched(%s::regclass)
"""


@dataclass(frozen=True)
class Baseline:
    """What one look leaves for the next to compare with: the snapshot, and this
    backend's pending counts as texts the server reads back (None: no look before)."""

    xmax: int | None = None  # the next xid to be assigned
    xip: tuple[int, ...] = ()  # the transactions in progress
    own_xid: int = 0  # the looking transaction's xid (0: none assigned)
    writes: str | None = None  # writes pending to each relation
    states: str | None = None  # each sequence's last value (NULL: not called)
    fetched: str | None = None  # block fetches pending of each sequence
    sentinel: int | None = None  # block fetches pending of SENTINEL
    catalog_writes: int = 0  # writes pending to CATALOGS


@dataclass(frozen=True)
class Seen:
    """One look at a database from the probe's connection, inside its transaction,
    against the baseline of the look before."""

    backend: tuple[int, str]  # this backend's pid and its server's start
    role: str
    search_path: str
    committed: int | None  # xids committed since the baseline (None: too many to count)
    flushed: bool  # the backend flushed its pending statistics since (counts from 0)
    catalog_written: bool  # this backend wrote to CATALOGS since
    written: frozenset[int]  # the relations this backend wrote to since
    moved: frozenset[int]  # the sequences whose last value is not the baseline's
    # the sequences not called then whose blocks this backend fetched since (all of
    # them after a flush): a setval(..., false) of theirs reads as NULL before and after
    touched: frozenset[int]
    baseline: Baseline  # for the next look


def oids(values: Seq[int]) -> str:
    """OIDs as the text of an array: what ``look`` takes (made once per mark; a list of
    thousands, adapted by the driver at every look, costs more than the look itself)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def look(
    session: Session,
    relations: str,
    sequences: str,
    base: Baseline = Baseline(),
    *,
    lock_timeout_ms: int,
) -> Seen:
    """Look at the database (one round trip): what ``Seen`` says of the relations and
    sequences given (``oids``) since ``base``. In a savepoint rolled back at its end,
    under the lock timeout (a sequence another session alters); raises ``CannotCheck``
    when it fails."""
    given = [
        list(CATALOGS),
        relations,
        sequences,
        SENTINEL,
        base.xmax,
        list(base.xip),
        base.own_xid,
        base.writes,
        base.states,
        base.fetched,
        base.sentinel,
    ]
    answers = session.batch(
        [
            ("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"]),
            (OBSERVE, given),
            (STATES, [sequences, base.states]),
            (BUMP, ()),
            (FETCHED, [sequences, SENTINEL]),
        ],
        release_locks=True,
        replay=False,
    )
    for answer in answers:
        if isinstance(answer, ReadFailure):
            raise CannotCheck(answer.message)
    _, observed, states, _, fetched = answers
    (
        (
            xmax,
            xip,
            own,
            pid,
            started,
            role,
            path,
            catalog,
            flushed,
            written,
            writes,
            touched,
            done,
        ),
    ) = observed  # type: ignore[misc]
    ((moved, values),) = states  # type: ignore[misc]
    ((fetches, sentinel),) = fetched  # type: ignore[misc]
    return Seen(
        backend=(int(pid), str(started)),
        role=str(role),
        search_path=str(path),
        committed=None if done is None else int(done),
        flushed=bool(flushed),
        catalog_written=int(catalog) > (0 if flushed else base.catalog_writes),
        written=frozenset(int(r) for r in written),
        moved=frozenset(int(s) for s in moved),
        touched=frozenset(int(s) for s in touched),
        baseline=Baseline(
            xmax=int(xmax),
            xip=tuple(int(x) for x in xip),
            own_xid=int(own),
            writes=str(writes),
            states=str(values),
            fetched=str(fetches),
            sentinel=int(sentinel),
            catalog_writes=int(catalog),
        ),
    )


REBASE = f"""
SELECT ARRAY(SELECT {PENDING_WRITES.format("t")}
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(t, i) ORDER BY i)::text,
       (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)::int8 FROM unnest(%s::regclass[]) AS c)
"""


def rebase(
    session: Session, relations: str, sequences: str, base: Baseline, *, writes: bool = True
) -> Baseline:
    """The baseline moved on past what this backend did since it was taken (a probe's
    own reads, and with ``writes`` its inserts: not the next test's), its snapshot and
    states kept (one round trip)."""
    statements: list[tuple[str, Seq[Any]]] = [(BUMP, ()), (FETCHED, [sequences, SENTINEL])]
    if writes:
        statements.append((REBASE, [relations, list(CATALOGS)]))
    answers = session.batch(statements, replay=False)
    for answer in answers:
        if isinstance(answer, ReadFailure):
            raise CannotCheck(answer.message)
    ((fetches, sentinel),) = answers[1]  # type: ignore[misc]
    base = replace(base, fetched=str(fetches), sentinel=int(sentinel))
    if writes:
        ((written, catalog),) = answers[2]  # type: ignore[misc]
        base = replace(base, writes=str(written), catalog_writes=int(catalog))
    return base


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
