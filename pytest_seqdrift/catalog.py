"""The SQL that reads PostgreSQL: discovery in one query, then batched reads.

Every object is matched by OID, never by name, and every name that goes back into SQL
is composed with ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import Any, Protocol

from psycopg import sql

from .model import Bounds, Column, Plan, Sequence, SequenceState, Window

# One row per (column, sequence) pair where the column's values come from the sequence:
# identity columns (pg_depend deptype 'i'), and any column default that depends on a
# sequence (pg_attrdef -> pg_class, deptype 'n') -- serial columns, sequences owned by
# nothing or by another table, and sequences shared by several tables alike.
DISCOVERY = """
WITH links AS (
    SELECT d.refobjid AS table_oid, d.refobjsubid::int2 AS attnum, d.objid AS seq_oid
    FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'i' AND d.refobjsubid > 0
    UNION
    SELECT ad.adrelid, ad.adnum, d.refobjid
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'n'
)
SELECT
    t.oid::int8 AS table_oid,
    tn.nspname::text AS schema,
    t.relname::text AS table_name,
    quote_ident(tn.nspname) || '.' || quote_ident(t.relname) AS qualified_table,
    a.attname::text AS column_name,
    format_type(coalesce(nullif(ty.typbasetype, 0), a.atttypid), NULL) AS data_type,
    t.relkind = 'p' AS partitioned,
    t.relispartition AS is_partition,
    (SELECT array_agg(i.inhparent::int8) FROM pg_inherits i WHERE i.inhrelid = t.oid) AS parents,
    a.attidentity::text AS identity,
    s.oid::int8 AS seq_oid,
    sn.nspname::text AS seq_schema,
    s.relname::text AS seq_name,
    quote_ident(sn.nspname) || '.' || quote_ident(s.relname) AS seq_qualified,
    format_type(sq.seqtypid, NULL) AS seq_type,
    sq.seqstart, sq.seqincrement, sq.seqmin, sq.seqmax, sq.seqcycle,
    e.default_expr,
    e.default_expr IN (
        format('nextval(%%s::regclass)', lit.seq_literal),
        format('(nextval(%%s::regclass))::%%s', lit.seq_literal, format_type(a.atttypid, a.atttypmod))
    ) AS plain_default,
    u.key_columns,
    has_column_privilege(t.oid, a.attnum, 'SELECT') AS can_read_column,
    has_sequence_privilege(s.oid, 'SELECT') AS can_read_sequence
FROM links l
JOIN pg_class t ON t.oid = l.table_oid AND t.relkind IN ('r', 'p')
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = l.attnum AND NOT a.attisdropped
JOIN pg_type ty ON ty.oid = a.atttypid
JOIN pg_class s ON s.oid = l.seq_oid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence sq ON sq.seqrelid = s.oid
LEFT JOIN pg_attrdef ad ON ad.adrelid = t.oid AND ad.adnum = a.attnum
CROSS JOIN LATERAL (
    -- pg_get_expr(expr, table) locks the table (AccessShareLock), so one table held by a
    -- migration's ACCESS EXCLUSIVE lock would fail the whole discovery. A default has no
    -- column references (only a generated column's expression has), and without them
    -- the table adds nothing to the text: deparse it without the table.
    SELECT CASE WHEN ad.adbin::text LIKE '%%{VAR %%' THEN pg_get_expr(ad.adbin, ad.adrelid)
                ELSE pg_get_expr(ad.adbin, 0) END AS default_expr
) e
CROSS JOIN LATERAL (
    -- the sequence's name as a string literal, spelled the way pg_get_expr spells it
    -- (ruleutils' simple_quote_literal: quotes doubled, backslashes doubled only without
    -- standard_conforming_strings, never E''). format('%%L') would write E'...' for a
    -- name with a backslash, and such a plain nextval() would go unchecked.
    SELECT chr(39) || replace(
        CASE WHEN current_setting('standard_conforming_strings') = 'on'
             THEN s.oid::regclass::text
             ELSE replace(s.oid::regclass::text, chr(92), repeat(chr(92), 2)) END,
        chr(39), repeat(chr(39), 2)) || chr(39) AS seq_literal
) lit
LEFT JOIN LATERAL (
    -- the smallest unique key (index, PK or UNIQUE constraint) that includes the column
    SELECT array_agg(coalesce(ka.attname::text, '(expression)') ORDER BY k.ord) AS key_columns
    FROM (
        SELECT i.indrelid, (i.indkey::int2[])[0:i.indnkeyatts - 1] AS keys
        FROM pg_index i
        WHERE i.indrelid = t.oid AND i.indisunique AND i.indpred IS NULL
          AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
        ORDER BY i.indnkeyatts, i.indisprimary DESC, i.indexrelid
        LIMIT 1
    ) best
    CROSS JOIN LATERAL unnest(best.keys) WITH ORDINALITY AS k(attnum, ord)
    LEFT JOIN pg_attribute ka ON ka.attrelid = best.indrelid AND ka.attnum = k.attnum
) u ON true
WHERE tn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND tn.nspname NOT LIKE 'pg\\_toast%%'
  AND NOT pg_is_other_temp_schema(tn.oid)
  AND (%(schemas)s::text[] IS NULL OR tn.nspname = ANY (%(schemas)s::text[]))
ORDER BY tn.nspname, t.relname, a.attnum, sn.nspname, s.relname
"""


class SequenceRef(Protocol):
    """What reading a sequence's state needs: a ``model.Sequence`` or a
    ``snapshot.SequenceKey``."""

    @property
    def oid(self) -> int: ...
    @property
    def schema(self) -> str: ...
    @property
    def name(self) -> str: ...


_SOURCES = {"a": "identity always", "d": "identity by default", "": "default"}


def discovery_params(schemas: Iterable[str] | None) -> dict[str, Any]:
    return {"schemas": list(schemas) if schemas is not None else None}


def parse_discovery(
    rows: Iterable[dict[str, Any]], exclude_tables: Seq[str] = ()
) -> tuple[list[Column], dict[int, Sequence]]:
    """Columns and their sequences from the discovery rows.

    A partition whose parent draws the same column from the same sequence is checked
    through the parent (which reads the whole hierarchy), not on its own -- unless the
    partition has a unique key and the parent has none (per-partition primary keys, the
    PostgreSQL 10 way): then only the partition's own key can fail, so it is checked.
    """
    rows = list(rows)
    linked = {(r["table_oid"], r["column_name"], r["seq_oid"]): r for r in rows}
    columns: list[Column] = []
    sequences: dict[int, Sequence] = {}
    for r in rows:
        parents = [
            linked[link]
            for parent in r["parents"] or ()
            if (link := (parent, r["column_name"], r["seq_oid"])) in linked
        ]
        if (
            r["is_partition"]
            and parents
            and (r["key_columns"] is None or any(p["key_columns"] is not None for p in parents))
        ):
            continue
        if _excluded(r["schema"], r["table_name"], exclude_tables):
            continue
        seq = sequences.setdefault(
            r["seq_oid"],
            Sequence(
                oid=r["seq_oid"],
                schema=r["seq_schema"],
                name=r["seq_name"],
                qualified=r["seq_qualified"],
                data_type=r["seq_type"],
                start=r["seqstart"],
                increment=r["seqincrement"],
                min_value=r["seqmin"],
                max_value=r["seqmax"],
                cycle=r["seqcycle"],
            ),
        )
        source = _SOURCES.get(r["identity"], "default")
        skip = None
        if not r["can_read_column"]:
            skip = f"permission denied: cannot SELECT column {r['column_name']}"
        elif not r["can_read_sequence"]:
            skip = f"permission denied: cannot SELECT from sequence {seq.qualified}"
        columns.append(
            Column(
                table_oid=r["table_oid"],
                schema=r["schema"],
                table=r["table_name"],
                column=r["column_name"],
                qualified_table=r["qualified_table"],
                data_type=r["data_type"],
                partitioned=r["partitioned"],
                source=source,  # type: ignore[arg-type]
                sequence_oid=seq.oid,
                plain_default=source != "default" or bool(r["plain_default"]),
                default_expr=r["default_expr"],
                key_columns=tuple(r["key_columns"]) if r["key_columns"] is not None else None,
                skip_reason=skip,
            )
        )
    return columns, sequences


def _excluded(schema: str, table: str, patterns: Seq[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(f"{schema}.{table}", p) or fnmatch.fnmatchcase(table, p)
        for p in patterns
    )


def state_query(seq: SequenceRef) -> sql.Composed:
    return sql.SQL("SELECT last_value, is_called FROM {}").format(
        sql.Identifier(seq.schema, seq.name)
    )


def parse_state(rows: list[tuple[Any, ...]]) -> SequenceState:
    ((last_value, is_called),) = rows
    return SequenceState(last_value=int(last_value), is_called=bool(is_called))


def _relation(column: Column) -> sql.Composed:
    """The table to read: a partitioned parent with its partitions, any other table
    without its inheritance children (its unique indexes cover only its own rows)."""
    only = sql.SQL("") if column.partitioned else sql.SQL("ONLY ")
    return sql.SQL("{}{}").format(only, sql.Identifier(column.schema, column.table))


def _first_in(column: Column, window: Window | None, params: list[int]) -> sql.Composable:
    if window is None:
        return sql.SQL("NULL")
    col = sql.Identifier(column.column)
    agg = sql.SQL("min" if window.ascending else "max")
    where = sql.SQL("{col} BETWEEN %s AND %s").format(col=col)
    params += [window.lo, window.hi]
    if window.step != 1:
        # numeric, so that the difference cannot overflow bigint
        where = sql.SQL("{} AND mod({col}::numeric - %s, %s) = 0").format(where, col=col)
        params += [window.base, window.step]
    elif column.type_range is None:
        # a numeric column can hold fractions, which no sequence hands out
        where = sql.SQL("{} AND {col} = trunc({col})").format(where, col=col)
    return sql.SQL("(SELECT {agg}({col}) FROM {rel} WHERE {where})").format(
        agg=agg, col=col, rel=_relation(column), where=where
    )


def bounds_query(column: Column, plan: Plan) -> tuple[sql.Composed, list[int]]:
    """One statement answers the whole plan: each part is an index range scan that stops
    at its first match (PostgreSQL turns min/max over a range into LIMIT 1 scans)."""
    params: list[int] = []
    windows = (plan.first_pass, plan.after_wrap, plan.top, plan.last_on_grid)
    parts = [_first_in(column, w, params) for w in windows]
    return sql.SQL("SELECT {}, {}, {}, {}").format(*parts), params


def parse_bounds(rows: list[tuple[Any, ...]]) -> Bounds:
    ((first_pass, after_wrap, top, last_on_grid),) = rows

    def as_int(v: Any) -> int | None:
        return None if v is None else int(v)

    return Bounds(as_int(first_pass), as_int(after_wrap), as_int(top), as_int(last_on_grid))


def row_count_query(column: Column, limit: int) -> tuple[sql.Composed, list[int]]:
    """Count rows, but never more than ``limit``: cheap however large the table."""
    return (
        sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) AS capped").format(
            _relation(column)
        ),
        [limit],
    )


# --- one statement for all reads -----------------------------------------------------
#
# The per-table reads below run on the server, in one statement each: every query text
# is built there with format('%I'/'%L') from arrays of OIDs, names and numbers, and run
# with query_to_xml, which works inside a READ ONLY transaction and on a replica (a
# temporary PL/pgSQL function would not). However many tables, the check sends the same
# few statements. Should one statement fail (a table locked past the lock timeout), the
# caller falls back to the per-table statements above, which report each failure
# against its own table.

# Not pg_sequence_last_value(), though it needs no query per sequence: it locks the
# sequence until the end of the transaction (sequence.c keeps that lock in the top
# transaction's resource owner), which no savepoint can release, and a check of a large
# database would run PostgreSQL's shared lock table out.
ALL_STATES = """
SELECT s.oid::int8,
       (xpath('/row/last_value/text()', x))[1]::text,
       (xpath('/row/is_called/text()', x))[1]::text
FROM unnest(%s::oid[]) AS s(oid)
CROSS JOIN LATERAL query_to_xml(
    format('SELECT last_value, is_called FROM %%s', s.oid::regclass), true, true, ''
) AS x
"""

# One row per column: its windows (one row each in the arrays) become the subqueries of
# one query per column, run with query_to_xml and read back with XMLTABLE. Numbers
# travel as text literals cast to bigint (%L::int8), so that -9223372036854775808 stays
# a bigint and the column's index serves the range.
ALL_BOUNDS = """
WITH w AS (
    SELECT * FROM unnest(
        %s::int4[], %s::int4[], %s::oid[], %s::bool[], %s::text[], %s::bool[],
        %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::bool[]
    ) AS w(item, slot, rel, partitioned, col, ascending, lo, hi, base, step, fractional)
), q AS (
    SELECT item, 'SELECT ' || string_agg(format(
        '(SELECT %%s(%%I) FROM %%s%%s WHERE %%I BETWEEN %%L::int8 AND %%L::int8%%s) AS s%%s',
        CASE WHEN ascending THEN 'min' ELSE 'max' END,
        col,
        CASE WHEN partitioned THEN '' ELSE 'ONLY ' END,
        rel::regclass,
        col, lo, hi,
        CASE WHEN step <> 1
             THEN format(' AND mod(%%I::numeric - %%L::numeric, %%L::numeric) = 0', col, base, step)
             WHEN fractional THEN format(' AND %%I = trunc(%%I)', col, col)
             ELSE '' END,
        slot), ', ') AS query
    FROM w GROUP BY item
)
SELECT q.item, x.s0, x.s1, x.s2, x.s3
FROM q CROSS JOIN LATERAL XMLTABLE(
    '/row' PASSING query_to_xml(q.query, true, true, '')
    COLUMNS s0 text PATH 's0', s1 text PATH 's1', s2 text PATH 's2', s3 text PATH 's3'
) AS x
"""

_SLOTS = ("first_pass", "after_wrap", "top", "last_on_grid")


def all_states_params(sequences: Iterable[SequenceRef]) -> list[Any]:
    return [[s.oid for s in sequences]]


def parse_all_states(rows: Iterable[tuple[Any, ...]]) -> dict[int, SequenceState]:
    return {
        int(oid): SequenceState(int(last_value), is_called == "true")
        for oid, last_value, is_called in rows
    }


def all_bounds_params(items: Seq[tuple[Column, Plan]]) -> list[list[Any]]:
    """The arrays ALL_BOUNDS unnests, one element per window to search."""
    keys = ("item", "slot", "rel", "partitioned", "col", "ascending", "lo", "hi", "base", "step")
    params: dict[str, list[Any]] = {k: [] for k in (*keys, "fractional")}
    for item, (column, plan) in enumerate(items):
        for slot, name in enumerate(_SLOTS):
            w: Window | None = getattr(plan, name)
            if w is None:
                continue
            values: tuple[Any, ...] = (item, slot, column.table_oid, column.partitioned)
            values += (column.column, w.ascending, w.lo, w.hi, w.base, w.step)
            for key, value in zip(keys, values, strict=True):
                params[key].append(value)
            params["fractional"].append(column.type_range is None)
    return list(params.values())


def parse_all_bounds(rows: Iterable[tuple[Any, ...]], count: int) -> list[Bounds]:
    found: list[dict[str, int | None]] = [dict.fromkeys(_SLOTS) for _ in range(count)]
    for item, *values in rows:
        for slot, value in zip(_SLOTS, values, strict=True):
            found[item][slot] = int(value.split(".")[0]) if value else None  # nil: ""
    return [Bounds(**f) for f in found]
