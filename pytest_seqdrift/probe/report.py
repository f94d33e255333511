"""What the probe says: of each column (``Probed``), and of the database (``ProbeReport``,
the check's report with the probe's collisions merged in)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal

from pytest_seqdrift.model import Column, PgSequence, Report

Mode = Literal["insert", "default"]


@dataclass(frozen=True)
class Probed:
    """What the probe saw for one column."""

    column: Column
    sequence: PgSequence
    mode: Mode
    drawn: int  # values drawn from the default
    inserts_until_collision: int | None  # None: no collision among the values drawn
    value: int | None  # the colliding value, where known
    passed_max: bool  # False: stopped at the limit before passing the highest existing value
    note: str | None = None  # a fallback, a disagreement with the arithmetic, or why not probed
    # the first value an insert stores (insert mode: what it stored, RETURNING, or tried
    # to store where it collided), or the default's first value (default mode)
    first_value: int | None = None
    top: int | None = None  # the highest existing value (lowest, for negative increments)
    # BEFORE INSERT row triggers (and INSERT rules) that decide the value an insert
    # stores, where it is not the default's: "name on schema.table"
    decided_by: tuple[str, ...] = ()
    drew_from: tuple[str, ...] = ()  # where ``decided_by``: the sequences its probe moved
    # the probe's answer stands instead of the arithmetic's (it disagreed, and inserting
    # one row per INSERT showed the probe right): ``ProbeReport.report`` says so
    overrules: bool = False


@dataclass
class ProbeReport:
    report: Report  # the arithmetic's report, with the probe's own collisions added
    probed: list[Probed] = field(default_factory=list)
    restored: int = 0  # sequence moves put back (after each probed column, and at the end)

    @property
    def disagreements(self) -> list[Probed]:
        return [p for p in self.probed if p.note and "disagree" in p.note]


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _listed(names: Seq[str]) -> str:
    return ", ".join(names)
