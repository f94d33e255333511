"""Exact sequence arithmetic: pure functions of facts read from PostgreSQL, no I/O.

Everything is computed in *forward* coordinates, where the sequence always walks
upwards: a value ``v`` of a sequence with a negative increment is handled as ``-v``.
That way one set of formulas serves both directions, and ``_Walk.flip()`` (its own
inverse: actual to forward and back) is the only place that knows about signs.

The walk of ``nextval`` that these functions describe:

* the next value is ``last_value`` when ``is_called`` is false, otherwise
  ``last_value + increment``;
* past MAXVALUE (MINVALUE for a negative increment) a CYCLE sequence restarts at
  MINVALUE (MAXVALUE), any other sequence fails with "reached maximum value";
* a value the column's type cannot hold fails the INSERT with "out of range".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from pytest_seqdrift import fixsql
from pytest_seqdrift.model import (
    Bounds,
    Checked,
    Column,
    Finding,
    FindingKind,
    PgSequence,
    Search,
    SequenceState,
    Status,
    Window,
)
from pytest_seqdrift.options import DEFAULT_THRESHOLD

# Counting rows is only worth it where few values are left: beyond this many, the
# "values left < rows" rule is left to the used-fraction threshold.
ROW_COUNT_LIMIT = 1_000_000


def next_value(seq: PgSequence, state: SequenceState) -> int | None:
    """The value the next ``nextval`` returns, or None when it would fail (exhausted)."""
    if not state.is_called:
        return state.last_value
    candidate = state.last_value + seq.increment
    if seq.min_value <= candidate <= seq.max_value:
        return candidate
    if seq.cycle:
        return seq.min_value if seq.increment > 0 else seq.max_value
    return None


def forward(seq: PgSequence, value: int) -> int:
    """``value`` in the order the sequence walks: bigger is further on."""
    return value if seq.increment > 0 else -value


class _Walk:
    """The walk of a sequence's values into its column, in forward coordinates. Built
    once per distinct shape (see ``_walk``): a check judges thousands of columns of a
    handful of shapes."""

    __slots__ = ("sign", "step", "lo", "hi", "type_lo", "type_hi", "cycle", "cap", "floor", "top")

    def __init__(
        self,
        sign: int,  # +1 or -1: actual = sign * forward
        step: int,  # abs(increment), > 0
        lo: int,  # the sequence's range, forward
        hi: int,
        type_lo: int | None,  # the column type's range, forward; None: unbounded
        type_hi: int | None,
        cycle: bool,
    ) -> None:
        self.sign, self.step, self.lo, self.hi, self.cycle = sign, step, lo, hi, cycle
        self.type_lo, self.type_hi = type_lo, type_hi
        # the last forward value the column can store before the walk ends or wraps
        self.cap = hi if type_hi is None else min(hi, type_hi)
        # the first forward value that both the sequence and the column allow
        self.floor = lo if type_lo is None else max(lo, type_lo)
        # every storable value, searched from the far end: finds the max existing value
        # (the min, for a negative increment)
        self.top: Window | None = None
        if self.floor <= self.cap:
            a, b = sorted((self.flip(self.floor), self.flip(self.cap)))
            self.top = Window(lo=a, hi=b, base=0, step=1, ascending=sign < 0)

    def reaches_limit(self, start: int) -> bool:
        """Does the walk from ``start`` run into the sequence's own limit (MAXVALUE), rather
        than out of the column's range? Only values on the walk's grid count: the step
        after the last storable value may jump past both ends at once."""
        if start > self.cap:
            return False
        beyond = start + ((self.cap - start) // self.step + 1) * self.step
        return beyond > self.hi

    @property
    def wrap_storable(self) -> bool:
        """Values after a wrap start at ``lo``: can the column store that?"""
        return self.type_lo is None or self.lo >= self.type_lo

    def flip(self, value: int) -> int:
        """An actual value in forward coordinates, or a forward one as actual."""
        return self.sign * value

    def window(self, lo: int, hi: int, base: int) -> Window | None:
        """The actual-value window for forward [lo, hi], searched from its start, keeping
        only the values the walk from ``base`` reaches."""
        if lo > hi:
            return None
        a, b = sorted((self.flip(lo), self.flip(hi)))
        return Window(lo=a, hi=b, base=self.flip(base), step=self.step, ascending=self.sign > 0)


def _walk(column: Column, seq: PgSequence) -> _Walk:
    return _shaped(column.type_range, seq.increment, seq.min_value, seq.max_value, seq.cycle)


@functools.lru_cache(maxsize=4096)
def _shaped(
    type_range: tuple[int, int] | None, increment: int, min_value: int, max_value: int, cycle: bool
) -> _Walk:
    sign = 1 if increment > 0 else -1
    lo, hi = sorted((sign * min_value, sign * max_value))
    if type_range is None:
        type_lo = type_hi = None
    else:
        type_lo, type_hi = sorted((sign * type_range[0], sign * type_range[1]))
    return _Walk(sign, abs(increment), lo, hi, type_lo, type_hi, cycle)


def search(column: Column, seq: PgSequence, state: SequenceState) -> Search:
    """What to read from the column, given where its sequence stands."""
    s = _walk(column, seq)
    nv = next_value(seq, state)
    top = s.top
    if nv is None:
        return Search(first_pass=None, after_wrap=None, top=top)
    n = s.flip(nv)
    lo = n if s.type_lo is None else max(n, s.type_lo)
    first_pass = s.window(lo, s.cap, n)
    last_on_grid = None
    if first_pass is not None and s.step > 1:
        last_on_grid = replace(first_pass, ascending=not first_pass.ascending)
    wraps = s.cycle and s.reaches_limit(n) and s.wrap_storable
    after_wrap = s.window(s.floor, s.cap, s.lo) if wraps else None
    return Search(first_pass=first_pass, after_wrap=after_wrap, top=top, last_on_grid=last_on_grid)


def top_window(column: Column, seq: PgSequence) -> Window | None:
    """The search's ``top``, which does not depend on the sequence's state: every storable
    value, searched from the far end."""
    return _walk(column, seq).top


def may_collide(search: Search, top: int | None) -> bool:
    """Given the max (min) existing value, can any window of the search hold a value?
    When not, the search's other windows need not be read: they are empty."""
    if top is None:
        return False  # nothing storable exists at all
    if search.after_wrap is not None:
        return True  # a cycling walk comes back to the low values
    w = search.first_pass
    if w is None:
        return False
    return top >= w.lo if w.ascending else top <= w.hi


def may_collide_at(column: Column, seq: PgSequence, state: SequenceState, top: int | None) -> bool:
    """``may_collide(search(column, seq, state), top)`` without building the search: check()
    asks it of every column, and almost every answer is no."""
    nv = next_value(seq, state)
    if top is None or nv is None:
        return False
    s = _walk(column, seq)
    n = s.flip(nv)
    if s.cycle and s.reaches_limit(n) and s.wrap_storable:
        return True
    lo = n if s.type_lo is None else max(n, s.type_lo)
    return lo <= s.cap and s.flip(top) >= lo


@dataclass(frozen=True)
class Collision:
    value: int
    inserts_until: int  # nextval calls that succeed before the one that collides
    after_wrap: bool


def first_collision(
    column: Column, seq: PgSequence, state: SequenceState, bounds: Bounds
) -> Collision | None:
    """The first existing value the sequence will hand out, from the search's answers."""
    nv = next_value(seq, state)
    if nv is None:
        return None
    s = _walk(column, seq)
    n = s.flip(nv)
    if bounds.first_pass is not None:
        v = s.flip(bounds.first_pass)
        return Collision(bounds.first_pass, (v - n) // s.step, after_wrap=False)
    if bounds.after_wrap is not None:
        before_wrap = (s.cap - n) // s.step + 1 if n <= s.cap else 0
        v = s.flip(bounds.after_wrap)
        return Collision(bounds.after_wrap, before_wrap + (v - s.lo) // s.step, after_wrap=True)
    return None


@dataclass(frozen=True)
class Capacity:
    kind: FindingKind  # overflow (the column's type ends it) or exhaustion (the sequence's)
    values_left: int  # nextval calls whose value can still be stored
    used_fraction: float
    ends: bool  # False: a CYCLE sequence that wraps inside the column's range


def capacity(column: Column, seq: PgSequence, state: SequenceState) -> Capacity:
    """How much of the effective range (sequence ∩ column type) is left."""
    return _capacity(_walk(column, seq), next_value(seq, state))


@functools.lru_cache(maxsize=65536)  # asked twice per column by check()
def _capacity(s: _Walk, nv: int | None) -> Capacity:
    if nv is None:
        return Capacity("exhaustion", 0, 1.0, ends=True)
    n = s.flip(nv)
    if n > s.cap or (s.type_lo is not None and n < s.type_lo):
        # the very next value cannot be stored: out of the column's range
        return Capacity("overflow", 0, 1.0, ends=True)
    left = (s.cap - n) // s.step + 1
    used = (n - s.floor) // s.step
    kind: FindingKind = "exhaustion"
    ends = True
    if not s.reaches_limit(n) or (s.cycle and not s.wrap_storable):
        kind = "overflow"  # the column's type ends the walk, or the wrap's value
    elif s.cycle and s.reaches_limit(s.lo):
        ends = False  # wraps inside the column's range, for ever
    elif s.cycle:
        # wraps once, then the walk from the wrap value, on its own grid, leaves the column
        kind = "overflow"
        left += (s.cap - s.lo) // s.step + 1
    return Capacity(kind, left, used / (used + left), ends=ends)


def row_count_wanted(
    column: Column,
    seq: PgSequence,
    state: SequenceState,
    threshold: float,
    bounds: Bounds | None = None,
) -> int | None:
    """When the verdict hangs on how many rows the table holds, return the number of
    rows worth counting up to (values left + 1); None when the count cannot matter.
    A CYCLE sequence that wraps onto existing ids is judged like capacity (``assess``):
    its count matters too."""
    cap = capacity(column, seq, state)
    wraps_onto_rows = (
        bounds is not None
        and column.unique
        and (hit := first_collision(column, seq, state, bounds)) is not None
        and hit.after_wrap
    )
    if cap.values_left == 0 or cap.used_fraction >= threshold:
        return None
    if not cap.ends and not wraps_onto_rows:
        return None
    if cap.values_left > ROW_COUNT_LIMIT:
        return None
    return cap.values_left + 1


def assess(
    column: Column,
    seq: PgSequence,
    state: SequenceState,
    bounds: Bounds,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    rows: int | None = None,
) -> tuple[list[Finding], Checked]:
    """The findings for one column, and its verdict for the "checked" list."""
    nv = next_value(seq, state)
    findings: list[Finding] = []
    note: str | None = None
    duplicates = False
    hit = first_collision(column, seq, state, bounds)
    cap = capacity(column, seq, state)
    if hit is not None and column.unique and hit.after_wrap:
        # a wrap a million inserts away is a capacity matter: judged like exhaustion
        crowded = rows is not None and cap.values_left < rows
        if not (cap.used_fraction >= threshold or crowded):
            note = (
                f"CYCLE: after {cap.values_left:,} more values {seq.qualified} wraps and "
                f"hands out {hit.value}, which the column already holds "
                f"({cap.used_fraction:.1%} used; a finding from {threshold:.0%} on)"
            )
            hit = None
    if hit is not None and column.unique:
        findings.append(
            Finding(
                kind="collision",
                column=column,
                sequence=seq,
                next_value=nv,
                first_collision=hit.value,
                inserts_until_collision=hit.inserts_until,
                max_existing=bounds.top,
                after_wrap=hit.after_wrap,
                fix_sql=fixsql.for_collision(column, seq, state, bounds, after_wrap=hit.after_wrap),
                note=_key_note(column),
            )
        )
    elif hit is not None and not column.unique:
        duplicates = True
        note = (
            f"no unique index: after {hit.inserts_until} inserts the sequence hands out "
            f"{hit.value}, which the column already holds (a duplicate, not an error)"
        )
    crowded = rows is not None and cap.values_left < rows
    if cap.ends and (cap.values_left == 0 or cap.used_fraction >= threshold or crowded):
        findings.append(
            Finding(
                kind=cap.kind,
                column=column,
                sequence=seq,
                next_value=nv,
                max_existing=bounds.top,
                values_left=cap.values_left,
                used_fraction=cap.used_fraction,
                fix_sql=fixsql.for_capacity(column, seq, cap.kind),
            )
        )
    status: Status = "finding" if findings else ("duplicates" if duplicates else "ok")
    checked = Checked(column, seq, status, next_value=nv, max_existing=bounds.top, note=note)
    return findings, checked


def _key_note(column: Column) -> str | None:
    """What a collision's numbers assume of the row inserted: the keys that count only
    some rows, and the draws of one insert."""
    notes = []
    for key in column.keys if column.row_filter else ():  # (a full key counts every row)
        if key.predicate:
            notes.append(
                f"{key.kind} {key.name} is partial (WHERE {key.predicate}): only rows it "
                "admits count, and a new row collides if it satisfies the predicate too"
            )
    partitions = sorted({k.relation for k in column.keys if k.relation is not None})
    if partitions and column.partitioned:
        owned = ", ".join(partitions)
        notes.append(f"the keys are the partitions' own ({owned}): an insert fails there")
    if column.note:
        notes.append(column.note)
    return "; ".join(notes) or None
