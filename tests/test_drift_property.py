"""Property tests: the arithmetic of ``drift.py`` against a brute-force ``nextval`` stepper.

No database here. The stepper below reproduces PostgreSQL's ``nextval`` one call at a
time; a reference ``first_in`` answers a ``Search`` the way ``catalog.bounds_query`` does in
SQL. Everything ``drift`` computes in closed form must agree with walking the sequence.

Definitions the tests pin down (they are the engine's, checked to be consistent):

* ``inserts_until_collision`` counts the ``nextval`` calls made before the one that hands
  out the existing value. Calls whose value the column's type cannot hold are counted too:
  the INSERT fails, but the value is consumed. That only happens while the sequence has
  not yet reached the column's range (it starts short of the type's range); once the
  stream has *left* the column's range, the walk is over (see ``steps``).
* ``after_wrap`` means the sequence passed MAXVALUE (MINVALUE) *after* handing out its
  next value. When the very next call is the one that wraps, the walk simply starts at
  MINVALUE (MAXVALUE): a ``setval`` can still move it past the existing values.
* ``max_existing`` is the highest existing value in the effective range (the sequence's
  range intersected with the column type's), the lowest for a negative increment,
  whether or not the increment's grid reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pytest_seqdrift import drift, model
from pytest_seqdrift.model import Bounds, Column, PgSequence, SequenceState, Window

BIGINT_LO, BIGINT_HI = model.INT_RANGES["bigint"]

TypeRange = tuple[int, int] | None  # None: a numeric column, no integer limit
MakeColumn = Callable[[TypeRange, bool], Column]


# --- the facts of one case -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A sequence, where it stands, its column's type range and the values already there."""

    increment: int
    min_value: int
    max_value: int
    cycle: bool
    last_value: int
    is_called: bool
    type_range: TypeRange
    existing: frozenset[int]
    unique: bool = True

    @property
    def seq(self) -> PgSequence:
        return PgSequence(
            oid=1,
            schema="public",
            name="t_id_seq",
            qualified="public.t_id_seq",
            data_type="bigint",
            start=self.min_value if self.increment > 0 else self.max_value,
            increment=self.increment,
            min_value=self.min_value,
            max_value=self.max_value,
            cycle=self.cycle,
        )

    @property
    def state(self) -> SequenceState:
        return SequenceState(last_value=self.last_value, is_called=self.is_called)

    def storable(self, value: int) -> bool:
        """Can the column's type hold ``value``?"""
        return self.type_range is None or self.type_range[0] <= value <= self.type_range[1]


@pytest.fixture(scope="module")
def make_column() -> Iterator[MakeColumn]:
    """Build columns of any integer range: a test-only type name per range is added to
    ``model.INT_RANGES`` (the table ``Column.type_range`` reads), and removed afterwards."""
    with pytest.MonkeyPatch.context() as mp:

        def make(type_range: TypeRange, unique: bool) -> Column:
            if type_range is None:
                data_type = "numeric"
            else:
                named = [k for k, v in model.INT_RANGES.items() if v == type_range]
                data_type = named[0] if named else f"test_int[{type_range[0]},{type_range[1]}]"
                if not named:
                    mp.setitem(model.INT_RANGES, data_type, type_range)
            col = Column(
                table_oid=1,
                schema="public",
                table="t",
                column="id",
                qualified_table="public.t",
                data_type=data_type,
                partitioned=False,
                source="default",
                sequence_oid=1,
                plain_default=True,
                default_expr=None,
                key_columns=("id",) if unique else None,
            )
            assert col.type_range == type_range
            return col

        yield make


# --- brute force: PostgreSQL's nextval, one call at a time ------------------------------


@dataclass(frozen=True)
class Call:
    """One ``nextval``: the value, whether a wrap came before it, whether it fits the column."""

    value: int
    wrapped: bool
    storable: bool


End = Literal["exhaustion", "overflow", "cycled"]


@dataclass(frozen=True)
class Walk:
    calls: tuple[Call, ...]
    end: End


def nextval(case: Case, last: int, called: bool) -> tuple[int, bool] | None:
    """``nextval`` as sequence.c does it: (value, wrapped), or None ("reached maximum")."""
    if not called:
        return last, False
    value = last + case.increment
    if case.min_value <= value <= case.max_value:
        return value, False
    if not case.cycle:
        return None
    return (case.min_value if case.increment > 0 else case.max_value), True


def steps(case: Case) -> Generator[Call, None, End]:
    """Every ``nextval`` an inserting application would call, one at a time, from the
    case's state; returns why the walk ended.

    The walk stops when the sequence is exhausted ("reached maximum value"), at the second
    wrap (from then on a cycling sequence only repeats itself), or when the stream leaves
    the column's range: it steps past the type's far end in the walking direction, or
    wraps onto a value the type cannot hold. From there every insert fails with "out of
    range" for as long as the sequence's range extends beyond the type's -- with real
    types, some 2**63 calls. A stream that *starts* short of the column's range walks on:
    those calls fail, are consumed, and are counted like any other.
    """
    last, called = case.last_value, case.is_called
    wrapped = inside = first = False
    while True:
        step = nextval(case, last, called)
        if step is None:
            return "exhaustion"
        value, wraps_now = step
        if wraps_now and first:
            if wrapped:
                return "cycled"
            wrapped = True
        last, called, first = value, True, True
        storable = case.storable(value)
        if not storable and (inside or wrapped or not short_of_column(case, value)):
            return "overflow"
        inside = inside or storable
        yield Call(value, wrapped, storable)


def walk(case: Case) -> Walk:
    """The whole walk of ``steps``: only for cases whose ranges are small."""
    calls: list[Call] = []
    it = steps(case)
    while True:
        try:
            calls.append(next(it))
        except StopIteration as stop:
            return Walk(tuple(calls), stop.value)


def short_of_column(case: Case, value: int) -> bool:
    """Is ``value`` before the column's range, in the sequence's walking direction?"""
    if case.type_range is None:
        return False
    lo, hi = case.type_range
    return value < lo if case.increment > 0 else value > hi


def brute_collision(case: Case) -> drift.Collision | None:
    """The first existing value handed out, with the calls made before it."""
    for i, call in enumerate(steps(case)):
        if call.storable and call.value in case.existing:
            return drift.Collision(call.value, i, call.wrapped)
    return None


def brute_capacity(case: Case) -> tuple[str, int] | None:
    """(why the inserts start failing, how many values are stored before that), or None
    when they never fail (a CYCLE sequence wrapping inside the column's range)."""
    w = walk(case)
    for i, call in enumerate(w.calls):
        if not call.storable:
            return "overflow", i
    if w.end == "cycled":
        return None
    return w.end, len(w.calls)


def brute_top(case: Case) -> int | None:
    """The max existing value the sequence and the column can both hold (min, descending)."""
    reach = [v for v in case.existing if case.min_value <= v <= case.max_value and case.storable(v)]
    if not reach:
        return None
    return max(reach) if case.increment > 0 else min(reach)


# --- reference: how the database answers a Search ----------------------------------------


def first_in(window: Window | None, existing: frozenset[int]) -> int | None:
    """What ``catalog.bounds_query`` selects for one window."""
    if window is None:
        return None
    hits = [
        v for v in existing if window.lo <= v <= window.hi and (v - window.base) % window.step == 0
    ]
    if not hits:
        return None
    return min(hits) if window.ascending else max(hits)


def bounds_from_reference(plan: model.Search, existing: frozenset[int]) -> Bounds:
    return Bounds(
        first_pass=first_in(plan.first_pass, existing),
        after_wrap=first_in(plan.after_wrap, existing),
        top=first_in(plan.top, existing),
        last_on_grid=first_in(plan.last_on_grid, existing),
    )


def engine_bounds(case: Case, column: Column) -> Bounds:
    return bounds_from_reference(drift.search(column, case.seq, case.state), case.existing)


# --- strategies ----------------------------------------------------------------------

INCREMENTS = [i for i in range(-7, 8) if i != 0]


@st.composite
def small_cases(draw: st.DrawFn) -> Case:
    """Sequences within [-60, 60], columns of small (possibly odd) integer ranges."""
    lo, hi = sorted(draw(st.lists(st.integers(-60, 60), min_size=2, max_size=2, unique=True)))
    type_range = draw(
        st.one_of(
            st.none(),
            st.just(model.INT_RANGES["smallint"]),
            st.tuples(st.integers(-70, 70), st.integers(-70, 70)).map(lambda t: (min(t), max(t))),
        )
    )
    existing = draw(st.frozensets(st.integers(-70, 70), max_size=20))
    case = Case(
        increment=draw(st.sampled_from(INCREMENTS)),
        min_value=lo,
        max_value=hi,
        cycle=draw(st.booleans()),
        last_value=draw(st.integers(lo, hi)),
        is_called=draw(st.booleans()),
        type_range=type_range,
        existing=frozenset(),
        unique=draw(st.booleans()),
    )
    return replace(case, existing=frozenset(v for v in existing if case.storable(v)))


EDGES = [BIGINT_HI, BIGINT_LO, 2**31 - 1, -(2**31), 2**15 - 1, -(2**15)]


@st.composite
def edge_cases(draw: st.DrawFn) -> Case:
    """Short windows at the ends of smallint, integer and bigint, real column types."""
    edge = draw(st.sampled_from(EDGES))
    near = st.integers(-40, 40).map(lambda d: edge + d)
    lo, hi = sorted(
        draw(
            st.lists(
                near.filter(lambda v: BIGINT_LO <= v <= BIGINT_HI),
                min_size=2,
                max_size=2,
                unique=True,
            )
        )
    )
    data_type = draw(st.sampled_from(["smallint", "integer", "bigint", "numeric"]))
    type_range = model.INT_RANGES.get(data_type)
    increment = draw(st.sampled_from(INCREMENTS))
    existing = draw(st.frozensets(st.integers(-45, 45).map(lambda d: edge + d), max_size=20))
    base = Case(
        increment=increment,
        min_value=lo,
        max_value=hi,
        cycle=draw(st.booleans()),
        last_value=draw(st.integers(lo, hi)),
        is_called=draw(st.booleans()),
        type_range=type_range,
        existing=frozenset(),
        unique=draw(st.booleans()),
    )
    return replace(base, existing=frozenset(v for v in existing if base.storable(v)))


any_case = st.one_of(small_cases(), edge_cases())
FEW = settings(max_examples=600, deadline=None)

# Regressions: with an increment > 1 the step after the last storable value can jump past
# the column type's end *and* the sequence's, so what ends the walk depends on the grid.
# Here the next value after 0 is -7: nextval fails ("reached minimum value"), not the
# INSERT -- exhaustion, not overflow.
JUMPS_BOTH_ENDS = Case(
    increment=-7,
    min_value=-1,
    max_value=0,
    cycle=False,
    last_value=0,
    is_called=False,
    type_range=(0, 0),
    existing=frozenset(),
)
# 5 is stored, 12 is past MAXVALUE 10: the sequence wraps to 0 (the column holds up to 9)
# and the second insert collides with the existing 0.
WRAPS_PAST_COLUMN_END = Case(
    increment=7,
    min_value=0,
    max_value=10,
    cycle=True,
    last_value=5,
    is_called=False,
    type_range=(0, 9),
    existing=frozenset({0}),
)


# A CYCLE sequence at MAXVALUE wraps on its next call, to 1, and collides at 3. The fix
# used to be setval(GREATEST(3, last_value)) = setval(10): nothing moved.
AT_THE_WRAP = Case(
    increment=1,
    min_value=1,
    max_value=10,
    cycle=True,
    last_value=10,
    is_called=True,
    type_range=None,
    existing=frozenset({3}),
)


def forward(case: Case, value: int) -> int:
    """``value`` in the sequence's walking direction (larger = further on)."""
    return value if case.increment > 0 else -value


# --- properties ----------------------------------------------------------------------


@FEW
@given(case=any_case)
def test_next_value_is_the_first_nextval(case: Case) -> None:
    step = nextval(case, case.last_value, case.is_called)
    expected = None if step is None else step[0]
    assert drift.next_value(case.seq, case.state) == expected


@FEW
@example(case=JUMPS_BOTH_ENDS)
@example(case=WRAPS_PAST_COLUMN_END)
@given(case=any_case)
def test_first_collision_matches_brute_force(case: Case, make_column: MakeColumn) -> None:
    column = make_column(case.type_range, case.unique)
    bounds = engine_bounds(case, column)
    assert drift.first_collision(column, case.seq, case.state, bounds) == brute_collision(case)


@FEW
@example(case=JUMPS_BOTH_ENDS)
@example(case=WRAPS_PAST_COLUMN_END)
@given(case=any_case)
def test_reading_the_max_first_skips_only_empty_windows(
    case: Case, make_column: MakeColumn
) -> None:
    """check() reads each column's max first and the other windows only when
    may_collide() says they can hold a value: whenever it says no, they are empty."""
    column = make_column(case.type_range, case.unique)
    plan = drift.search(column, case.seq, case.state)
    full = bounds_from_reference(plan, case.existing)
    if not drift.may_collide(plan, full.top):
        assert (full.first_pass, full.after_wrap, full.last_on_grid) == (None, None, None)


@given(case=any_case, top=st.none() | st.integers(-(2**63), 2**63 - 1))
def test_may_collide_at_answers_as_the_plan_does(
    case: Case, top: int | None, make_column: MakeColumn
) -> None:
    column = make_column(case.type_range, case.unique)
    plan = drift.search(column, case.seq, case.state)
    for t in (top, brute_top(case)):
        expected = drift.may_collide(plan, t)
        assert drift.may_collide_at(column, case.seq, case.state, t) == expected


@given(case=any_case)
def test_capacity_matches_brute_force(case: Case, make_column: MakeColumn) -> None:
    column = make_column(case.type_range, case.unique)
    cap = drift.capacity(column, case.seq, case.state)
    expected = brute_capacity(case)
    assert 0.0 <= cap.used_fraction <= 1.0
    if expected is None:
        # wraps inside the column's range forever: values_left counts up to the wrap
        assert not cap.ends
        before_wrap = [c for c in walk(case).calls if not c.wrapped]
        assert cap.values_left == len(before_wrap)
    else:
        assert cap.ends
        assert (cap.kind, cap.values_left) == expected


@FEW
@example(case=JUMPS_BOTH_ENDS, threshold=0.8)
@example(case=WRAPS_PAST_COLUMN_END, threshold=0.8)
@given(case=any_case, threshold=st.sampled_from([0.5, 0.8, 1.0]))
def test_assess_reports_exactly_the_brute_force_collision(
    case: Case, threshold: float, make_column: MakeColumn
) -> None:
    column = make_column(case.type_range, case.unique)
    bounds = engine_bounds(case, column)
    findings, checked = drift.assess(column, case.seq, case.state, bounds, threshold=threshold)
    hit = brute_collision(case)
    collisions = [f for f in findings if f.kind == "collision"]
    nv = drift.next_value(case.seq, case.state)
    assert checked.next_value == nv
    assert checked.max_existing == brute_top(case)
    # a wrap onto existing ids is judged like capacity: a finding once the share used
    # crosses the threshold (the row count is not given here), else a note
    far_wrap = (
        hit is not None
        and hit.after_wrap
        and drift.capacity(column, case.seq, case.state).used_fraction < threshold
    )
    if hit is None or not case.unique or far_wrap:
        assert collisions == []
        assert (checked.note is not None) == (hit is not None)
        if not findings:
            duplicate = hit is not None and not case.unique
            assert checked.status == ("duplicates" if duplicate else "ok")
    else:
        (f,) = collisions
        step = nextval(case, case.last_value, case.is_called)
        assert step is not None
        assert f.next_value == step[0]
        assert (f.first_collision, f.inserts_until_collision, f.after_wrap) == (
            hit.value,
            hit.inserts_until,
            hit.after_wrap,
        )
        assert f.max_existing == brute_top(case)
        assert checked.status == "finding"
    capacity = brute_capacity(case)
    if capacity is not None and capacity[1] == 0:
        assert [(f.kind, f.values_left) for f in findings if f.kind != "collision"] == [capacity]
    if capacity is None:
        assert all(f.kind == "collision" for f in findings)


SETVAL = re.compile(
    r"SELECT setval\('public\.t_id_seq', "
    r"(?:CASE WHEN is_called AND last_value (?P<op>[<>]) (?P<edge>-?\d+) THEN (?P<then>-?\d+) ELSE )?"
    r"(?P<pick>GREATEST|LEAST)\((?P<value>-?\d+), last_value\)(?(op) END)\) "
    r'FROM "public"\."t_id_seq";'
)


def apply_fix(case: Case, fix_sql: str) -> Case | None:
    """Run the fix's ``setval`` on the case's sequence, as PostgreSQL would; None when the
    fix is only a comment. The forms: ``setval(seq, GREATEST(v, last_value))`` (LEAST for
    a negative increment), and for a CYCLE sequence the same inside ``CASE WHEN is_called
    AND last_value > edge THEN v ELSE ... END``."""
    if all(line.startswith("--") for line in fix_sql.splitlines()):
        return None
    m = SETVAL.fullmatch(fix_sql)
    assert m is not None, fix_sql
    pick, value = m["pick"], int(m["value"])
    assert pick == ("GREATEST" if case.increment > 0 else "LEAST")
    new_last = max(value, case.last_value) if pick == "GREATEST" else min(value, case.last_value)
    if m["op"] is not None:
        edge = int(m["edge"])
        beyond = case.last_value > edge if m["op"] == ">" else case.last_value < edge
        if case.is_called and beyond:
            new_last = int(m["then"])
    assert case.min_value <= new_last <= case.max_value, "setval would fail: out of bounds"
    return replace(case, last_value=new_last, is_called=True)


def setval_fixes(case: Case, *, wrapping: bool) -> bool:
    """Is there a ``setval`` ahead of the sequence after which it hands out no existing
    value and still stores values (a CYCLE sequence: never fails at all)? With
    ``wrapping`` false, targets whose next value wraps do not count."""
    for target in range(case.min_value, case.max_value + 1):
        if forward(case, target) < forward(case, case.last_value):
            continue
        step = nextval(case, target, True)
        if step is not None and step[1] and not wrapping:
            continue
        moved = replace(case, last_value=target, is_called=True)
        if brute_collision(moved) is not None:
            continue
        capacity = brute_capacity(moved)
        if capacity is None or (not case.cycle and capacity[1] > 0):
            return True
    return False


@FEW
@example(case=AT_THE_WRAP)
@example(case=replace(AT_THE_WRAP, increment=-1, min_value=-10, max_value=-1, last_value=-10))
@given(case=any_case)
def test_fix_moves_the_sequence_past_every_first_pass_collision(
    case: Case, make_column: MakeColumn
) -> None:
    column = make_column(case.type_range, True)
    case = replace(case, unique=True)
    bounds = engine_bounds(case, column)
    findings, _ = drift.assess(column, case.seq, case.state, bounds)
    collisions = [f for f in findings if f.kind == "collision"]
    if not collisions:
        return
    (f,) = collisions
    fixed = apply_fix(case, f.fix_sql)
    small = case.max_value - case.min_value <= 130
    if f.after_wrap:
        # a CYCLE sequence comes back to the existing value whatever setval does
        assert fixed is None
        if small:
            assert not setval_fixes(case, wrapping=True)
        return
    if fixed is None:
        # "no value is left beyond the existing max": nothing past it is storable
        top = f.max_existing
        assert top is not None
        after = top + case.increment
        assert not (case.min_value <= after <= case.max_value and case.storable(after))
        if small and abs(case.increment) == 1:
            # (with a larger increment, see test_fix_for_the_last_values_of_a_grid)
            assert not setval_fixes(case, wrapping=False)
        return
    fix = SETVAL.fullmatch(f.fix_sql)
    assert fix is not None
    # past the max; or, where nothing is left past it, past the last value on the grid
    assert f.max_existing == brute_top(case)
    assert int(fix["value"]) in (f.max_existing, bounds.last_on_grid)
    hit = brute_collision(fixed)
    assert hit is None or hit.after_wrap
    # ... and never moves the sequence back: not now, nor when run after more inserts
    later = case
    for call in islice(steps(case), 25):
        if call.wrapped:
            break
        old = drift.next_value(later.seq, later.state)
        moved = apply_fix(later, f.fix_sql)
        assert moved is not None
        new = drift.next_value(moved.seq, moved.state)
        if old is not None:
            assert new is not None
            assert forward(case, new) >= forward(case, old)
        later = replace(case, last_value=call.value, is_called=True)


# --- the seed story, by hand ---------------------------------------------------------


def serial(last_value: int, is_called: bool, existing: set[int], increment: int = 1) -> Case:
    return Case(
        increment=increment,
        min_value=1,
        max_value=2**31 - 1,
        cycle=False,
        last_value=last_value,
        is_called=is_called,
        type_range=model.INT_RANGES["integer"],
        existing=frozenset(existing),
    )


SEED = {7, 9, 12, 14, 16}


def test_seed_story_collides_at_7_after_6_inserts(make_column: MakeColumn) -> None:
    case = serial(1, False, SEED)
    column = make_column(case.type_range, True)
    bounds = engine_bounds(case, column)
    findings, _ = drift.assess(column, case.seq, case.state, bounds)
    (f,) = findings
    assert (f.kind, f.next_value, f.first_collision, f.inserts_until_collision) == (
        "collision",
        1,
        7,
        6,
    )
    assert f.max_existing == 16
    assert f.fix_sql == (
        'SELECT setval(\'public.t_id_seq\', GREATEST(16, last_value)) FROM "public"."t_id_seq";'
    )
    assert brute_collision(case) == drift.Collision(7, 6, False)


def test_seed_story_fixed_at_16_is_clean(make_column: MakeColumn) -> None:
    case = serial(16, True, SEED)
    column = make_column(case.type_range, True)
    findings, checked = drift.assess(column, case.seq, case.state, engine_bounds(case, column))
    assert findings == []
    assert (checked.status, checked.next_value, checked.max_existing) == ("ok", 17, 16)


def test_increment_2_never_reaches_an_even_id(make_column: MakeColumn) -> None:
    case = serial(1, False, {8}, increment=2)
    column = make_column(case.type_range, True)
    findings, checked = drift.assess(column, case.seq, case.state, engine_bounds(case, column))
    assert findings == []
    assert checked.status == "ok"
    assert all(call.value != 8 for call in islice(steps(case), 100))


def test_increment_2_collides_at_9_after_4_inserts(make_column: MakeColumn) -> None:
    case = serial(1, False, {9}, increment=2)
    column = make_column(case.type_range, True)
    findings, _ = drift.assess(column, case.seq, case.state, engine_bounds(case, column))
    (f,) = findings
    assert (f.first_collision, f.inserts_until_collision) == (9, 4)
    assert brute_collision(case) == drift.Collision(9, 4, False)


def test_fix_for_the_last_values_of_a_grid(make_column: MakeColumn) -> None:
    """INCREMENT 10 MAXVALUE 100 hands out 1, 11, ..., 91: it collides at 51. Nothing is
    left past the existing 95, yet ``setval(51)`` leaves 61..91 free of collisions."""
    case = Case(
        increment=10,
        min_value=1,
        max_value=100,
        cycle=False,
        last_value=1,
        is_called=False,
        type_range=model.INT_RANGES["integer"],
        existing=frozenset({51, 95}),
    )
    assert setval_fixes(case, wrapping=False)
    column = make_column(case.type_range, True)
    findings, _ = drift.assess(column, case.seq, case.state, engine_bounds(case, column))
    (f,) = [f for f in findings if f.kind == "collision"]
    fixed = apply_fix(case, f.fix_sql)
    assert fixed is not None
    assert brute_collision(fixed) is None
