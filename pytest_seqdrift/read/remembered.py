"""Discovery remembered between checks of the same database, while its catalog stays
the same.

A check's discovery (every sequence-backed column, its keys, its triggers, what the role
may read) is two thirds of what a check of a database without drift costs on the
server, and the plugin checks the same database again and again while the catalog
rarely changes. The catalog changes only by a transaction that commits, or inside the
transaction that reads it. So a discovery is taken again as it stands when

* the snapshot of the check now sees every transaction that one saw: its xmax is not
  lower, and nothing below that one's xmax is in progress for it that was not then
  (a caller's REPEATABLE READ transaction may hold a snapshot older than the
  discovery remembered, and sees an older catalog);
* neither the transaction that made it nor the one that reads it has written to the
  catalog: it has no xid, or its backend's pending statistics count no write to the
  catalogs discovery reads (they count every write of the current transaction, and
  may count earlier ones not yet flushed, which only ever makes this say "written");
* the same role, ``search_path`` and settings that decide what discovery sees (the
  privileges, row-level security, how a sequence's name is looked up and spelled),
  the same server (its start time and port), database and temporary schema, and the
  same ``schemas`` and ``exclude_tables``; and
* the catalog is the same, which one of two things shows:

  - *nothing committed*: no transaction has committed anywhere in the cluster since
    the discovery was made. Every xid in progress then (its snapshot's xip, and its
    own transaction's) and every xid assigned since (from its xmax on) is asked
    ``pg_xact_status``, as ``read.changes`` does for the probe. This costs next to
    nothing, and holds between the tests of a run that commit nothing;
  - *the same fingerprint*, read only when something committed (a data migration, a
    test that commits, a fixture that loads rows): each catalog discovery depends on
    holds as many rows as then, and none of them was written by a transaction the
    discovery's snapshot could not see. A row inserted or updated since carries the
    xid of the transaction (or subtransaction) that wrote it, which is no older than
    the oldest xid in progress then; a row deleted since lowers its catalog's count,
    unless a row was also inserted, which its xid shows. What PostgreSQL may write in
    place, without a new row version, is part of the fingerprint as it stands: an
    index's ``indisvalid``, ``indisready`` and ``indislive`` (older releases write them
    so), and the role attributes that decide privileges (``pg_authid`` is not readable
    by every role; ``pg_roles`` is). A full scan of those catalogs: about 2 ms at 100
    tables and 10 ms at 1,000 on a quiet machine, against a discovery's 40 and 90. The
    first discovery of a database in a process goes without one.

Anything else, and a look that fails, means a discovery of its own. The one thing
that changes without a commit is the planner's row estimate (``VACUUM`` writes it in
place), which only an unindexed column's verdict uses: those are read again with the
look. A discovery whose key texts could not all be read (a lock) is not remembered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.model import Column, PgSequence, amended
from pytest_seqdrift.read.changes import CATALOGS, MAX_XIDS, PENDING_WRITES, int_array

Discovered = tuple[list[Column], dict[int, PgSequence]]

# discoveries kept, the most recently used last, and the columns they may hold in all
# (a column takes about a kilobyte: the oldest go first past this, the newest stays)
KEPT = 8
KEPT_COLUMNS = 20_000

# the catalogs the look counts this transaction's writes to, and whose rows the
# fingerprint counts: those discovery, the keys and the triggers read
# (changes.CATALOGS), the exclusion operators' and the functions' languages, and what
# the texts of keys and defaults name (collations, operator classes, access methods)
_CATALOGS = (
    *CATALOGS,
    "pg_operator",
    "pg_language",
    "pg_collation",
    "pg_opclass",
    "pg_am",
)

# The fingerprint of the catalog: each catalog's row count, the flags written in place,
# and the age of the newest row of all (``age()``: how many xids ago it was written).
_ROWS = " UNION ALL ".join(
    f"SELECT {i}, count(*), min(age(xmin)) FROM pg_catalog.{name}"
    for i, name in enumerate(_CATALOGS)
)
FINGERPRINT = f"""
SELECT concat_ws(E'\\x1f', array_agg(f.n ORDER BY f.i)::text,
                 (SELECT string_agg(concat_ws(':', indexrelid, indisvalid, indisready,
                                              indislive), ',' ORDER BY indexrelid)
                  FROM pg_catalog.pg_index
                  WHERE NOT (indisvalid AND indisready AND indislive)),
                 (SELECT md5(string_agg(concat_ws(':', oid, rolname, rolsuper, rolinherit,
                                                  rolbypassrls), ',' ORDER BY oid))
                  FROM pg_catalog.pg_roles)) AS text,
       min(f.age) AS newest
FROM ({_ROWS}) AS f(i, n, age)
"""

# where and as whom discovery runs: what decides what it sees, as one text
_CONTEXT = (
    "concat_ws(E'\\x1f', pg_postmaster_start_time(), current_setting('port'), "
    "(SELECT oid FROM pg_database WHERE datname = current_database()), current_user, "
    "session_user, current_setting('search_path'), "
    "current_setting('standard_conforming_strings'), current_setting('row_security'), "
    "pg_my_temp_schema())"
)

# What the look and the second look share: this snapshot, where and as whom (the
# first parameter: the catalogs whose pending writes count); the remembered discoveries
# that fit it (the same place and role, no catalog written now, and this snapshot sees
# all that one saw: it is not older -- a transaction of the caller's, REPEATABLE READ,
# may be); the planner's estimates of the unindexed columns asked for.
_NOW = f"""
now AS (
    SELECT {_CONTEXT} AS context,
           pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax,
           ARRAY(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS xip,
           coalesce(pg_current_xact_id_if_assigned()::text::int8, 0) AS own,
           (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)
            FROM unnest(%s::regclass[]) AS c) > 0 AS written
)"""
_FITS = f"""e.context = now.context AND NOT (now.own <> 0 AND now.written)
               AND now.xmax - e.xmax <= {MAX_XIDS}
               AND now.xmax >= e.xmax
               AND NOT EXISTS (SELECT FROM unnest(now.xip) AS x
                               WHERE x < e.xmax AND x <> ALL (e.xids::int8[]))"""
_ESTIMATES = """ARRAY(SELECT CASE WHEN t.relkind = 'p' THEN (
                        SELECT sum(greatest(c.reltuples, 0)) FROM pg_inherits i
                        JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = t.oid)
                    WHEN t.reltuples >= 0 THEN t.reltuples END::float8
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(o, n)
             LEFT JOIN pg_class t ON t.oid = u.o ORDER BY u.n)"""

# The look: (context, xmax, xip, own xid, whether this transaction wrote to the catalog,
# the remembered discoveries that still stand with nothing committed since (their
# indexes), the estimates asked for)
LOOK = f"""
WITH {_NOW}
SELECT now.context, now.xmax, now.xip, now.own, now.written,
       ARRAY(SELECT e.i FROM unnest(%s::text[], %s::text::int8[], %s::text[])
                             WITH ORDINALITY AS e(context, xmax, xids, i)
             WHERE {_FITS}
               AND NOT EXISTS (
                   SELECT FROM (SELECT unnest(e.xids::int8[])
                                UNION ALL SELECT generate_series(e.xmax, now.xmax - 1)) AS r(x)
                   WHERE coalesce(pg_xact_status(x::text::xid8), 'committed') = 'committed')),
       {_ESTIMATES}
FROM now
"""

# The second look, where something committed since every discovery remembered (or
# none is): the same, with the fingerprint now, and the discoveries made from a
# catalog of the same fingerprint that no newer row has changed since. A statement of
# its own, so that the look, which most checks end with, is not planned with it.
ALIKE = f"""
WITH {_NOW}, fingerprint AS ({FINGERPRINT})
SELECT now.context, now.xmax, now.xip, now.own, now.written,
       ARRAY(SELECT e.i FROM unnest(%s::text[], %s::text::int8[], %s::text[], %s::text[],
                                    %s::text::int8[])
                             WITH ORDINALITY AS e(context, xmax, xids, fingerprint, oldest, i)
             WHERE {_FITS}
               AND e.fingerprint = f.text
               -- every row older than the oldest xid in progress then
               AND f.newest > age((e.oldest %% 4294967296)::text::xid)),
       {_ESTIMATES},
       f.text
FROM now, fingerprint AS f
"""


@dataclass(frozen=True)
class _Entry:
    context: str
    options: tuple[Any, ...]  # schemas, exclude_tables
    xmax: int
    xids: tuple[int, ...]  # in progress when it was made, and its own transaction's
    fingerprint: str | None  # of the catalog it was made from (None: not read)
    columns: tuple[Column, ...]
    sequences: dict[int, PgSequence]

    @property
    def oldest(self) -> int:
        """The oldest xid in progress when it was made: every row written since, or by a
        transaction it could not see, carries this xid or a newer one."""
        return min((*self.xids, self.xmax))

    @property
    def unindexed(self) -> list[int]:
        return [c.table_oid for c in self.columns if not c.indexed]


_entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_lock = threading.Lock()


def forget() -> None:
    """Drop every remembered discovery (the tests start from none)."""
    with _lock:
        _entries.clear()


def discover(
    session: Session, options: tuple[Any, ...], fresh: Callable[[], Discovered]
) -> Discovered:
    """``fresh()``'s discovery, or a remembered one that still stands (see the module's
    text); ``options`` are the ones discovery was asked with."""
    with _lock:
        candidates = [e for e in _entries.values() if e.options == options]
    unindexed = int_array(oid for e in candidates for oid in e.unindexed)
    contexts = [e.context for e in candidates]
    xmaxes = int_array(e.xmax for e in candidates)
    xids = [int_array(e.xids) for e in candidates]
    look = [list(_CATALOGS), contexts, xmaxes, xids, unindexed]
    (answer,) = session.batch([(LOOK, look)])
    if isinstance(answer, ReadFailure):
        return fresh()  # the look is not needed to check: discover as without it
    context, xmax, xip, own, written, standing, estimates = answer[0]
    if standing:
        return _taken(candidates, standing[0], estimates)
    fingerprint = None
    if context in contexts and not (own and written):
        # something committed since this database's discoveries: the second look
        fingerprints = [e.fingerprint or "" for e in candidates]  # "": never a catalog's
        alike = [list(_CATALOGS), contexts, xmaxes, xids, fingerprints]
        alike += [int_array(e.oldest for e in candidates), unindexed]
        (answer,) = session.batch([(ALIKE, alike)])
        if isinstance(answer, ReadFailure):
            return fresh()
        context, xmax, xip, own, written, standing, estimates, fingerprint = answer[0]
        if standing:  # the catalog this snapshot sees: it stands for this one from now on
            now = _in_progress(xip, own)
            return _taken(candidates, standing[0], estimates, xmax=xmax, xids=now)
    # (the first discovery of a database here goes without a fingerprint: a database
    # checked once, as each test's own database often is, never pays for one)
    columns, sequences = fresh()
    if not (own and written) and not any(_transient(c) for c in columns):
        now = _in_progress(xip, own)
        _remember(_Entry(context, options, xmax, now, fingerprint, tuple(columns), sequences))
    return columns, sequences


def _taken(
    candidates: list[_Entry], number: int, estimates: Sequence[float | None], **stamp: Any
) -> Discovered:
    """The remembered discovery ``number`` (from 1), with the estimates read for it,
    and, given, the snapshot it stands for from now on."""
    entry = candidates[number - 1]
    start = sum(len(e.unindexed) for e in candidates[: number - 1])
    if stamp:
        entry = replace(entry, **stamp)
    _remember(entry)  # the most recently used
    return _reused(entry, estimates[start : start + len(entry.unindexed)])


def _in_progress(xip: Sequence[int], own: int) -> tuple[int, ...]:
    """The xids a look's snapshot saw in progress, and its own transaction's (0: none)."""
    return tuple(xip) + ((own,) if own else ())


def _reused(entry: _Entry, estimates: Sequence[float | None]) -> Discovered:
    """The remembered columns, with the planner's estimates as they are now."""
    now = iter(estimates)
    columns = []
    for c in entry.columns:
        if not c.indexed:
            rows = next(now, None)
            c = amended(c, estimated_rows=None if rows is None else int(rows))
        columns.append(c)
    return columns, dict(entry.sequences)


def _transient(column: Column) -> bool:
    """A column whose discovery hangs on something read that can fail for a moment (a
    key's text, behind a lock)."""
    reason = column.skip_reason or ""
    return reason.startswith(("could not read key ", "could not read column "))


def _remember(entry: _Entry) -> None:
    key = (entry.context, entry.options)
    with _lock:
        _entries.pop(key, None)
        _entries[key] = entry
        while len(_entries) > KEPT or (
            len(_entries) > 1 and sum(len(e.columns) for e in _entries.values()) > KEPT_COLUMNS
        ):
            _entries.popitem(last=False)
