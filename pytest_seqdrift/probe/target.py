"""One column's probe: what it works towards (``_Target``), what a pass saw (``_Run``),
why it stops short (the exceptions), and the arithmetic's verdict it starts from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import sql

from pytest_seqdrift.model import Checked, Column, Finding, PgSequence, Report

_FIRST_BATCH = 16  # the first batch where the distance is not known; each next one doubles


class _NotProbed(Exception):
    """The column cannot be probed at all: the note says why."""


class _CannotCopy(Exception):
    """The table cannot be probed by copying its rows: the column falls back to the
    default probe, and the note says why."""


class _Unreproducible(_CannotCopy):
    """A multi-row INSERT collided, and its replay in smaller INSERTs does not: the
    column is probed again one row per INSERT."""


@dataclass(frozen=True)
class _Target:
    """What one column's probe works towards: past ``top``, within ``limit`` values."""

    column: Column
    sequence: PgSequence
    top: int  # the highest existing value (the lowest, for a negative increment)
    distance: int | None  # plain defaults: values it takes to pass ``top``; else unknown
    limit: int
    at_least_one: bool = False  # insert at least once, even with nothing left to pass
    first: int | None = None  # the default's first value

    def passes(self, value: Any) -> bool:
        number = _as_int(value)
        if number is None:
            return False
        return number > self.top if self.sequence.increment > 0 else number < self.top

    def batches(self, done: int = 0) -> list[int]:
        """One batch of exactly the distance when it is known; else growing batches,
        ``done`` values drawn already."""
        if self.distance is not None:
            n = max(self.distance, 1 if self.at_least_one else 0)
            return [min(n, self.limit)] if n > 0 else []
        sizes, size = [], _FIRST_BATCH
        while done < self.limit:
            sizes.append(min(size, self.limit - done))
            done += sizes[-1]
            size *= 2
        return sizes

    def passed_after(self, drawn: int) -> bool:
        return self.distance is not None and drawn >= self.distance


_INTEGER = re.compile(r"[-+]?[0-9]+")


def _as_int(value: Any) -> int | None:
    """A value of the column as an integer: None where it is not one (NULL, a text that
    is no integer)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _numeric(column: Column) -> bool:
    """The column holds numbers (else text, or a type the catalog does not resolve, such
    as a domain over a domain: its values are compared as text)."""
    return column.type_range is not None or column.data_type == "numeric"


def _counted(column: Column, joiner: str = "WHERE") -> sql.Composable:
    """`` WHERE (...)``: only the rows the column's keys can collide with (keys.py: a
    partial key's predicate, NOT NULL for the rest of a key, the partitions with a key
    of their own); nothing where every row counts."""
    if not column.row_filter:
        return sql.SQL("")
    return sql.SQL(" {} ({})").format(sql.SQL(joiner), sql.SQL(column.row_filter))


@dataclass(frozen=True)
class _Run:
    """What one pass of the probe over a column saw."""

    until: int | None  # inserts that went in before the one that collided; None: no collision
    value: int | None  # the colliding value, where known
    drawn: int  # values drawn from the default (inserts made or tried)
    passed: bool  # False: stopped at the limit before passing the highest existing value
    first: int | None = None  # the value the first insert stored (or tried to store)
    stored: tuple[int | None, ...] = ()  # the first few values the inserts stored
    one_row: bool = False  # one row per INSERT statement


def _decided(first: int | None, target: _Target) -> bool:
    """The first insert stored (``first``) another value than the default's: something
    else decides what an insert stores."""
    return first is not None and target.first is not None and first != target.first


# -- the arithmetic's verdict, as the probe starts from it ------------------------------


def _judged(verdict: Checked) -> bool:
    """The arithmetic judged the column: a plain default (the value is the sequence's
    next value) of a type it compares, so that the verdict's next value and max are
    facts. A plain default it did not judge (a text column, a domain over a domain:
    ``unchecked``, with no max) is probed like an expression."""
    return verdict.column.plain_default and verdict.status != "unchecked"


def _distance(verdict: Checked, seq: PgSequence) -> int | None:
    """For a plain default: how many values it takes to pass the highest existing one."""
    if not _judged(verdict) or verdict.max_existing is None:
        return None
    if verdict.next_value is None:
        return 0
    return max(0, (verdict.max_existing - verdict.next_value) // seq.increment + 1)


def _finding_for(report: Report, verdict: Checked) -> Finding | None:
    for f in report.findings:
        if f.kind == "collision" and f.column == verdict.column:
            return f
    return None
