"""Columns settled without a probe of their own: a plain default (its value is the
sequence's next value) that the arithmetic already proved past every existing value,
on a table where no BEFORE INSERT trigger or INSERT rule can change the value stored.
What the probe would say of each is known from one catalog query; no ``nextval`` runs."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq

from pytest_seqdrift.db.session import Session
from pytest_seqdrift.model import Checked, Report
from pytest_seqdrift.probe.report import Mode, Probed
from pytest_seqdrift.probe.target import _distance, _finding_for, _judged
from pytest_seqdrift.read import inserts


def _clean(verdict: Checked, report: Report) -> bool:
    """The probe of this column would insert nothing and draw nothing: its default is
    the sequence's next value itself, the arithmetic found no collision, and that next
    value is already past the highest existing value (``_Target.batches`` is empty)."""
    return (
        _judged(verdict)
        and verdict.max_existing is not None
        and _distance(verdict, inserts.per_insert(verdict.column, verdict.sequence)) == 0
        and _finding_for(report, verdict) is None
    )


# For each column (table oid, column name) that may be settled without an insert:
# ``rewrites``, whether an insert into the table could store something else than the
# default's value -- a BEFORE INSERT row trigger or an INSERT rule on the table or on
# any table under it (partitions, to which inserts are routed; inheritance children
# too, to err on the safe side); and what ``_prepare_table`` would have found: whether
# another column can be copied (``_COPYABLE``). Whether a key counts is the check's to
# say (``Column.keys``). Catalogs only: it locks no table.
_INSERT_PATHS = """
WITH RECURSIVE given AS (
    SELECT w.i, w.table_oid,
           (SELECT a.attnum FROM pg_attribute a  -- a subquery: an index lookup each
            WHERE a.attrelid = w.table_oid AND a.attname = w.column_name
              AND NOT a.attisdropped) AS attnum
    FROM unnest(%s::oid[], %s::text[]) WITH ORDINALITY AS w(table_oid, column_name, i)
), wanted AS (
    SELECT * FROM given WHERE attnum IS NOT NULL
), tree (i, relid) AS (
    SELECT i, table_oid FROM wanted
    UNION
    SELECT t.i, h.inhrelid FROM tree t JOIN pg_inherits h ON h.inhparent = t.relid
), rewritten AS (
    SELECT t.i FROM tree t
    WHERE t.relid IN (SELECT g.tgrelid FROM pg_trigger g  -- a ROW, BEFORE, INSERT trigger
                      WHERE NOT g.tgisinternal AND g.tgtype::int & 7 = 7)
       OR t.relid IN (SELECT r.ev_class FROM pg_rewrite r WHERE r.ev_type = '3')  -- ON INSERT
)
SELECT w.i::int,
       w.i IN (SELECT i FROM rewritten) AS rewrites,
       EXISTS (
           SELECT FROM pg_attribute x
           WHERE x.attrelid = w.table_oid AND x.attnum > 0 AND NOT x.attisdropped
             AND x.attgenerated = '' AND x.attidentity <> 'a' AND x.attnum <> w.attnum
       ) AS copyable
FROM wanted w
"""


def _insert_paths(
    session: Session, targets: Seq[Checked], indices: Seq[int]
) -> dict[int, tuple[bool, bool, bool]]:
    """For ``targets[indices]``, by index, in one catalog query: whether its table (or a
    partition) has a BEFORE INSERT row trigger or an INSERT rule (an insert may store
    another value than the default's), whether a unique key covers the column, and
    whether the table has another column a copied row can carry."""
    if not indices:
        return {}
    oids = [targets[i].column.table_oid for i in indices]
    with session.transaction():  # never leave a driver's implicit transaction open
        rows = session.run(_INSERT_PATHS, [oids, [targets[i].column.column for i in indices]])
    # a key counts as the check counts it (keys.py: partial, expression, exclusion and
    # partitions' own keys too). A column drawn together with others from its sequence
    # is not settled here: its copies carry none of them (``_prepare_table``)
    out = {}
    for n, rewrites, copyable in rows:
        column = targets[indices[n - 1]].column
        if not column.siblings:
            out[indices[n - 1]] = (rewrites, bool(column.keys), copyable)
    return out


def _settled(
    targets: Seq[Checked],
    clean: Seq[int],
    mode: Mode,
    paths: Mapping[int, tuple[bool, bool, bool]],
) -> dict[int, Probed]:
    """What the probe would say of each clean column (``_clean``), by its index in
    ``targets``, without probing it: no value drawn, no collision, past the max. In
    ``insert`` mode only where no trigger or rule can change the value an insert
    stores, and with the note of the fallback ``_prepare_table`` would have taken -- in
    ``_insert_paths`` (one catalog query for all of them). ``_probe_column`` says the same
    of each one (tests/test_probe.py compares the two)."""
    notes: dict[int, str | None] = dict.fromkeys(clean)
    if mode == "insert":
        notes = {}
        for i, (rewrites, covered, copyable) in paths.items():
            if rewrites:
                continue  # an insert may store another value: the real probe
            reason = None
            if not covered:
                reason = "no unique key covers the column"
            elif not copyable:
                reason = "the table has no other column to copy"
            notes[i] = reason and f"fell back to the default probe: {reason}"
    return {
        i: Probed(
            targets[i].column,
            targets[i].sequence,
            mode if note is None else "default",
            0,
            None,
            None,
            passed_max=True,
            note=note,
            first_value=targets[i].next_value,
            top=targets[i].max_existing,
        )
        for i, note in notes.items()
    }
