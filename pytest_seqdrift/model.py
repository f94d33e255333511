"""Frozen facts read from PostgreSQL, and the findings computed from them."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

FindingKind = Literal["collision", "overflow", "exhaustion"]
Status = Literal["ok", "finding", "duplicates", "unchecked"]

INT_RANGES: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}


def printable(text: str) -> str:
    """``text`` on one line, without control characters: a name may hold a line break or
    an escape sequence (PostgreSQL allows both in quoted identifiers), and neither may
    break a table's layout, reach the terminal, or end an SQL comment."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class PgSequence:
    """A sequence's identity and parameters (pg_sequence)."""

    oid: int
    schema: str
    name: str
    qualified: str  # schema.name, each part quoted only where PostgreSQL needs it
    data_type: str  # smallint | integer | bigint
    start: int
    increment: int
    min_value: int
    max_value: int
    cycle: bool


@dataclass(frozen=True)
class SequenceState:
    """What `SELECT last_value, is_called FROM seq` says."""

    last_value: int
    is_called: bool


def amended(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for a frozen dataclass whose fields need no checking,
    at a tenth of its cost: discovery amends every column of a database twice."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True)
class Key:
    """A unique or exclusion key that PostgreSQL enforces when a row is inserted."""

    name: str  # the constraint's name, or the unique index's
    columns: tuple[str, ...]  # as written: names, or the expression
    kind: Literal["primary key", "unique", "unique index", "exclusion"]
    relation: str | None = None  # the partition's name, for a partition's own key
    deferrable: bool = False
    predicate: str | None = None  # a partial key's WHERE


@dataclass(frozen=True)
class Column:
    """A column whose values are drawn from a sequence."""

    table_oid: int
    schema: str
    table: str
    column: str
    qualified_table: str
    data_type: str  # smallint | integer | bigint | numeric | anything else
    partitioned: bool  # the table is a partitioned parent: read it with its partitions
    # how the values are drawn: an identity, a column default, the application itself
    # (the sequence is OWNED BY the column, which has no default), or a BEFORE INSERT
    # trigger that fills the column
    source: Literal["identity always", "identity by default", "default", "owned", "trigger"]
    sequence_oid: int
    plain_default: bool  # the value is the sequence's next value itself
    default_expr: str | None
    key_columns: tuple[str, ...] | None  # the smallest unique key that includes the column
    skip_reason: str | None = None  # set when the role cannot read what the check needs
    indexed: bool = True  # a btree index leads with the column: its max is one probe
    estimated_rows: int | None = None  # the planner's estimate, for unindexed columns
    attnum: int = 0
    # the unique and exclusion keys an INSERT meets on the column (keys.py): the table's
    # own, or a partitioned table's leaf partitions'; ``row_filter`` the rows they can
    # collide with, as an SQL condition (None: every row)
    keys: tuple[Key, ...] = ()
    row_filter: str | None = None
    note: str | None = None  # what the verdict must say of the column's shape
    unjudged: str | None = None  # why the arithmetic cannot judge the column
    draws: tuple[int, int] = (1, 0)  # values each insert draws from the sequence; this one's
    siblings: tuple[str, ...] = ()  # the table's other columns drawn from the same sequence

    @functools.cached_property
    def type_range(self) -> tuple[int, int] | None:
        """The integer range the column can hold; None for numeric (unbounded here)."""
        return INT_RANGES.get(self.data_type)

    @property
    def unique(self) -> bool:
        return self.key_columns is not None

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


@dataclass(frozen=True)
class Window:
    """A range of existing values to search, in the order the sequence walks it.

    Find the first value v in [lo, hi] (inclusive) with (v - base) divisible by step,
    walking upwards when ``ascending`` and downwards otherwise.
    """

    lo: int
    hi: int
    base: int
    step: int
    ascending: bool


@dataclass(frozen=True)
class Search:
    """What must be read from a column, once the sequence's next value is known."""

    first_pass: Window | None  # values the sequence reaches before it ends or wraps
    after_wrap: Window | None  # values a cycling sequence reaches once it has wrapped
    top: Window | None  # the whole reachable range: its far end is the max (or min) existing
    # the first pass searched from its far end: the last existing value on the increment's
    # grid (only asked for |increment| > 1, where it can differ from ``top``)
    last_on_grid: Window | None = None


@dataclass(frozen=True)
class Bounds:
    """Answers to a Search, read from the table."""

    first_pass: int | None
    after_wrap: int | None
    top: int | None
    last_on_grid: int | None = None


@dataclass(frozen=True)
class Collision:
    """What a collision says: the first existing value the sequence will hand out, after
    how many inserts that succeed, and the max (min) existing value."""

    first_collision: int
    inserts_until_collision: int  # 0: the very next insert fails
    max_existing: int | None
    after_wrap: bool  # reached once a CYCLE sequence has wrapped


@dataclass(frozen=True)
class Capacity:
    """What an overflow or an exhaustion says: how many values are left before the
    column's type (overflow) or the sequence (exhaustion) runs out, and the share used."""

    values_left: int
    used_fraction: float


@dataclass(frozen=True)
class Finding:
    """A column whose inserts will fail. ``kind`` says which fields go together: a
    ``collision`` has ``first_collision``, ``inserts_until_collision``, ``max_existing``
    and ``after_wrap`` (as ``.collision``); an ``overflow`` or ``exhaustion`` has
    ``values_left`` and ``used_fraction`` (as ``.capacity``). Built otherwise, it
    raises ``ValueError``."""

    kind: FindingKind
    column: Column
    sequence: PgSequence
    next_value: int | None  # None: the sequence is exhausted, nextval fails
    first_collision: int | None = None
    inserts_until_collision: int | None = None
    max_existing: int | None = None
    after_wrap: bool = False
    values_left: int | None = None
    used_fraction: float | None = None
    fix_sql: str = ""
    note: str | None = None  # what the numbers assume (a partial key, two draws per insert)

    def __post_init__(self) -> None:
        collision = (self.first_collision, self.inserts_until_collision)
        capacity = (self.values_left, self.used_fraction)
        if self.kind == "collision":
            wrong = None in collision or capacity != (None, None)
        else:
            wrong = None in capacity or collision != (None, None) or self.after_wrap
        if wrong:
            raise ValueError(f"fields that do not go with a {self.kind} finding: {self!r}")

    @property
    def collision(self) -> Collision:
        if self.first_collision is None or self.inserts_until_collision is None:
            raise ValueError(f"a {self.kind} finding has no collision")
        return Collision(
            self.first_collision, self.inserts_until_collision, self.max_existing, self.after_wrap
        )

    @property
    def capacity(self) -> Capacity:
        if self.values_left is None or self.used_fraction is None:
            raise ValueError(f"a {self.kind} finding has no capacity")
        return Capacity(self.values_left, self.used_fraction)


@dataclass(frozen=True)
class Checked:
    """One column's verdict."""

    column: Column
    sequence: PgSequence
    status: Status
    next_value: int | None = None
    max_existing: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A column that could not be checked, and why."""

    schema: str
    table: str
    column: str
    sequence: str
    reason: str


@dataclass(frozen=True)
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: list[Checked] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


# --- cutovers: a target's sequences compared with its source's (``--source``) -----------

CompareStatus = Literal["ok", "behind", "missing on target", "missing on source", "skipped"]
DIFFERENCES = ("behind", "missing on target", "missing on source")  # statuses that are findings


@dataclass(frozen=True)
class Compared:
    """One sequence, matched by schema and name between a source and a target.

    ``behind``: the target's next value lies behind the source's, in the target's
    direction (``behind_by`` values). ``missing on target`` / ``missing on source``: the
    sequence exists on one side only (``sequence`` is then the name it has, or would
    have, on the target). ``skipped``: one side could not be read (``note`` says why).
    ``columns`` are the target's columns it feeds (none: the application calls
    ``nextval()`` itself)."""

    sequence: str  # the target's schema.name
    source_sequence: str  # the source's schema.name
    schema: str  # the target's schema
    name: str  # the target's name
    status: CompareStatus
    next_value: int | None = None  # the target's (None: exhausted, or missing there)
    source_next_value: int | None = None  # the source's (None: exhausted, or missing)
    # the first value the source has not handed out: its next one, or, exhausted, one
    # step past its own limit (None: not compared)
    source_beyond: int | None = None
    behind_by: int | None = None
    columns: tuple[str, ...] = ()
    fix_sql: str = ""
    note: str | None = None
    target: PgSequence | None = None  # the target's sequence, where it has one
    target_state: SequenceState | None = None  # as read, for the fix


@dataclass(frozen=True)
class Subscription:
    """A logical replication subscription of the target's database, as the target
    sees it, and (where the source holds its slot) how far behind the source it is."""

    name: str
    enabled: bool
    worker_running: bool
    tables: tuple[str, ...]  # schema.table, every table it replicates
    tables_not_ready: int  # still copying or catching up (pg_subscription_rel state not r)
    received_lsn: str | None
    lag_bytes: int | None  # the source's WAL position minus the slot's confirmed flush
    last_message_at: str | None
    slot_on_source: bool | None  # None: no source to ask
    refresh_sequences: bool = False  # PostgreSQL 19+: its publication has FOR ALL SEQUENCES


@dataclass(frozen=True)
class Cutover:
    """``seqdrift check TARGET --source SOURCE``: the target's own check, and every
    sequence compared with the source's."""

    report: Report
    compared: list[Compared]
    subscriptions: list[Subscription]
    source: str  # which database the source is, for people
    target: str
    unread: list[str] = field(default_factory=list)  # replication state it could not read

    @property
    def differences(self) -> list[Compared]:
        """The comparisons that are findings: behind, or missing on one side."""
        return [c for c in self.compared if c.status in DIFFERENCES]
