"""Discovery: every sequence-backed column and its sequence, in one catalog query.

Objects are matched by OID, never by name; a sequence named only in a text is found by
name where the role may look it up.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import Any

from pytest_seqdrift.model import Column, PgSequence

# One row per (column, sequence) pair where the column's values come from the sequence,
# with ``how``: an identity column (pg_depend deptype 'i'); a column default that depends
# on a sequence (pg_attrdef -> pg_class, deptype 'n': serial columns, sequences owned by
# nothing or by another table, shared ones); a sequence OWNED BY a column that has no
# default and that no default uses (the application draws from it itself); and three
# shapes that record no dependency on the sequence, found by its name: an old-style
# default nextval('name'::text), a default calling a function whose body calls
# nextval('name'), and a BEFORE INSERT row trigger whose function assigns nextval('name')
# to NEW.column (the way ids are filled after a migration from Oracle).
LINKS = r"""
WITH named AS (
    -- the shapes that name their sequence in a text: (table, column, name, where the
    -- name is written: its schema is tried when the search path does not find it)
    SELECT ad.adrelid AS table_oid, ad.adnum AS attnum, x.name, 'text' AS how,
           NULL::text AS via, NULL::oid AS written_in, NULL::text AS of_column
    FROM pg_attrdef ad
    CROSS JOIN LATERAL (
        SELECT m[1] AS name
        FROM regexp_matches(pg_get_expr(ad.adbin, 0),
                            E'nextval\\(\\(''((?:[^'']|'''')+)''::text\\)::regclass\\)', 'g') AS m
    ) x
    WHERE ad.adbin::text LIKE '%%:funcid 1574 %%:funcid 1079 %%'  -- nextval(text::regclass)
    UNION ALL
    -- nextval(pg_get_serial_sequence('table', 'column')): the name is the table's
    SELECT ad.adrelid, ad.adnum, x.name, 'text', NULL, NULL, x.of_column
    FROM pg_attrdef ad
    CROSS JOIN LATERAL (
        SELECT m[1] AS name, replace(m[2], '''''', '''') AS of_column
        FROM regexp_matches(pg_get_expr(ad.adbin, 0),
            E'nextval\\(\\(?pg_get_serial_sequence\\(''((?:[^'']|'''')+)''::text, ''((?:[^'']|'''')+)''::text\\)',
            'g') AS m
    ) x
    WHERE ad.adbin::text LIKE '%%:funcid 1574 %%:funcid 1079 %%'  -- nextval(text::regclass)
    UNION ALL
    SELECT ad.adrelid, ad.adnum, x.name, 'function', p.oid::regprocedure::text, p.pronamespace,
           NULL
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
     AND d.refclassid = 'pg_proc'::regclass
    JOIN pg_proc p ON p.oid = d.refobjid AND p.prosrc ~* 'nextval'
    CROSS JOIN LATERAL (
        SELECT m[1] AS name
        FROM regexp_matches(p.prosrc, E'nextval\\s*\\(\\s*''((?:[^'']|'''')+)''', 'gi') AS m
    ) x
    UNION ALL
    SELECT g.tgrelid, a.attnum, x.name, 'trigger', g.tgname::text, p.pronamespace, NULL
    FROM pg_trigger g
    JOIN pg_proc p ON p.oid = g.tgfoid AND p.prosrc ~* 'nextval'
    CROSS JOIN LATERAL (
        SELECT m[2] AS name, m[1] AS target
        FROM regexp_matches(p.prosrc,
            E'new\\.(\\w+|"(?:[^"]|"")+")\\s*:?=\\s*nextval\\s*\\(\\s*''((?:[^'']|'''')+)''', 'gi') AS m
        UNION ALL
        SELECT m[1], m[2]
        FROM regexp_matches(p.prosrc,
            E'select\\s+nextval\\s*\\(\\s*''((?:[^'']|'''')+)''[^;]*?\\s+into\\s+new\\.(\\w+|"(?:[^"]|"")+")',
            'gi') AS m
    ) x
    JOIN pg_attribute a ON a.attrelid = g.tgrelid AND NOT a.attisdropped AND a.attname =
        CASE WHEN left(x.target, 1) = '"' THEN replace(btrim(x.target, '"'), '""', '"')
             ELSE lower(x.target) END
    WHERE NOT g.tgisinternal AND g.tgtype::int & 7 = 7 AND g.tgenabled <> 'D'
      AND NOT EXISTS (SELECT FROM pg_attrdef ad
                      WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum)
), links AS (
    SELECT d.refobjid AS table_oid, d.refobjsubid AS attnum, d.objid AS seq_oid,
           'identity' AS how, NULL::text AS via
    FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'i' AND d.refobjsubid > 0
    UNION
    SELECT ad.adrelid, ad.adnum, d.refobjid, 'default', NULL
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'n'
    UNION
    -- before PostgreSQL 15, a generated column's expression records its dependencies on
    -- the column itself, not on its default
    SELECT d.objid, d.objsubid, d.refobjid, 'default', NULL
    FROM pg_depend d
    JOIN pg_class gs ON gs.oid = d.refobjid AND gs.relkind = 'S'
    WHERE d.classid = 'pg_class'::regclass AND d.objsubid > 0
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('n', 'a')
    UNION
    SELECT d.refobjid, d.refobjsubid, d.objid, 'owned', NULL
    FROM pg_depend d
    JOIN pg_class os ON os.oid = d.objid AND os.relkind = 'S'
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'a' AND d.refobjsubid > 0
      AND NOT EXISTS (SELECT FROM pg_attrdef ad
                      WHERE ad.adrelid = d.refobjid AND ad.adnum = d.refobjsubid)
      AND NOT EXISTS (SELECT FROM pg_depend u
                      WHERE u.classid = 'pg_attrdef'::regclass
                        AND u.refclassid = 'pg_class'::regclass AND u.refobjid = d.objid)
    UNION
    -- a default calling a function whose body is SQL-standard (BEGIN ATOMIC): its body
    -- records what it uses, the sequence among them
    SELECT ad.adrelid, ad.adnum, fd.refobjid, 'function', p.oid::regprocedure::text
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
     AND d.refclassid = 'pg_proc'::regclass
    JOIN pg_proc p ON p.oid = d.refobjid
    JOIN pg_depend fd ON fd.classid = 'pg_proc'::regclass AND fd.objid = p.oid
     AND fd.refclassid = 'pg_class'::regclass
    JOIN pg_class fs ON fs.oid = fd.refobjid AND fs.relkind = 'S'
    UNION
    -- a name is looked up on the search path of whoever inserts; here, on the check's,
    -- then in the schema of the table, then in the function's
    SELECT n.table_oid, n.attnum, coalesce(owned.seq_oid, r.seq_oid), n.how, n.via
    FROM named n
    JOIN pg_class nt ON nt.oid = n.table_oid
    CROSS JOIN LATERAL (SELECT replace(n.name, '''''', '''') AS name) u
    CROSS JOIN LATERAL (
        -- only names of one or two parts, and only in schemas the role may use
        -- (to_regclass fails on a schema it may not)
        SELECT CASE WHEN u.name ~ E'^("(?:[^"]|"")+"|[^".]+)(\\.("(?:[^"]|"")+"|[^".]+))?$'
                    THEN parse_ident(u.name) END AS parts
    ) i
    CROSS JOIN LATERAL (
        SELECT CASE cardinality(i.parts)
            WHEN 1 THEN coalesce(
                to_regclass(u.name),
                (SELECT to_regclass(quote_ident(ns.nspname) || '.' || u.name)
                 FROM pg_namespace ns
                 WHERE ns.oid IN (nt.relnamespace, n.written_in)
                   AND has_schema_privilege(ns.oid, 'USAGE')
                 ORDER BY ns.oid <> nt.relnamespace LIMIT 1))
            WHEN 2 THEN (
                SELECT to_regclass(u.name) FROM pg_namespace ns
                WHERE ns.nspname = i.parts[1] AND has_schema_privilege(ns.oid, 'USAGE'))
            END::oid AS seq_oid
    ) r
    LEFT JOIN LATERAL (
        -- pg_get_serial_sequence's answer: the sequence the column owns, or its identity's
        SELECT sd.objid AS seq_oid
        FROM pg_attribute sa
        JOIN pg_depend sd ON sd.refclassid = 'pg_class'::regclass AND sd.refobjid = sa.attrelid
         AND sd.refobjsubid = sa.attnum AND sd.classid = 'pg_class'::regclass
         AND sd.deptype IN ('a', 'i')
        JOIN pg_class sc ON sc.oid = sd.objid AND sc.relkind = 'S'
        WHERE n.of_column IS NOT NULL AND sa.attrelid = r.seq_oid AND sa.attname = n.of_column
        LIMIT 1
    ) owned ON true
    WHERE r.seq_oid IS NOT NULL AND (n.of_column IS NULL OR owned.seq_oid IS NOT NULL)
)"""

DISCOVERY = (
    LINKS
    + """
SELECT
    t.oid::int8 AS table_oid,
    tn.nspname::text AS schema,
    t.relname::text AS table_name,
    quote_ident(tn.nspname) || '.' || quote_ident(t.relname) AS qualified_table,
    a.attname::text AS column_name,
    a.attnum::int AS attnum,
    format_type(CASE WHEN ty.typtype <> 'd' THEN a.atttypid ELSE (
        -- a domain, perhaps over another domain: the type at the bottom
        WITH RECURSIVE chain (typ, base) AS (
            SELECT ty.oid, ty.typbasetype
            UNION ALL
            SELECT b.oid, b.typbasetype FROM chain c JOIN pg_type b ON b.oid = c.base
        )
        SELECT typ FROM chain WHERE base = 0
    ) END, NULL) AS data_type,
    t.relkind = 'p' AS partitioned,
    t.relispartition AS is_partition,
    CASE WHEN t.relispartition THEN (
        SELECT array_agg(i.inhparent::int8) FROM pg_inherits i WHERE i.inhrelid = t.oid
    ) END AS parents,
    a.attidentity::text AS identity,
    l.how,
    l.via,
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
    ix.indexed,
    CASE WHEN ix.indexed THEN NULL
         WHEN t.relkind = 'p' THEN (
             SELECT sum(greatest(c.reltuples, 0)) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = t.oid)
         WHEN t.reltuples >= 0 THEN t.reltuples
    END::float8 AS estimated_rows,
    has_column_privilege(t.oid, a.attnum, 'SELECT') AS can_read_column,
    has_sequence_privilege(s.oid, 'SELECT') AS can_read_sequence,
    -- row-level security filters what the role reads (a partitioned table is read
    -- through its parent, whose policies are the ones that apply)
    row_security_active(t.oid) AS row_security
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
    SELECT CASE WHEN a.attgenerated <> '' THEN pg_get_expr(ad.adbin, ad.adrelid)
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
CROSS JOIN LATERAL (
    -- a valid btree index that leads with the column answers max() with one probe;
    -- without one, reading the max scans the table
    SELECT EXISTS (
        SELECT FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = t.oid AND i.indkey[0] = a.attnum AND i.indisvalid
          AND i.indpred IS NULL
          AND ic.relam = (SELECT am.oid FROM pg_am am WHERE am.amname = 'btree')
    ) AS indexed
    OFFSET 0  -- evaluated once per row, not once per use
) ix
WHERE tn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND tn.nspname NOT LIKE 'pg\\_toast%%'
  AND NOT pg_is_other_temp_schema(tn.oid)
  AND (%(schemas)s::text[] IS NULL OR tn.nspname = ANY (%(schemas)s::text[]))
"""
)


_SOURCES = {"a": "identity always", "d": "identity by default", "": "default"}


def discovery_params(schemas: Iterable[str] | None) -> dict[str, Any]:
    return {"schemas": list(schemas) if schemas is not None else None}


def discovery_text(schemas: Iterable[str] | None) -> str:
    """DISCOVERY with its one parameter written in, as a statement without parameters
    (to be prepared: ``read.prepared``). Each schema name is spelled in hexadecimal, so
    no setting of the server (``standard_conforming_strings``) changes how it reads."""
    if schemas is None:
        given = "NULL::text[]"
    else:
        names = (
            f"convert_from(decode('{name.encode().hex()}', 'hex'), 'UTF8')" for name in schemas
        )
        given = f"ARRAY[{', '.join(names)}]::text[]"
    # the driver would have turned each %% into % and %(schemas)s into the value
    return DISCOVERY.replace("%(schemas)s", f"({given})").replace("%%", "%")


def parse_discovery(
    rows: Iterable[dict[str, Any]], exclude_tables: Seq[str] = ()
) -> tuple[list[Column], dict[int, PgSequence]]:
    """Columns and their sequences from the discovery rows (their keys are added by
    ``keys.attach``).

    A partition whose parent draws the same column from the same sequence is checked
    through the parent, which reads the whole hierarchy and counts the keys of every
    leaf partition (an insert is routed to one of them), not on its own.
    """
    # sorted here, not by the server: the rows are wide, and names sort the same way
    # (type name compares bytes; Python compares code points, which is UTF-8's order)
    rows = sorted(
        rows,
        key=lambda r: (
            r["schema"],
            r["table_name"],
            r["attnum"],
            r["seq_schema"],
            r["seq_name"],
            _HOWS.index(r["how"]),
        ),
    )
    linked = set()
    if any(r["is_partition"] for r in rows):
        linked = {(r["table_oid"], r["column_name"], r["seq_oid"]) for r in rows}
    columns: list[Column] = []
    sequences: dict[int, PgSequence] = {}
    seen: set[tuple[int, int, int]] = set()
    for r in rows:
        pair = (r["table_oid"], r["attnum"], r["seq_oid"])
        if pair in seen:  # found two ways (an identity's sequence is also OWNED BY it)
            continue
        seen.add(pair)
        if r["is_partition"] and any(
            (parent, r["column_name"], r["seq_oid"]) in linked for parent in r["parents"] or ()
        ):
            continue
        if exclude_tables and excluded_table(r["schema"], r["table_name"], exclude_tables):
            continue
        seq = sequences.get(r["seq_oid"])
        if seq is None:
            seq = sequences[r["seq_oid"]] = PgSequence(
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
            )
        source, plain, note, unjudged = _drawn(r, seq)
        skip = None
        if not r["can_read_column"]:
            skip = f"permission denied: cannot SELECT column {r['column_name']}"
        elif not r["can_read_sequence"]:
            skip = f"permission denied: cannot SELECT from sequence {seq.qualified}"
        elif r["row_security"]:
            skip = (
                "row-level security is active on the table for this role: the ids it "
                "hides cannot be read (check as the table's owner, a superuser or a role "
                "with BYPASSRLS)"
            )
        columns.append(
            Column(
                table_oid=r["table_oid"],
                schema=r["schema"],
                table=r["table_name"],
                column=r["column_name"],
                qualified_table=r["qualified_table"],
                data_type=r["data_type"],
                partitioned=r["partitioned"],
                source=source,
                sequence_oid=seq.oid,
                plain_default=plain,
                default_expr=r["default_expr"],
                key_columns=None,
                indexed=r["indexed"],
                estimated_rows=(None if r["estimated_rows"] is None else int(r["estimated_rows"])),
                skip_reason=skip,
                attnum=r["attnum"],
                note=note,
                unjudged=unjudged,
            )
        )
    return columns, sequences


# the ways discovery finds a column's sequence, the surest first
_HOWS = ("identity", "default", "text", "function", "trigger", "owned")

# nextval('name'::text), alone or cast to the column's type: the name is looked up at
# each call, and the value is the sequence's next one
_TEXT_NEXTVAL = re.compile(r"\(?nextval\(\('(?:[^']|'')+'::text\)::regclass\)(?:\)::[\w ]+)?")


def _drawn(r: dict[str, Any], seq: PgSequence) -> tuple[Any, bool, str | None, str | None]:
    """How the column's values are drawn: (source, plain, note, unjudged)."""
    how = r["how"]
    if how == "identity":
        return _SOURCES.get(r["identity"], "default"), True, None, None
    if how == "owned":
        note = (
            f"no default: the application draws the values itself, from {seq.qualified}, "
            "which the column owns"
        )
        return "owned", True, note, None
    if how == "trigger":
        unjudged = (
            f"no default: trigger {r['via']} fills it from {seq.qualified} before each "
            "insert, and the arithmetic cannot judge what a trigger stores (the --seqdrift "
            "probe can)"
        )
        return "trigger", False, None, unjudged
    expr = r["default_expr"]
    if how == "text":
        plain = _TEXT_NEXTVAL.fullmatch(expr or "") is not None
        note = (
            f"default {expr} names its sequence as text: it is looked up by name, on the "
            "inserting session's search_path, at each insert"
        )
        return "default", plain, note, None
    return "default", bool(r["plain_default"]), None, None


def excluded_table(schema: str, table: str, patterns: Seq[str]) -> bool:
    """Whether ``exclude_tables``' fnmatch patterns leave out ``schema.table``."""
    return any(
        fnmatch.fnmatchcase(f"{schema}.{table}", p) or fnmatch.fnmatchcase(table, p)
        for p in patterns
    )
