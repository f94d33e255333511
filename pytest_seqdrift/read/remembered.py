"""Discovery remembered between checks of the same database, while its catalog stays
the same.

A check's discovery (every sequence-backed column, its keys, its triggers, what the role
may read) is two thirds of what a check of a database without drift costs on the
server, and the plugin checks the same database again and again while the catalog
rarely changes. The catalog changes only by a transaction that commits, or inside the
transaction that reads it. So a discovery is taken again as it stands when

* no transaction has committed anywhere in the cluster since it was made: every xid
  in progress then (its snapshot's xip, and its own transaction's) and every xid
  assigned since (from its xmax on) is asked ``pg_xact_status``, as ``read.changes``
  does for the probe;
* the snapshot of the check now sees every transaction that one saw: its xmax is not
  lower, and nothing below that one's xmax is in progress for it that was not then
  (a caller's REPEATABLE READ transaction may hold a snapshot older than the
  discovery remembered, and sees an older catalog);
* neither the transaction that made it nor the one that reads it has written to the
  catalog: it has no xid, or its backend's pending statistics count no write to the
  catalogs discovery reads (they count every write of the current transaction, and
  may count earlier ones not yet flushed, which only ever makes this say "written");
  and
* the same role, ``search_path`` and settings that decide what discovery sees (the
  privileges, row-level security, how a sequence's name is looked up and spelled),
  the same server (its start time and port), database and temporary schema, and the
  same ``schemas`` and ``exclude_tables``.

Anything else, and a look that fails, means a discovery of its own. The one thing
that changes without a commit is the planner's row estimate (``VACUUM`` writes it in
place), which only an unindexed column's verdict uses: those are read again with the
look. A discovery whose key texts could not all be read (a lock) is not remembered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.errors import ReadFailure
from pytest_seqdrift.model import Column, PgSequence, amended
from pytest_seqdrift.read.changes import CATALOGS, MAX_XIDS, PENDING_WRITES

Discovered = tuple[list[Column], dict[int, PgSequence]]

# discoveries kept, the most recently used last, and the columns they may hold in all
# (a column takes about a kilobyte: the oldest go first past this, the newest stays)
KEPT = 8
KEPT_COLUMNS = 20_000

# the catalogs the look counts this transaction's writes to: those discovery, the keys
# and the triggers read (changes.CATALOGS), and the exclusion operators' and the
# functions' languages
_CATALOGS = (*CATALOGS, "pg_operator", "pg_language")

# where and as whom discovery runs: what decides what it sees, as one text
_CONTEXT = (
    "concat_ws(E'\\x1f', pg_postmaster_start_time(), current_setting('port'), "
    "(SELECT oid FROM pg_database WHERE datname = current_database()), current_user, "
    "session_user, current_setting('search_path'), "
    "current_setting('standard_conforming_strings'), current_setting('row_security'), "
    "pg_my_temp_schema())"
)

# The look: (context, xmax, xip, own xid, whether this transaction wrote to the catalog,
# the remembered discoveries that still stand (their indexes), the estimates asked for)
LOOK = f"""
WITH now AS (
    SELECT {_CONTEXT} AS context,
           pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS xmax,
           ARRAY(SELECT x::text::int8 FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS xip,
           coalesce(pg_current_xact_id_if_assigned()::text::int8, 0) AS own,
           (SELECT coalesce(sum({PENDING_WRITES.format("c")}), 0)
            FROM unnest(%s::regclass[]) AS c) > 0 AS written
)
SELECT now.context, now.xmax, now.xip, now.own, now.written,
       ARRAY(SELECT e.i FROM unnest(%s::text[], %s::text::int8[], %s::text[])
                             WITH ORDINALITY AS e(context, xmax, xids, i)
             WHERE e.context = now.context AND NOT (now.own <> 0 AND now.written)
               AND now.xmax - e.xmax <= {MAX_XIDS}
               -- this snapshot sees all that one saw: it is not older (a transaction
               -- of the caller's, REPEATABLE READ, may be)
               AND now.xmax >= e.xmax
               AND NOT EXISTS (SELECT FROM unnest(now.xip) AS x
                               WHERE x < e.xmax AND x <> ALL (e.xids::int8[]))
               AND NOT EXISTS (
                   SELECT FROM (SELECT unnest(e.xids::int8[])
                                UNION ALL SELECT generate_series(e.xmax, now.xmax - 1)) AS r(x)
                   WHERE coalesce(pg_xact_status(x::text::xid8), 'committed') = 'committed')),
       ARRAY(SELECT CASE WHEN t.relkind = 'p' THEN (
                        SELECT sum(greatest(c.reltuples, 0)) FROM pg_inherits i
                        JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = t.oid)
                    WHEN t.reltuples >= 0 THEN t.reltuples END::float8
             FROM unnest(%s::text::oid[]) WITH ORDINALITY AS u(o, n)
             LEFT JOIN pg_class t ON t.oid = u.o ORDER BY u.n)
FROM now
"""


@dataclass(frozen=True)
class _Entry:
    context: str
    options: tuple[Any, ...]  # schemas, exclude_tables
    xmax: int
    xids: tuple[int, ...]  # in progress when it was made, and its own transaction's
    columns: tuple[Column, ...]
    sequences: dict[int, PgSequence]

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
    unindexed = [oid for e in candidates for oid in e.unindexed]
    params = [
        list(_CATALOGS),
        [e.context for e in candidates],
        _array(e.xmax for e in candidates),
        [_array(e.xids) for e in candidates],
        _array(unindexed),
    ]
    (answer,) = session.batch([(LOOK, params)])
    if isinstance(answer, ReadFailure):
        return fresh()  # the look is not needed to check: discover as without it
    context, xmax, xip, own, written, standing, estimates = answer[0]
    if standing:
        entry = candidates[standing[0] - 1]
        start = sum(len(e.unindexed) for e in candidates[: standing[0] - 1])
        _remember(entry)  # the most recently used
        return _reused(entry, estimates[start : start + len(entry.unindexed)])
    columns, sequences = fresh()
    if not (own and written) and not any(_transient(c) for c in columns):
        xids = tuple(xip) + ((own,) if own else ())
        _remember(_Entry(context, options, xmax, xids, tuple(columns), sequences))
    return columns, sequences


def _array(values: Iterable[int]) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


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
