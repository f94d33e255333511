"""The reads after discovery, and the PL/pgSQL block that runs them all at once."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import sql

from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import Bounds, Column, Search, SequenceState, Window

# --- the reads ------------------------------------------------------------------------
#
# After discovery, every read is one of two kinds: a sequence's state, or a column's
# windows (up to four min/max searches, see model.Search). All the reads of a check run on
# the server in one PL/pgSQL block (READ_BLOCK), the way the floor of the benchmarks
# does them: one EXECUTE per read (reads a connection was given before are answered by
# a statement prepared for them instead: read/prepared.py). A DO block needs no object
# of its own, so it runs inside a READ ONLY transaction and on a replica. It takes no parameters and returns no
# rows, so its reads go in and its answers come out through two transaction-local
# settings (set_config(..., true)), which the check's own rollback clears.
#
# The reads are whole statements, written here: every name double-quoted with its
# quotes doubled (what quote_ident and psycopg's Identifier do), every number an integer
# formatted by Python. The same texts serve as statements of their own when the block
# cannot run (PL/pgSQL not available to the role, statement_timeout hit).
#
# The block reads up to CHUNK reads in a subtransaction that it then rolls back on
# purpose, which releases the locks they took: a transaction keeps its locks until it
# ends, and PostgreSQL's lock table is shared and finite (reading thousands of tables in
# one transaction fails with "out of shared memory"). PL/pgSQL variables, which hold
# the answers, are not rolled back. A read that fails (a lock timeout, a privilege) ends
# its subtransaction with the error, which becomes that read's answer; the next
# subtransaction starts at the read after it.
#
# A run of sequence states, where every sequence is one the role may SELECT from, is
# read first with pg_sequence_last_value(), one call for the whole run, which costs a
# tenth of a query per sequence; its NULLs (a sequence not yet called) and a run whose
# call failed are read again by their own queries. That function's lock on a sequence
# lasts until the end of the transaction (sequence.c keeps it in the top transaction's
# resource owner), which no subtransaction can release, so only the first
# LAST_VALUE_MAX sequences of a block are read that way, and no more than a sixth of the
# locks the server's lock table is sized for: the rest of a large database's sequences
# go through their queries and release their locks with their chunk. Only in a
# transaction of the check's own, which ends with the check: inside the caller's
# transaction those locks would outlive the check.
# The states are read where the run stands among the reads, after the maxima before it.

SET_WORK = (
    "SELECT set_config('seqdrift.reads', %s, true), set_config('seqdrift.chunk', %s, true), "
    "set_config('seqdrift.seqs', %s, true)"
)
# sequences read by pg_sequence_last_value() in one block at most (their locks stay)
LAST_VALUE_MAX = 1000
GET_RESULT = "SELECT current_setting('seqdrift.answers')"

READ_BLOCK = r"""
DO $seqdrift$
DECLARE
    reads text[] := current_setting('seqdrift.reads')::text[];
    chunk int := current_setting('seqdrift.chunk')::int;
    -- per read, the sequence whose state it reads, where pg_sequence_last_value may
    seqs oid[] := current_setting('seqdrift.seqs')::oid[];
    total int := coalesce(array_length(reads, 1), 0);
    answers text[] := '{}';
    ahead text[];  -- the last values of the run of states from ahead_at to ahead_to
    ahead_at int := 0;
    ahead_to int := 0;
    -- locks this block may keep: a sixth of what the lock table is sized for
    budget int := current_setting('max_locks_per_transaction')::int
                  * current_setting('max_connections')::int / 6;
    a text; b text; c text; d text;
    pos int := 1;
    stop int;
    at int;
BEGIN
    WHILE pos <= total LOOP
        stop := least(total, pos + chunk - 1);
        BEGIN
            FOR i IN pos .. stop LOOP
                at := i;
                IF seqs[i] IS NOT NULL AND (i <= ahead_to OR budget > 0) THEN
                    IF i > ahead_to THEN
                        ahead_at := i;
                        ahead_to := i;
                        WHILE ahead_to < total AND seqs[ahead_to + 1] IS NOT NULL
                              AND ahead_to - ahead_at + 1 < budget LOOP
                            ahead_to := ahead_to + 1;
                        END LOOP;
                        budget := budget - (ahead_to - ahead_at + 1);
                        BEGIN
                            SELECT array_agg(CASE WHEN has_sequence_privilege(s, 'SELECT')
                                             THEN pg_sequence_last_value(s)::text END
                                             ORDER BY n)
                            INTO ahead
                            FROM unnest(seqs[ahead_at:ahead_to]) WITH ORDINALITY AS u (s, n);
                        EXCEPTION WHEN OTHERS THEN
                            ahead := '{}';  -- each one by its query, which tells why
                        END;
                    END IF;
                    a := ahead[i - ahead_at + 1];
                    IF a IS NOT NULL THEN
                        answers := answers || concat(i - 1, E'\t', a, E'\ttrue\t\t');
                        CONTINUE;
                    END IF;
                END IF;
                EXECUTE reads[i] INTO a, b, c, d;
                answers := answers || concat_ws(E'\t', i - 1, coalesce(a, ''), coalesce(b, ''),
                                                coalesce(c, ''), coalesce(d, ''));
            END LOOP;
            RAISE SQLSTATE 'SDREL';  -- roll the chunk back: its locks go
        EXCEPTION
            WHEN SQLSTATE 'SDREL' THEN NULL;
            WHEN OTHERS THEN
                answers := answers || concat(at - 1, E'\t!', SQLSTATE, ' ',
                                             regexp_replace(SQLERRM, '\s+', ' ', 'g'));
        END;
        pos := at + 1;
    END LOOP;
    PERFORM set_config('seqdrift.answers', array_to_string(answers, E'\n'), true);
END
$seqdrift$
"""


@dataclass(frozen=True)
class Extreme:
    """The column's max (min, for an ascending window) over all its rows, read in place
    of ``window``: one index probe, no range for the planner to estimate. It answers the
    window whenever it falls inside it (see api._top_from)."""

    window: Window

    @property
    def ascending(self) -> bool:
        return self.window.ascending


Slot = Window | Extreme | None


class SequenceRef(Protocol):
    """What reading a sequence's state needs: a ``model.PgSequence`` or a
    ``snapshot.SequenceKey``."""

    @property
    def oid(self) -> int: ...
    @property
    def schema(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class StateRead:
    """A sequence's ``last_value`` and ``is_called``."""

    seq: SequenceRef


@dataclass(frozen=True)
class ColumnRead:
    """Up to four searches in one column, answered in their order."""

    column: Column
    slots: tuple[Slot, ...]


@dataclass(frozen=True)
class TextRead:
    """A statement of its own that answers with up to four texts (keys.py's reads of
    predicates and expressions)."""

    text: str


Read = StateRead | ColumnRead | TextRead
# A read's answer: four texts (None for SQL NULL).
Answer = tuple[str | None, ...]


def search_slots(search: Search) -> tuple[Slot, ...]:
    return (search.first_pass, search.after_wrap, search.top, search.last_on_grid)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _int8(value: int) -> str:
    # quoted: -9223372036854775808 unquoted would be a numeric, and miss the index
    return f"'{int(value)}'::int8"


def read_text(read: Read) -> str:
    """The statement that answers one read with four texts."""
    if isinstance(read, TextRead):
        return read.text
    if isinstance(read, StateRead):
        return (
            f"SELECT last_value::text, is_called::text, NULL, NULL FROM {sequence_name(read.seq)}"
        )
    slots = read.slots
    if sum(s is not None for s in slots) == 1 and isinstance(slots[2], Extreme):
        # the first read of a column: its max (min), without a subquery
        c = read.column
        agg = "min" if slots[2].ascending else "max"
        only = f" WHERE ({c.row_filter})" if c.row_filter else ""
        return f"SELECT NULL, NULL, {agg}({_ident(c.column)})::text, NULL FROM {_table(c)}{only}"
    return "SELECT " + ", ".join(column_parts(read))


def sequence_name(seq: SequenceRef) -> str:
    return f"{_ident(seq.schema)}.{_ident(seq.name)}"


def _table(c: Column) -> str:
    return ("" if c.partitioned else "ONLY ") + f"{_ident(c.schema)}.{_ident(c.table)}"


def column_parts(read: ColumnRead) -> list[str]:
    """A column read's four answers, each an expression of type text (``NULL`` where
    the read has no search)."""
    c = read.column
    col = _ident(c.column)
    rel = _table(c)
    # only the rows the column's keys can collide with (keys.py)
    only = f" WHERE ({c.row_filter})" if c.row_filter else ""
    also = f" AND ({c.row_filter})" if c.row_filter else ""
    parts = []
    for w in read.slots:
        if w is None:
            parts.append("NULL")
            continue
        agg = "min" if w.ascending else "max"
        if isinstance(w, Extreme):
            parts.append(f"(SELECT {agg}({col}) FROM {rel}{only})::text")
            continue
        where = f"{col} BETWEEN {_int8(w.lo)} AND {_int8(w.hi)}{also}"
        if w.step != 1:
            # numeric, so that the difference cannot overflow bigint
            where += (
                f" AND mod({col}::numeric - '{int(w.base)}'::numeric, '{int(w.step)}'::numeric) = 0"
            )
        elif c.type_range is None:
            # a numeric column can hold fractions, which no sequence hands out
            where += f" AND {col} = trunc({col})"
        parts.append(f"(SELECT {agg}({col}) FROM {rel} WHERE {where})::text")
    return parts


def read_statement(read: Read) -> tuple[str, tuple[()]]:
    """One read as a statement of its own (no parameters: it names the table)."""
    return read_text(read), ()


def work_params(reads: Seq[Read], chunk: int, *, last_values: bool = False) -> list[Any]:
    """SET_WORK's parameters: the reads as the text of an array literal (the block casts
    it to text[]), built here rather than by the driver's array adapter, which costs
    more than the reads' own formatting. ``last_values``: the block may read sequence
    states with pg_sequence_last_value() (only in a transaction of the check's own)."""
    quoted = ('"' + read_text(r).replace("\\", "\\\\").replace('"', '\\"') + '"' for r in reads)
    ahead = 0
    seqs = []
    for r in reads:
        fast = last_values and isinstance(r, StateRead) and ahead < LAST_VALUE_MAX
        ahead += fast
        seqs.append(str(int(r.seq.oid)) if fast else "NULL")  # type: ignore[union-attr]
    return ["{" + ",".join(quoted) + "}", str(int(chunk)), "{" + ",".join(seqs) + "}"]


def parse_result(text: str | None, count: int) -> list[Answer | ReadFailure | None]:
    """The read block's answers, in the order of the reads: four texts, or the failure
    the block caught; None for a read the answer does not cover (the caller reads it
    again on its own). A text that is not the block's answer at all raises
    ``CannotCheck``."""
    answers: list[Answer | ReadFailure | None] = [None] * count
    for line in (text or "").split("\n"):
        if not line:
            continue
        index, tab, rest = line.partition("\t")
        if not (tab and index.isdigit() and int(index) < count):
            raise CannotCheck(f"the read block answered what no read asked: {line[:60]!r}")
        if rest.startswith("!"):
            state, _, message = rest[1:].partition(" ")
            answers[int(index)] = ReadFailure(message, state)
        else:
            answers[int(index)] = tuple(v or None for v in rest.split("\t"))
    return answers


def as_state(answer: Answer) -> SequenceState:
    last_value, is_called = answer[0], answer[1]
    if last_value is None:  # a sequence always has a last_value
        raise CannotCheck(f"a sequence answered without its last_value: {answer!r}")
    return SequenceState(int(last_value), is_called == "true")


def as_int(value: str | None) -> int | None:
    """A column value read as text; a numeric column's may read 12.00."""
    return None if value is None else int(value.split(".")[0])


def as_bounds(answer: Answer) -> Bounds:
    first_pass, after_wrap, top, last_on_grid = (as_int(v) for v in answer)
    return Bounds(first_pass, after_wrap, top, last_on_grid)


def relation(column: Column) -> sql.Composed:
    """The table to read: a partitioned parent with its partitions, any other table
    without its inheritance children (its unique indexes cover only its own rows)."""
    only = sql.SQL("") if column.partitioned else sql.SQL("ONLY ")
    return sql.SQL("{}{}").format(only, sql.Identifier(column.schema, column.table))


def row_count_query(column: Column, limit: int) -> tuple[sql.Composed, list[int]]:
    """Count rows, but never more than ``limit``: cheap however large the table."""
    return (
        sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) AS capped").format(
            relation(column), sql.Literal(int(limit))
        ),
        [],
    )
