"""What one INSERT draws: how many values from each sequence, and whether a trigger or
rule may store another value than the default's, or draw from the same sequence.

Two columns of one table fed by one sequence draw twice per insert, in the order of
the columns: the first gets the sequence's next value, the second the one after, and
each column walks the sequence with twice its increment (``per_insert``).

What a trigger does is code, which read-only arithmetic cannot run. A trigger (row or
statement, BEFORE or AFTER, on the table or on one of its partitions) or an INSERT rule
*may* change what an insert stores or draws when its function is not SQL or PL/pgSQL
(a few built-in ones excepted), or when its source mentions the column, the sequence,
``nextval``/``setval`` of it (or of a sequence not named by a literal), dynamic SQL,
assigns NEW as a whole, calls a function of the
database's own, or -- where the sequence also feeds another column -- inserts. Such a
column is ``unchecked``, naming the trigger; the probe judges it by inserting for real.
A trigger that mentions none of these (``NEW.updated_at := now()``) cannot change the
id, nor draw from its sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from typing import Any

from pytest_seqdrift import drift
from pytest_seqdrift.model import Column, PgSequence, SequenceState, amended
from pytest_seqdrift.render import ordinal

# The triggers and rules that run when a row is inserted into one of the given tables:
# on the table, or on one of its partitions (an insert is routed there). A trigger
# cloned onto partitions from the parent's is listed once, by the parent's.
TRIGGERS = r"""
WITH tables AS (
    SELECT DISTINCT unnest(%s::oid[]) AS table_oid
), relations AS (
    SELECT t.table_oid, t.table_oid AS rel FROM tables t
    UNION
    SELECT t.table_oid, p.relid
    FROM tables t JOIN pg_class c ON c.oid = t.table_oid AND c.relkind = 'p'
    CROSS JOIN LATERAL pg_partition_tree(t.table_oid) p
), own_functions AS MATERIALIZED (
    -- the functions a trigger's source may call: SQL and PL/pgSQL ones outside the
    -- system schemas (a function of an extension, in C, draws from no sequence of ours)
    SELECT f.oid, f.proname::text AS name
    FROM pg_proc f
    JOIN pg_namespace n ON n.oid = f.pronamespace
    JOIN pg_language fl ON fl.oid = f.prolang AND fl.lanname IN ('sql', 'plpgsql')
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
)
SELECT r.table_oid::int8, 'trigger' AS kind, g.tgname::text AS name,
       CASE WHEN g.tgtype::int & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END
         || ' INSERT, for each ' || CASE WHEN g.tgtype::int & 1 = 1 THEN 'row' ELSE 'statement' END
         AS timing,
       p.proname::text AS function, l.lanname::text AS language, p.prosrc,
       encode(g.tgargs, 'escape') AS args,
       ARRAY(
           SELECT DISTINCT f.name FROM own_functions f
           WHERE f.oid <> p.oid AND strpos(lower(p.prosrc), lower(f.name)) > 0
             AND p.prosrc ~* (E'\\m' || regexp_replace(f.name, E'(\\W)', E'\\\\\\1', 'g') || E'\\s*\\(')
       ) AS calls
FROM relations r
JOIN pg_trigger g ON g.tgrelid = r.rel AND NOT g.tgisinternal AND g.tgtype::int & 4 = 4
 AND g.tgenabled IN ('O', 'A')
 AND (r.rel = r.table_oid OR coalesce((to_jsonb(g) ->> 'tgparentid')::oid, 0) = 0)
JOIN pg_proc p ON p.oid = g.tgfoid
JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT r.table_oid::int8, 'rule', w.rulename::text, 'ON INSERT', NULL, NULL, NULL, NULL, NULL
FROM relations r
JOIN pg_rewrite w ON w.ev_class = r.rel AND w.ev_type = '3' AND w.ev_enabled IN ('O', 'A')
ORDER BY 1, 3
"""

# Built-in trigger functions that set a column named in their arguments, if any
_SAFE_FUNCTIONS = {
    "tsvector_update_trigger",
    "tsvector_update_trigger_column",
    "suppress_redundant_updates_trigger",
    "moddatetime",
    "insert_username",
    "lo_manage",
}


@dataclass(frozen=True)
class Hook:
    """A trigger or rule that runs on insert."""

    table_oid: int
    kind: str  # trigger | rule
    name: str
    timing: str
    function: str | None
    language: str | None
    source: str | None
    args: str | None
    calls: tuple[str, ...]

    def label(self) -> str:
        if self.kind == "rule":
            return f"rule {self.name} (ON INSERT)"
        return f"trigger {self.name} ({self.timing}, function {self.function})"


def triggers_query(columns: Iterable[Column]) -> tuple[str, list[Any]]:
    return TRIGGERS, [sorted({c.table_oid for c in columns})]


def parse_hooks(rows: Iterable[Seq[Any]]) -> dict[int, list[Hook]]:
    out: dict[int, list[Hook]] = {}
    for table_oid, kind, name, timing, function, language, source, args, calls in rows:
        out.setdefault(table_oid, []).append(
            Hook(
                table_oid, kind, name, timing, function, language, source, args, tuple(calls or ())
            )
        )
    return out


def _word(name: str) -> str:
    return r"(?<![\w$])" + re.escape(name) + r"(?![\w$])"


_ALWAYS = re.compile(r"(?<![\w$])execute(?![\w$])|(?<![\w$.])new\s*:?=", re.IGNORECASE)
# nextval / setval, and the sequence they name where it is a literal
_DRAW = re.compile(r"(?<![\w$])(?:nextval|setval)\s*\(\s*(?:'((?:[^']|'')*)')?", re.IGNORECASE)
_INSERT = re.compile(r"(?<![\w$])insert(?![\w$])", re.IGNORECASE)


def _names(text: str, seq: PgSequence) -> bool:
    """Does ``text`` (the string a trigger passes to nextval) name ``seq``? Its last
    part, unquoted (an unquoted name folds to lower case), is the sequence's name; a
    schema, where given, must be its schema."""
    parts = [
        p[1:-1].replace('""', '"') if p.startswith('"') else p.lower()
        for p in re.findall(r'"(?:[^"]|"")*"|[^."]+', text.strip())
    ]
    if not parts or parts[-1] != seq.name:
        return False
    return len(parts) == 1 or parts[-2] == seq.schema


def may_change(hook: Hook, column: Column, seq: PgSequence, shared: bool) -> bool:
    """Can the hook change what an insert stores in ``column``, or draw from ``seq``?"""
    if hook.kind == "rule":
        return True
    if hook.language not in ("plpgsql", "sql"):
        if hook.function in _SAFE_FUNCTIONS:
            return column.column in (hook.args or "").split("\x00")
        return True
    source = hook.source or ""
    if _ALWAYS.search(source) or hook.calls:
        return True
    for draw in _DRAW.finditer(source):
        # a draw from a sequence named by a literal other than this one (an audit table's
        # own) leaves this column's walk alone; any other draw may not
        named = draw.group(1)
        if named is None or _names(named.replace("''", "'"), seq):
            return True
    for name in (column.column, seq.name):
        if re.search(_word(name), source, re.IGNORECASE):
            return True
    return shared and _INSERT.search(source) is not None


def attach(
    columns: Seq[Column],
    sequences: Mapping[int, PgSequence],
    hooks: Mapping[int, list[Hook]],
) -> list[Column]:
    """The columns with how many values each insert draws from their sequence, and
    the triggers and rules that keep the arithmetic from judging them."""
    by_pair: dict[tuple[int, int], list[Column]] = {}
    feeds: dict[int, set[tuple[int, int]]] = {}
    for c in columns:
        by_pair.setdefault((c.table_oid, c.sequence_oid), []).append(c)
        feeds.setdefault(c.sequence_oid, set()).add((c.table_oid, c.attnum))
    out = []
    for c in columns:
        seq = sequences[c.sequence_oid]
        unjudged, note = c.unjudged, c.note
        changes = [
            h for h in hooks.get(c.table_oid, ()) if may_change(h, c, seq, len(feeds[seq.oid]) > 1)
        ]
        if changes and unjudged is None:
            unjudged = (
                f"{_listed(h.label() for h in changes)} may store another value or draw "
                f"from {seq.qualified}: the arithmetic cannot judge it (the --seqdrift probe "
                "can)"
            )
        draws = (1, 0)
        together = sorted(by_pair[(c.table_oid, c.sequence_oid)], key=lambda x: x.attnum)
        if len(together) > 1:
            others = [x.column for x in together if x is not c]
            if all(x.plain_default for x in together) and not seq.cycle:
                draws = (len(together), together.index(c))
                note = _joined(
                    note,
                    f"each insert draws {len(together)} values from {seq.qualified} "
                    f"(columns {', '.join(x.column for x in together)}, in that order): "
                    f"{c.column} gets the {ordinal(draws[1] + 1)}",
                )
            elif unjudged is None:
                unjudged = (
                    f"each insert also draws from {seq.qualified} for {', '.join(others)}: "
                    "the arithmetic cannot judge the order (on a test database, pytest --seqdrift's probe judges it by inserting)"
                )
        siblings = tuple(x.column for x in together if x is not c)
        out.append(amended(c, unjudged=unjudged, note=note, draws=draws, siblings=siblings))
    return out


def per_insert(column: Column, seq: PgSequence) -> PgSequence:
    """The sequence as the column sees it when each insert draws ``k`` values: every
    ``k``-th value, ending where the insert's last draw would pass the limit."""
    k, j = column.draws
    if k == 1:
        return seq
    inc = seq.increment
    if inc > 0:
        return replace(seq, increment=k * inc, max_value=seq.max_value - (k - 1 - j) * inc)
    return replace(seq, increment=k * inc, min_value=seq.min_value - (k - 1 - j) * inc)


def per_insert_state(
    column: Column, seq: PgSequence, walk: PgSequence, state: SequenceState
) -> SequenceState:
    """The state of ``walk`` (``per_insert(column, seq)``) that yields the column's next
    value: the sequence's next value moved on by the draws before the column's."""
    k, j = column.draws
    if k == 1:
        return state
    next_value = drift.next_value(seq, state)
    end = walk.max_value if walk.increment > 0 else walk.min_value
    if next_value is None:
        return SequenceState(end, True)  # exhausted: the insert fails
    mine = next_value + j * seq.increment
    if not walk.min_value <= mine <= walk.max_value:
        return SequenceState(end, True)
    return SequenceState(mine, False)


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None
