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
  changed". Inside the probe's own transaction, a table's rows differ from what the
  last look saw only where the transaction wrote to it since and kept the write. Then
  it holds a ``ROW EXCLUSIVE`` lock on the table: every INSERT, UPDATE, DELETE, MERGE
  and COPY takes one (a trigger's and a foreign key's actions too, and also where the
  transaction holds a stronger lock on it), a savepoint rolled back lets go of the
  locks taken in it, a savepoint released hands them on. And the backend's pending
  statistics (``pg_stat_get_xact_tuples_*``) count more writes to it than at the last
  look: they count the transaction's inserts, updates and deletes -- aborted ones too,
  and those of earlier transactions whose counts were not flushed yet. Only the tables
  locked so (``pg_locks``, this backend's) have their counts read: a few lookups at each
  look, not three for every table followed.
* **The catalog** (a new column, key, default, trigger, privilege) changes only by a
  transaction that commits (see above) or by the probe's own, whose catalog writes the
  same statistics count.
* **Sequences** move outside transactions, and ``nextval`` takes no xid most times.
  ``pg_sequence_last_value`` reads each one's last value where it was called; a
  sequence not called (``is_called`` false) reads as NULL whatever ``setval(...,
  false)`` made of it, so for those the backend's pending block fetches say whether it
  touched them since the mark. Those counts vanish when the backend flushes its
  statistics (about once a second, between transactions): a sentinel read many times
  at the mark tells a flush, and then every such sequence counts as moved. Another
  session that moves one of those without an xid (an unlogged sequence) is the one
  case this cannot see.
* **No sequence state is read at all** (it is most of the look's time: a lock on each
  sequence) where no other session can have moved one since the last look, and this
  backend's own block fetches say which ones it touched (every change of a sequence's
  stored state reads its block; a value from this backend's cache changes nothing
  there). No other session can have: every other backend of the database is
  a client backend, idle, and doing what it was doing at the last look -- each one's
  pid, start and last change of state are the same, and any statement changes the
  last -- and none came and went: the database's counts of sessions and of transactions
  ended are the same, and a backend's counts are flushed before it leaves
  ``pg_stat_activity``.
  Both are read after the statistics snapshot is cleared and before any state is.
  PostgreSQL 14's counts come from the statistics collector, late: there every state
  is read at every look.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from typing import Any

from pytest_seqdrift.db.session import Rows, Session
from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import SequenceState
from pytest_seqdrift.read import prepared

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

# The look is two statements prepared on the connection (``read.prepared``), made for
# the lists a mark follows: the lists (thousands of OIDs) are constants of the
# statement, parsed once, not parameters parsed at every look, and each statement
# answers only what is not zero; the baseline stays here and is compared here.
# ``{xmax}``, ``{xip}``, ``{own}`` and ``{quiet}`` are the parameters (the snapshot of the
# baseline, and the sequences not called at it), written ``$1``... once prepared.

# CATALOGS as the text of an array, its braces doubled for ``str.format``
_CATALOGS = "{{" + ",".join(f"pg_catalog.{c}" for c in CATALOGS) + "}}"

# this backend's pending counts, and whether anything committed since the baseline
# (before the states are read: reading one adds a block fetch of its own); the writes
# of the relations followed that this transaction holds a lock for writing on
OBSERVE = f"""
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8,
       ARRAY(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
       coalesce(pg_current_xact_id_if_assigned()::text::int8, 0),
       pg_backend_pid(), pg_postmaster_start_time()::text,
       current_user::text, current_setting('search_path'),
       (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)::int8
        FROM unnest('{_CATALOGS}'::regclass[]) AS c),
       pg_stat_get_xact_blocks_fetched('{SENTINEL}'::regclass),
       current_setting('track_counts')::bool,
       (SELECT array_agg(t::int8 ORDER BY t)::text || ':' || array_agg(w ORDER BY t)::text
        FROM (SELECT t, {PENDING_WRITES.format("t")} AS w
              FROM (SELECT l.relation FROM pg_locks AS l
                    WHERE l.locktype = 'relation' AND l.pid = pg_backend_pid()
                      AND l.mode = 'RowExclusiveLock'
                      AND l.relation = ANY('{{relations}}'::oid[])) AS y (t)) AS x
        WHERE w > 0),
       ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s::oid)
             FROM unnest(g.quiet) WITH ORDINALITY AS u(s, i) ORDER BY i),
       CASE WHEN g.xmax IS NULL THEN 0
            WHEN pg_snapshot_xmax(pg_current_snapshot())::text::int8 - g.xmax > {MAX_XIDS}
            THEN NULL
            ELSE (SELECT count(*)::int8
                  FROM (SELECT unnest(g.xip)
                        UNION SELECT generate_series(g.xmax,
                                     pg_snapshot_xmax(pg_current_snapshot())::text::int8 - 1)
                        UNION SELECT nullif(g.own, 0)) AS r(x)
                  WHERE x IS NOT NULL
                    AND coalesce(pg_xact_status(x::text::xid8), 'committed') = 'committed')
       END
FROM (VALUES ({{xmax}}, {{xip}}, {{own}}, {{quiet}})) AS g (xmax, xip, own, quiet)
"""

# The other backends of this database: a digest of what each one is and does since
# when, and whether every one is a client backend that is idle (in a transaction or not).
ACTIVITY = """
SELECT md5(coalesce(string_agg(concat_ws(':', a.pid, a.backend_type, a.state,
                                         extract(epoch FROM a.backend_start),
                                         extract(epoch FROM a.state_change)),
                               ',' ORDER BY a.pid), '')) AS digest,
       coalesce(bool_and(a.backend_type = 'client backend' AND a.state_change IS NOT NULL
                         AND a.state IN ('idle', 'idle in transaction',
                                         'idle in transaction (aborted)')), true) AS idle
FROM pg_stat_get_activity(NULL) AS a
WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.pid <> pg_backend_pid()
"""

# the transactions of this database that ended and its sessions, as the statistics
# count them (a backend's counts are flushed as it leaves, before it leaves
# pg_stat_activity)
XACTS = """
SELECT pg_stat_get_db_xact_commit(oid) + pg_stat_get_db_xact_rollback(oid)
       + pg_stat_get_db_sessions(oid) AS xacts
FROM pg_database WHERE datname = current_database()
"""

# every followed sequence's last value (NULL: not called; the role may read each one,
# ``readable``: a GRANT or REVOKE is a catalog write), unless ``quiet`` (then NULL);
# then every one's block fetches pending. Each subquery's row is made before the query
# around it: the activity and the count before any state, the states before the fetches.
STATES = """
SELECT v.digest, v.xacts, v.states,
       ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s)
             FROM unnest('{sequences}'::oid[]) WITH ORDINALITY AS u(s, i) ORDER BY i)::text
FROM (SELECT w.digest, w.xacts,
             CASE WHEN w.quiet THEN NULL
                  ELSE ARRAY(SELECT pg_sequence_last_value(s)
                             FROM unnest('{sequences}'::oid[]) WITH ORDINALITY AS u(s, i)
                             ORDER BY i)::text
             END AS states
      FROM (SELECT {watched} OFFSET 0) AS w
      OFFSET 0) AS v
"""

# where other sessions are watched: the activity, the count, and whether the states can
# go unread -- every other backend unchanged and idle since the baseline, no transaction
# ended since, no flush here (``{digest}`` and the rest are the baseline's: NULL where
# there is none, and then every state is read)
WATCHED = f"""a.digest, d.xacts,
       coalesce(a.digest = {{digest}} AND a.idle AND d.xacts = {{xacts}}
                AND pg_stat_get_xact_blocks_fetched('{SENTINEL}'::regclass) >= {{sentinel}},
                false) AS quiet
FROM ({ACTIVITY}) AS a, ({XACTS}) AS d"""
# PostgreSQL 14: every state read at every look
UNWATCHED = "NULL::text AS digest, NULL::int8 AS xacts, false AS quiet"

SENTINEL_NOW = f"SELECT pg_stat_get_xact_blocks_fetched('{SENTINEL}'::regclass)"

READABLE = """
SELECT s::int8 FROM unnest(%s::oid[]) AS s WHERE has_sequence_privilege(s, 'SELECT,USAGE')
"""

# the sentinel read many times (a fresh scan each: the condition names the outer row)
# where a flush left it fewer fetches than that: then a flush is told by fewer again
BUMP = f"""
SELECT CASE WHEN pg_stat_get_xact_blocks_fetched('{SENTINEL}'::regclass) < {SENTINEL_READS}
            THEN (SELECT count((SELECT 1 FROM {SENTINEL} AS t WHERE t.oid::int8 <> -g LIMIT 1))
                  FROM generate_series(1, {SENTINEL_READS}) AS g)
       END
"""

# the block fetches pending of the sequences given: the baseline
FETCHED = """
SELECT ARRAY(SELECT pg_stat_get_xact_blocks_fetched(s)
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(s, i) ORDER BY i)::text
"""

# the writes pending to each relation (those not zero) and to the catalogs
WRITES = f"""
SELECT (SELECT array_agg(t::int8 ORDER BY t)::text || ':' || array_agg(w ORDER BY t)::text
        FROM (SELECT t, {PENDING_WRITES.format("t")} AS w
              FROM unnest(%s::text::oid[]) AS t) AS x
        WHERE w > 0),
       (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)::int8
        FROM unnest(%s::regclass[]) AS c)
"""

_PARAMETERS = ("int8", "int8[]", "int8", "int8[]")
_STATES_PARAMETERS = ("text", "int8", "int8")


@dataclass(frozen=True)
class Baseline:
    """What one look leaves for the next to compare with: the snapshot, and this
    backend's pending counts (None: no look before)."""

    xmax: int | None = None  # the next xid to be assigned
    xip: tuple[int, ...] = ()  # the transactions in progress
    own_xid: int = 0  # the looking transaction's xid (0: none assigned)
    writes: Mapping[int, int] | None = None  # writes pending to each relation (not 0)
    # each sequence's last value (None: not called), as last read (by a look, or by the
    # check of its columns since)
    states: tuple[int | None, ...] | None = None
    # the sequences this backend touched since ``states`` were read (the looks between
    # read none) and no check read them since: their values there may not be theirs now
    stale: frozenset[int] = frozenset()
    # each sequence's block fetches pending, as the server writes the numbers (compared
    # as they are: a look of a thousand sequences spends less on them as text)
    fetched: tuple[str, ...] | None = None
    sentinel: int | None = None  # block fetches pending of SENTINEL
    catalog_writes: int = 0  # writes pending to CATALOGS
    activity: str | None = None  # the other backends of the database (ACTIVITY's digest)
    xacts: int | None = None  # the database's transactions ended, as the statistics count


@dataclass(frozen=True)
class Seen:
    """One look at a database from the probe's connection, inside its transaction,
    against the baseline of the look before."""

    backend: tuple[int, str]  # this backend's pid and its server's start
    role: str
    search_path: str
    committed: int | None  # xids committed since the baseline (None: too many to count)
    flushed: bool  # the backend flushed its pending statistics since (counts from 0)
    # track_counts is on: without it no write is counted, and ``written`` says nothing
    counting: bool
    catalog_written: bool  # this backend wrote to CATALOGS since
    # the relations this transaction wrote to since and holds written (see above)
    written: frozenset[int]
    moved: frozenset[int]  # the sequences whose last value is not the baseline's
    # the sequences whose blocks this backend fetched since: where no state was read,
    # any of them; else those not called then (all of them after a flush), as a
    # setval(..., false) of theirs reads as NULL before and after
    touched: frozenset[int]
    # the states were read (else no other session can have moved a sequence since)
    states_read: bool
    baseline: Baseline  # for the next look


def int_array(values: Iterable[int]) -> str:
    """Integers (OIDs, xids) as the text of an array: the lists ``look`` takes (made once
    per mark), and ``read.remembered``'s parameters."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


@dataclass(frozen=True)
class _Texts:
    """The look's two statements for one pair of lists: as prepared, and as run."""

    prepared: tuple[tuple[str, Seq[str]], tuple[str, Seq[str]]]  # texts and their types
    run: tuple[str, str]
    sequences: tuple[int, ...]
    watched: bool  # other sessions are watched (else every state is read, no parameter)
    positions: dict[int, int]  # each sequence's place in ``sequences``


@functools.lru_cache(maxsize=8)
def _texts(relations: str, sequences: str, watched: bool) -> _Texts:
    def numbered(names: Seq[str]) -> dict[str, str]:
        return {k: f"${i}" for i, k in enumerate(names, 1)}

    def given(names: Seq[str], types: Seq[str]) -> dict[str, str]:
        return {k: f"%s::{t}" for k, t in zip(names, types, strict=True)}

    def observe(**parameters: str) -> str:
        return OBSERVE.format(relations=relations, **parameters)

    def states(**parameters: str) -> str:
        text = STATES.replace("{watched}", WATCHED if watched else UNWATCHED)
        return text.format(sequences=sequences, **parameters)

    oids = tuple(_ints(sequences))
    names = ("xmax", "xip", "own", "quiet")
    state_names = ("digest", "xacts", "sentinel") if watched else ()
    state_types = _STATES_PARAMETERS if watched else ()
    return _Texts(
        prepared=(
            (observe(**numbered(names)), _PARAMETERS),
            (states(**numbered(state_names)), state_types),
        ),
        run=(
            observe(**given(names, _PARAMETERS)),
            states(**given(state_names, state_types)),
        ),
        sequences=oids,
        watched=watched,
        positions={oid: i for i, oid in enumerate(oids)},
    )


def _array(text: str) -> tuple[int | None, ...]:
    """An array of integers as the server writes it (``{1,NULL,3}``): the states a look
    read."""
    inner = text.strip("{}")
    return tuple(None if v == "NULL" else int(v) for v in inner.split(",")) if inner else ()


def _ints(text: str) -> list[int]:
    """An array of integers without NULLs as the server writes it (``{1,2,3}``)."""
    return [int(v) for v in _texts_of(text)]


def _texts_of(text: str) -> tuple[str, ...]:
    """An array of integers without NULLs as the server writes it, each number as its
    text."""
    inner = text.strip("{}")
    return tuple(inner.split(",")) if inner else ()


def _counts(text: str | None) -> dict[int, int]:
    """``{oid,...}:{count,...}`` (NULL: none) as a dict."""
    if not text:
        return {}
    keys, values = text.split(":")
    return dict(zip(_ints(keys), _ints(values), strict=True))


def _quiet(base: Baseline, texts: _Texts) -> list[int]:
    """The sequences not called at the baseline, by index (every one where there is
    none)."""
    if base.states is None:
        return list(range(len(texts.sequences)))
    return list(_uncalled(base.states))


@functools.lru_cache(maxsize=4)
def _uncalled(states: tuple[int | None, ...]) -> tuple[int, ...]:
    # the looks that read no state keep the last ones: the same tuple, look after look
    return tuple(i for i, v in enumerate(states) if v is None)


def look(
    session: Session,
    relations: str,
    sequences: str,
    base: Baseline = Baseline(),
    *,
    lock_timeout_ms: int,
) -> Seen:
    """Look at the database (one round trip): what ``Seen`` says of the relations and
    sequences given (``int_array``) since ``base``. In a savepoint rolled back at its end,
    under the lock timeout (a sequence another session alters); raises ``CannotCheck``
    when it fails."""
    texts = _texts(relations, sequences, session._server_version() >= 150000)
    quiet = _quiet(base, texts)
    quiet_oids = [texts.sequences[i] for i in quiet]
    given = [base.xmax, list(base.xip), base.own_xid, quiet_oids if base.states is not None else []]
    # the states go unread only from a baseline that has them and every fetch count
    whole = base.states is not None and base.fetched is not None
    watched = [base.activity if whole else None, base.xacts, base.sentinel]
    answers = _look(session, texts, given, watched if texts.watched else [], lock_timeout_ms)
    observed, states, fetched = answers
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
            sentinel,
            counting,
            writes,
            quiet_fetched,
            done,
        ),
    ) = observed
    ((activity, xacts, values, fetches),) = states
    ((sentinel_after,),) = fetched
    flushed = base.sentinel is not None and int(sentinel) < base.sentinel
    now_writes = _counts(writes)
    before_writes = {} if flushed or base.writes is None else base.writes
    before = base.fetched if not flushed else None
    now = _texts_of(str(fetches))
    if values is None:  # no other session can have moved one: this backend's fetches say
        touched = (  # (a flush, where nothing is known, makes every state read)
            set(texts.sequences)
            if before is None
            else {s for s, n, b in zip(texts.sequences, now, before, strict=True) if n != b}
        )
        moved: frozenset[int] = frozenset()
        states_now, stale = base.states, base.stale | touched
    else:
        touched = (
            {
                texts.sequences[i]
                for i, f in zip(quiet, quiet_fetched, strict=True)
                if before is None or int(f) > int(before[i])
            }
            if base.states is not None
            else set()
        )
        states_now, stale = _array(str(values)), frozenset()
        moved = _moved(texts.sequences, base.states, states_now) | base.stale
    return Seen(
        backend=(int(pid), str(started)),
        role=str(role),
        search_path=str(path),
        committed=None if done is None else int(done),
        flushed=flushed,
        counting=bool(counting),
        catalog_written=int(catalog) > (0 if flushed else base.catalog_writes),
        written=frozenset(r for r, w in now_writes.items() if w > before_writes.get(r, 0)),
        moved=moved,
        touched=frozenset(touched),
        states_read=values is not None,
        baseline=Baseline(
            xmax=int(xmax),
            xip=tuple(int(x) for x in xip),
            own_xid=int(own),
            writes=now_writes,
            states=states_now,
            stale=stale,
            fetched=now,
            sentinel=int(sentinel_after),
            catalog_writes=int(catalog),
            activity=None if activity is None else str(activity),
            xacts=None if xacts is None else int(xacts),
        ),
    )


def _look(
    session: Session,
    texts: _Texts,
    given: list[Any],
    watched: list[Any],
    lock_timeout_ms: int,
) -> list[Rows]:
    """The look's statements, in one round trip: prepared on the connection where they
    may be (run as they are where not, and once more so where they vanished)."""
    # one plan for every look (the lists are constants: no value of a parameter changes
    # the best plan); both settings end with the batch's savepoint. The statistics read
    # in this transaction before (by a test, or by the look before in it) are let go:
    # what the other sessions do is read as it is now.
    timeout = (
        "SELECT set_config('lock_timeout', %s, true),"
        " set_config('plan_cache_mode', 'force_generic_plan', true), pg_stat_clear_snapshot()",
        [f"{int(lock_timeout_ms)}ms"],
    )
    after: list[tuple[str, Seq[Any]]] = [(BUMP, ()), (SENTINEL_NOW, ())]

    def send(middle: list[tuple[str, Seq[Any]]]) -> list[Rows | ReadFailure]:
        return session.batch([timeout, *middle, *after], release_locks=True, replay=False)

    def call(name: str, values: list[Any]) -> str:
        return (
            f"EXECUTE {name}({', '.join(_literal(v) for v in values)})"
            if values
            else (f"EXECUTE {name}")
        )

    answers = None
    names = prepared.ready(session, texts.prepared)
    if names is not None:
        answers = send([(call(names[0], given), ()), (call(names[1], watched), ())])
        failure = _failed(answers)
        if failure is not None and prepared.vanished(session, failure):
            answers = None  # gone from the connection: run as they are
    if answers is None:
        answers = send([(texts.run[0], given), (texts.run[1], watched)])
    failure = _failed(answers)
    if failure is not None:
        raise CannotCheck(failure.message)
    _, observed, states, _, fetched = answers
    return [observed, states, fetched]  # type: ignore[list-item]


def _failed(answers: Seq[Rows | ReadFailure]) -> ReadFailure | None:
    return next((a for a in answers if isinstance(a, ReadFailure)), None)


def _literal(value: Any) -> str:
    """A parameter of the look as SQL: an integer, a list of them, a digest, or NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        if not (value.isascii() and value.isalnum()):
            raise ValueError(f"not a digest: {value!r}")
        return f"'{value}'"
    if isinstance(value, list):
        return "'" + int_array(value) + "'"
    return str(int(value))


def _moved(
    sequences: tuple[int, ...], before: tuple[int | None, ...] | None, now: tuple[int | None, ...]
) -> frozenset[int]:
    """The sequences whose last value is not the baseline's (none where no value is)."""
    if before == now:
        return frozenset()
    old = before if before is not None and len(before) == len(now) else (None,) * len(now)
    return frozenset(s for s, v, b in zip(sequences, now, old, strict=True) if v != b)


def rebase(
    session: Session,
    relations: str,
    sequences: str,
    base: Baseline,
    *,
    writes: bool = True,
    read: Iterable[int] | None = None,
    states: Mapping[int, SequenceState | ReadFailure] | None = None,
    answered: Seq[Rows] | None = None,
) -> Baseline:
    """The baseline moved on past what this backend did since it was taken (a probe's
    own reads, and with ``writes`` its inserts: not the next test's), its snapshot kept
    (one round trip, none where there is nothing to move on past). ``read``: the only
    sequences whose blocks it fetched (None: any); the others keep their counts, and if
    they were fetched after all, the next look judges them again. ``states``: those a
    check read since, and judged its columns with (nothing moved them after): they are
    the baseline's from now on, and no longer stale. ``answered``: the rows of
    ``rebase_reads`` (the same arguments), read already after the last of what is moved
    on past (then no round trip)."""
    texts = _texts(relations, sequences, session._server_version() >= 150000)
    base = _settled(base, texts, states or {})
    some, statements = _rebase_reads(texts, relations, writes, read)
    if not statements:
        return base
    answers: Seq[Rows | ReadFailure] = (
        answered if answered is not None else session.batch(statements, replay=False)
    )
    failure = _failed(answers)
    if failure is not None:
        raise CannotCheck(failure.message)
    if some:
        ((fetches,),) = answers[0]  # type: ignore[misc]
        counts = _texts_of(str(fetches))
        if read is None:
            base = replace(base, fetched=tuple(counts))
        elif base.fetched is not None:
            merged = list(base.fetched)
            for oid, count in zip(some, counts, strict=True):
                merged[texts.positions[oid]] = count
            base = replace(base, fetched=tuple(merged))
    if writes:
        ((written, catalog),) = answers[-1]  # type: ignore[misc]
        base = replace(base, writes=_counts(written), catalog_writes=int(catalog))
    return base


def rebase_reads(
    session: Session, relations: str, sequences: str, *, writes: bool, read: Iterable[int] | None
) -> list[tuple[str, Seq[Any]]]:
    """What ``rebase`` reads (they only read: they may run with another read's round
    trip, their rows given to ``rebase`` as ``answered``)."""
    texts = _texts(relations, sequences, session._server_version() >= 150000)
    return _rebase_reads(texts, relations, writes, read)[1]


def _rebase_reads(
    texts: _Texts, relations: str, writes: bool, read: Iterable[int] | None
) -> tuple[list[int], list[tuple[str, Seq[Any]]]]:
    """The sequences whose fetch counts are read again, and the statements."""
    some = list(texts.sequences) if read is None else sorted(set(read) & texts.positions.keys())
    statements: list[tuple[str, Seq[Any]]] = []
    if some:
        statements.append((FETCHED, [int_array(some)]))
    if writes:
        statements.append((WRITES, [relations, list(CATALOGS)]))
    return some, statements


def _settled(
    base: Baseline, texts: _Texts, states: Mapping[int, SequenceState | ReadFailure]
) -> Baseline:
    known = {
        oid: (state.last_value if state.is_called else None)
        for oid, state in states.items()
        if isinstance(state, SequenceState) and oid in texts.positions
    }
    if not known or base.states is None:
        return base
    values = list(base.states)
    for oid, value in known.items():
        values[texts.positions[oid]] = value
    return replace(base, states=tuple(values), stale=base.stale - known.keys())


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
