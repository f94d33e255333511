"""Which unique keys an INSERT meets, and which existing rows each one can collide with.

A key counts exactly when PostgreSQL enforces it on the insert:

* unique indexes and PRIMARY KEY / UNIQUE constraints, and exclusion constraints that
  compare the column with ``=``, that are *ready* (``indisready``: inserts maintain and
  check them; a failed ``CREATE UNIQUE INDEX CONCURRENTLY`` leaves one that is not);
* on the table itself, or -- for a partitioned table, whose rows live in its leaf
  partitions -- on each leaf (a partitioned index enforces nothing by itself: an index
  created ``ON ONLY`` the parent, before its partitions have theirs, checks nothing);
* where the column is a key column, or a key column is an expression of it, or a
  generated column computed from it, that is one-to-one (``id::text``, ``id * 2``);
  an expression that maps several ids onto one value (``id % 1000``) is not judged;
* for a partial key, only the rows its predicate admits; and since NULL never equals
  NULL under the default NULLS DISTINCT (and never in an exclusion constraint), only
  the rows whose other key columns are all NOT NULL.

The rows a column's keys can collide with become one SQL condition
(``Column.row_filter``) that every read of the column carries.

The catalogs are read in one query (``KEYS``), which takes no lock. The texts of
predicates and expressions need ``pg_get_expr``, which locks the table: they are read
only for the keys that have them, in the check's read block, each on its own (a table a
migration holds is reported like any table that cannot be read).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from pytest_seqdrift.model import Column, Key, amended

# One row per unique or exclusion index that an insert into one of the given tables meets:
# the table's own, or its leaf partitions' (and a row without an index for a relation
# that has none). ``positions``: the key columns, in order,
# each with its name (NULL for an expression), NOT NULL, generated, the columns a
# generated column's expression reads, and an exclusion constraint's operator.
# ``reads``: the columns the index's expressions and predicate read.
KEYS = """
WITH tables AS (
    SELECT DISTINCT unnest(%s::oid[]) AS table_oid
), relations AS (
    SELECT t.table_oid, t.table_oid AS rel
    FROM tables t JOIN pg_class c ON c.oid = t.table_oid AND c.relkind <> 'p'
    UNION ALL
    SELECT t.table_oid, p.relid
    FROM tables t JOIN pg_class c ON c.oid = t.table_oid AND c.relkind = 'p'
    CROSS JOIN LATERAL pg_partition_tree(t.table_oid) p
    WHERE p.isleaf
)
SELECT r.table_oid::int8, r.rel::int8 AS rel,
       CASE WHEN r.rel <> r.table_oid THEN r.rel::regclass::text END AS rel_name,
       i.indexrelid::int8 AS index_oid,
       coalesce(con.conname, ic.relname)::text AS name,
       CASE con.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique'
                        WHEN 'x' THEN 'exclusion' ELSE 'unique index' END AS kind,
       coalesce(con.condeferrable, false) AS deferrable,
       i.indisready AS ready,
       i.indpred IS NOT NULL AS partial,
       i.indexprs IS NOT NULL AS expressions,
       coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false) AS nulls_not_distinct,
       (SELECT json_agg(json_build_object(
            'name', a.attname, 'not_null', a.attnotnull, 'generated', a.attgenerated <> '',
            -- the columns a generated column reads: its expression's dependencies, on
            -- its default (PostgreSQL 15 on) or on the column itself (before)
            'reads', CASE WHEN a.attgenerated <> '' THEN (
                SELECT json_agg(DISTINCT ra.attname) FROM pg_depend d
                JOIN pg_attribute ra ON ra.attrelid = a.attrelid AND ra.attnum = d.refobjsubid
                WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid
                  AND d.refobjsubid > 0 AND d.refobjsubid <> a.attnum
                  AND ((d.classid = 'pg_attrdef'::regclass AND d.objid = (
                            SELECT gd.oid FROM pg_attrdef gd
                            WHERE gd.adrelid = a.attrelid AND gd.adnum = a.attnum))
                       OR (d.classid = 'pg_class'::regclass AND d.objid = a.attrelid
                           AND d.objsubid = a.attnum))) END,
            'operator', CASE WHEN con.contype = 'x' THEN (
                SELECT o.oprname FROM pg_operator o WHERE o.oid = con.conexclop[k.ord]) END
        ) ORDER BY k.ord)
        FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN LATERAL (
            SELECT * FROM pg_attribute a
            WHERE a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0
            OFFSET 0  -- an index probe per key column, not a hash of the table's columns
        ) a ON true)::text AS positions,
       CASE WHEN i.indexprs IS NOT NULL OR i.indpred IS NOT NULL THEN (
           SELECT json_agg(DISTINCT ra.attname) FROM pg_depend d
           JOIN pg_attribute ra ON ra.attrelid = d.refobjid AND ra.attnum = d.refobjsubid
           WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
             AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid
             AND d.refobjsubid > 0)::text
       END AS reads
FROM relations r
LEFT JOIN (
    pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                               AND con.contype IN ('p', 'u', 'x')
) ON i.indrelid = r.rel AND (i.indisunique OR con.contype = 'x')
ORDER BY r.table_oid, i.indnkeyatts, i.indisprimary DESC, i.indexrelid
"""


def keys_query(columns: Iterable[Column]) -> tuple[str, list[Any]]:
    return KEYS, [sorted({c.table_oid for c in columns})]


@dataclass(frozen=True)
class _Position:
    name: str | None  # None: an expression
    not_null: bool
    generated: bool
    reads: tuple[str, ...]  # a generated column's inputs
    operator: str | None  # an exclusion constraint's


@dataclass(frozen=True)
class Candidate:
    """A unique or exclusion index as the catalogs describe it, before its texts."""

    table_oid: int
    rel: int
    rel_name: str | None
    index_oid: int
    name: str
    kind: str
    deferrable: bool
    ready: bool
    partial: bool
    expressions: bool
    nulls_not_distinct: bool
    positions: tuple[_Position, ...]
    reads: tuple[str, ...]  # the columns its expressions and predicate read

    def involves(self, column: str) -> bool:
        return any(
            p.name == column or (p.generated and column in p.reads) for p in self.positions
        ) or (self.expressions and column in self.reads)

    def key(self, columns: tuple[str, ...], predicate: str | None) -> Key:
        """The key as the column's verdict and the probe speak of it."""
        return Key(
            name=self.name,
            columns=columns,
            kind=self.kind,  # type: ignore[arg-type]
            relation=self.rel_name,  # (None for the table's own)
            deferrable=self.deferrable,
            predicate=predicate,
        )

    def needs_text(self, column: str) -> bool:
        """The key's verdict on ``column`` hangs on the text of an expression."""
        return self.partial or (self.expressions and column in self.reads)


@dataclass
class Candidates:
    """The KEYS rows: each table's candidate keys, and the relations its rows live in."""

    by_table: dict[int, list[Candidate]]
    relations: dict[int, set[int]]


# KEYS' columns before the texts of positions and reads, in its order
_CANDIDATE_FIELDS = (
    "table_oid",
    "rel",
    "rel_name",
    "index_oid",
    "name",
    "kind",
    "deferrable",
    "ready",
    "partial",
    "expressions",
    "nulls_not_distinct",
)


def parse_candidates(rows: Iterable[Seq[Any]]) -> Candidates:
    """The KEYS rows (in ``Candidate``'s order of fields, the texts of positions and
    reads last)."""
    out = Candidates({}, {})
    for row in rows:
        table_oid, rel, _, index_oid = row[:4]
        out.relations.setdefault(table_oid, set()).add(rel)
        if index_oid is None:
            continue
        *head, positions, reads = row
        out.by_table.setdefault(table_oid, []).append(
            Candidate(
                **dict(zip(_CANDIDATE_FIELDS, head, strict=True)),
                positions=_positions(positions or "[]"),
                reads=tuple(json.loads(reads)) if reads else (),
            )
        )
    return out


@functools.lru_cache(maxsize=1024)  # a thousand tables have a handful of key shapes
def _positions(text: str) -> tuple[_Position, ...]:
    return tuple(
        _Position(
            p["name"],
            bool(p["not_null"]),
            bool(p["generated"]),
            tuple(p["reads"] or ()),
            p["operator"],
        )
        for p in json.loads(text)
    )


# --- the texts: read in the check's read block, where a locked table fails on its own --


@dataclass(frozen=True)
class IndexText:
    """Read the predicate and the key columns' texts of a unique index."""

    index_oid: int

    def statement(self) -> str:
        oid = int(self.index_oid)
        return (
            "SELECT pg_get_expr(i.indpred, i.indrelid), (SELECT json_agg("
            "pg_get_indexdef(i.indexrelid, k, false) ORDER BY k) "
            "FROM generate_series(1, i.indnkeyatts) AS k)::text, NULL, NULL "
            f"FROM pg_index i WHERE i.indexrelid = {oid}"
        )


@dataclass(frozen=True)
class GeneratedText:
    """Read a generated column's expression."""

    rel: int
    column: str

    def statement(self) -> str:
        name = "'" + self.column.replace("'", "''") + "'"
        return (
            "SELECT pg_get_expr(d.adbin, d.adrelid), NULL, NULL, NULL FROM pg_attrdef d "
            "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            f"WHERE d.adrelid = {int(self.rel)} AND a.attname = {name}"
        )


KeyText = IndexText | GeneratedText


def texts_wanted(columns: Iterable[Column], candidates: Candidates) -> list[KeyText]:
    """The texts the columns' keys need, each once."""
    wanted: dict[KeyText, None] = {}
    for c in columns:
        for k in candidates.by_table.get(c.table_oid, ()):
            if not k.ready or not k.involves(c.column):
                continue
            if k.needs_text(c.column):
                wanted[IndexText(k.index_oid)] = None
            for p in k.positions:
                if p.generated and c.column in p.reads:
                    wanted[GeneratedText(k.rel, p.name or "")] = None
    return list(wanted)


@dataclass(frozen=True)
class _Judged:
    keys: tuple[Key, ...]
    row_filter: str | None
    opaque: tuple[str, ...]  # keys the arithmetic cannot judge, described
    unreadable: str | None  # a text could not be read: why


def attach(
    columns: Seq[Column],
    candidates: Candidates,
    texts: Mapping[KeyText, tuple[str | None, ...] | str],
) -> list[Column]:
    """The columns with their keys, row filters and, where a key cannot be judged, the
    reason. ``texts`` holds each text read's answer, or why it failed (a str)."""
    out = []
    for c in columns:
        judged = _judge(
            c,
            candidates.by_table.get(c.table_oid, []),
            candidates.relations.get(c.table_oid, set()),
            texts,
        )
        first = judged.keys[0].columns if judged.keys else None
        unjudged = c.unjudged
        if judged.opaque and unjudged is None:
            unjudged = (
                f"{'; '.join(judged.opaque)}: an expression that maps several ids onto one "
                "value, which the arithmetic cannot judge (on a test database, pytest --seqdrift's probe judges it by inserting)"
            )
        skip = c.skip_reason or judged.unreadable
        out.append(
            amended(
                c,
                keys=judged.keys,
                key_columns=first,
                row_filter=judged.row_filter,
                unjudged=unjudged,
                skip_reason=skip,
            )
        )
    return out


def _judge(
    column: Column,
    candidates: Seq[Candidate],
    relations: set[int],
    texts: Mapping[KeyText, tuple[str | None, ...] | str],
) -> _Judged:
    keys: list[Key] = []
    opaque: list[str] = []
    filters: dict[int, list[str | None]] = {}  # by relation: each key's row filter
    for k in candidates:
        if not k.ready or not k.involves(column.column):
            continue
        predicate = None
        defs: list[str | None] = [None] * len(k.positions)
        if k.needs_text(column.column):
            answer = texts.get(IndexText(k.index_oid))
            if isinstance(answer, str) or answer is None:
                return _Judged((), None, (), f"could not read key {k.name}: {answer}")
            predicate = answer[0]
            read = list(json.loads(answer[1] or "[]"))
            defs = (read + defs)[: len(k.positions)]
        roles: list[str] = []  # per position: "id", "other" or "opaque"
        nullable: list[str] = []  # other key columns that may hold NULL
        for p, text in zip(k.positions, defs, strict=True):
            role = "other"
            if p.name == column.column:
                role = "id"
            elif p.generated and column.column in p.reads:
                gen = texts.get(GeneratedText(k.rel, p.name or ""))
                if isinstance(gen, str) or gen is None:
                    return _Judged((), None, (), f"could not read column {p.name}: {gen}")
                role = _role(gen[0], column.column, set(p.reads))
            elif p.name is None and text is not None and column.column in _words(text):
                role = _role(text, column.column, None)
            if role == "id" and k.kind == "exclusion" and p.operator != "=":
                role = "opaque"
            if role == "other" and p.name is not None and not p.not_null:
                nullable.append(p.name)
            roles.append(role)
        if "opaque" in roles or "id" not in roles:
            if "opaque" in roles:
                shown = ", ".join(
                    _bare(d) if d else (p.name or "?")
                    for p, d in zip(k.positions, defs, strict=True)
                )
                opaque.append(f"{k.kind} {k.name} on ({shown})")
                # enforced all the same: the probe's inserts meet it (no rows counted)
                keys.append(k.key((shown,), predicate))
            continue
        parts = []
        if predicate:
            parts.append(f"({predicate})")
        if k.kind == "exclusion" or not k.nulls_not_distinct:
            parts += [f"{_ident(n)} IS NOT NULL" for n in nullable]
        row_filter = " AND ".join(parts) or None
        filters.setdefault(k.rel, []).append(row_filter)
        shown_columns = tuple(
            p.name if p.name is not None else (d or "(expression)")
            for p, d in zip(k.positions, defs, strict=True)
        )
        keys.append(k.key(shown_columns, predicate))
    row_filter = _combined(column, filters, relations) if filters else None
    return _Judged(tuple(keys), row_filter, tuple(opaque), None)


def _combined(
    column: Column, filters: Mapping[int, list[str | None]], relations: set[int]
) -> str | None:
    """One condition for the rows any of the keys can collide with (None: every row)."""
    per_relation = {
        rel: None if None in fs else " OR ".join(f"({f})" for f in fs)
        for rel, fs in filters.items()
    }
    if not column.partitioned:
        return per_relation.get(column.table_oid)
    if set(per_relation) >= relations and all(f is None for f in per_relation.values()):
        return None
    # a partitioned table: only the rows of the leaves whose keys count
    parts = []
    plain = sorted(rel for rel, f in per_relation.items() if f is None)
    if plain:
        parts.append(f"tableoid = ANY ('{{{','.join(str(int(r)) for r in plain)}}}'::oid[])")
    for rel, f in sorted(per_relation.items()):
        if f is not None:
            parts.append(f"(tableoid = {int(rel)}::oid AND ({f}))")
    return " OR ".join(parts) or "false"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_WORD = re.compile(r'"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*')


def _words(text: str) -> set[str]:
    """The identifiers in a deparsed expression, as names."""
    out = set()
    for w in _WORD.findall(text):
        out.add(w[1:-1].replace('""', '"') if w.startswith('"') else w)
    return out


# A one-to-one function of an integer: the column itself, a cast to a type that keeps
# every integer apart, a sum or difference with a constant, a product with a constant
# other than zero, a negation.
_INJECTIVE_TYPES = re.compile(
    r"(text|character varying(\(\d+\))?|varchar|bigint|integer|smallint|numeric(\(\d+(,\s*\d+)?\))?)"
)
_NUMBER = re.compile(r"\(?'?-?\d+(\.\d+)?'?(::\w+)?\)?")


def _role(text: str | None, column: str, reads: set[str] | None) -> str:
    """ "id" when the expression is a one-to-one function of the column alone, "opaque"
    when it reads the column some other way."""
    if text is None:
        return "opaque"
    if reads is not None and reads - {column}:
        return "opaque"
    return "id" if _injective(text.strip(), column) else "opaque"


def _injective(text: str, column: str) -> bool:
    names = {column, _ident(column)}
    while True:
        if text in names:
            return True
        inner = _unwrap(text)
        if inner is not None:
            text = inner
            continue
        cast = re.fullmatch(r"(.+)::(.+)", text)
        if cast and _INJECTIVE_TYPES.fullmatch(cast.group(2).strip()):
            text = cast.group(1).strip()
            continue
        neg = re.fullmatch(r"-\s*(.+)", text)
        if neg:
            text = neg.group(1).strip()
            continue
        op = _split_operator(text)
        if op is None:
            return False
        left, symbol, right = op
        if _NUMBER.fullmatch(right) and symbol in "+-*":
            if symbol == "*" and _is_zero(right):
                return False
            text = left
            continue
        if _NUMBER.fullmatch(left) and symbol in "+*":
            if symbol == "*" and _is_zero(left):
                return False
            text = right
            continue
        return False


def _is_zero(number: str) -> bool:
    digits = re.sub(r"[^0-9.]", "", number.split("::")[0])
    return float(digits or 0) == 0


def _bare(text: str) -> str:
    """An expression without the parentheses around all of it."""
    while (inner := _unwrap(text)) is not None:
        text = inner
    return text


def _unwrap(text: str) -> str | None:
    """The text inside one pair of parentheses that encloses all of it."""
    if not (text.startswith("(") and text.endswith(")")):
        return None
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(text) - 1:
            return None
    return text[1:-1].strip()


def _split_operator(text: str) -> tuple[str, str, str] | None:
    """``left op right`` at the top level, for op one of + - *."""
    depth = 0
    quoted = False
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        if quoted:
            continue
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "+-*" and 0 < i < len(text) - 1 and text[i - 1] == " ":
            return text[:i].strip(), ch, text[i + 1 :].strip()
    return None
