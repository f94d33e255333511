"""The probe's answers merged into the check's report: the collisions only the probe
saw, with a fix for each, and the verdicts it overrules."""

from __future__ import annotations

import re
from dataclasses import replace

from pytest_seqdrift import fixsql
from pytest_seqdrift.model import Bounds, Checked, Column, Finding, Status
from pytest_seqdrift.probe.report import Probed, ProbeReport, _joined, _listed


def _merge(result: ProbeReport) -> None:
    """Add the collisions only the probe saw (defaults or triggers the arithmetic
    cannot judge), and where the probe overrules the arithmetic, put its answer in
    place of the arithmetic's."""
    findings, checked = result.report.findings, result.report.checked
    for p in result.probed:
        at = next(
            (i for i, f in enumerate(findings) if f.kind == "collision" and f.column == p.column),
            None,
        )
        known = None if at is None else findings[at]
        if not p.overrules and (known is not None or p.inserts_until_collision is None):
            continue
        if p.inserts_until_collision is None:  # overruled: no insert collides
            assert at is not None
            del findings[at]
            others = any(f.column == p.column for f in findings)
            _verdict(checked, p, "finding" if others else "ok", p.note)
            continue
        # the arithmetic's setval still fixes what it found, unless a trigger decides
        fix = known.fix_sql if known is not None and not p.decided_by else _advice(p)
        found = Finding(
            kind="collision",
            column=p.column,
            sequence=p.sequence,
            next_value=p.first_value,
            first_collision=p.value,
            inserts_until_collision=p.inserts_until_collision,
            max_existing=p.top,
            fix_sql=fix,
            note=_joined(_unjudged(p.column), p.note),
        )
        if at is None:
            findings.append(found)
        else:
            findings[at] = found
        _verdict(checked, p, "finding", "collision seen by the probe")


def _unjudged(column: Column) -> str | None:
    """Why the check left the column to the probe, said of a collision the probe saw:
    the trigger, rule or expression that decides what an insert stores."""
    if column.unjudged is None:
        return None
    why = re.split(r"[:,]? (?:which )?the arithmetic cannot judge", column.unjudged)[0]
    return f"found by inserting: {why}"


def _verdict(checked: list[Checked], p: Probed, status: Status, note: str | None) -> None:
    for i, verdict in enumerate(checked):
        if verdict.column == p.column:
            checked[i] = replace(verdict, status=status, note=note)


def _advice(p: Probed) -> str:
    """A collision the arithmetic could not foresee: where the value is the sequence's
    next value itself, the setval that moves it past the existing values; else say what
    to do."""
    what = p.column.default_expr or "its default"
    if p.decided_by:
        moved = f" (the probe saw {', '.join(p.drew_from)} move)" if p.drew_from else ""
        return fixsql.comment(
            f"{p.column.label}: {_listed(p.decided_by)} decides the value an insert stores "
            f"(the first stores {p.first_value}), not {what}: a setval of "
            f"{p.sequence.qualified} is not the fix as such.",
            f"Make what the trigger takes its values from{moved} yield values past the "
            f"existing ones (up to {p.top}).",
        )
    if (p.column.plain_default or p.column.source == "trigger") and p.top is not None:
        # the value is the sequence's next one (a trigger that fills the column from it,
        # or draws from it in between, only moves it forward): past the max is the fix
        target = fixsql.collision_target(p.column, p.sequence, Bounds(None, None, p.top))
        if target is not None:
            return fixsql.setval_at_least(p.sequence, target)
    takes = f"takes {what}" if p.column.default_expr else "is filled by a trigger"
    return fixsql.comment(
        f"{p.column.label} {takes} (or a trigger sets it): move "
        f"{p.sequence.qualified} forward, with setval, until it yields values past the "
        "existing ones"
    )
