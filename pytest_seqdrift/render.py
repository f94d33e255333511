"""Reports for people (text) and for tools (JSON). One renderer serves the assertion
message, the pytest summary and the CLI."""

from __future__ import annotations

import json
from typing import Any

from .model import Checked, Finding, Report, Skipped

JSON_VERSION = 1


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe_finding(f: Finding) -> str:
    """One line that says what will happen, with the real numbers."""
    col = f.column.column
    nv = "none (the sequence is exhausted)" if f.next_value is None else str(f.next_value)
    if f.kind == "collision":
        assert f.inserts_until_collision is not None
        k = f.inserts_until_collision
        wrap = ", after wrapping around" if f.after_wrap else ""
        if k == 0:
            what = f"the very next insert collides with existing {col} {f.first_collision}"
        else:
            succeed = "insert succeeds" if k == 1 else "inserts succeed"
            what = f"{k} {succeed}{wrap}, the {ordinal(k + 1)} collides with existing {col} {f.first_collision}"
        text = f"next value {nv}; {what} (max {col} {f.max_existing})"
        key = f.column.key_columns
        if key is not None and len(key) > 1:
            text += f"; unique key ({', '.join(key)}): it fails where the rest of the key matches"
        return text
    assert f.values_left is not None
    assert f.used_fraction is not None
    used = f"{f.used_fraction:.1%} used"
    if f.values_left == 0:
        why = (
            f"the next insert fails: {f.column.data_type} cannot hold it"
            if f.kind == "overflow"
            else "the next insert fails: the sequence has reached its limit"
        )
        return f"next value {nv}; {why}"
    limit = (
        f"{f.column.data_type} {col} overflows" if f.kind == "overflow" else "the sequence runs out"
    )
    return f"next value {nv}; {plural(f.values_left, 'value')} left before {limit} ({used})"


def text(report: Report, *, verbose: bool = False) -> str:
    """The findings, each with its fix; the checked columns too when ``verbose``."""
    lines: list[str] = []
    if report.findings:
        columns = {(f.column.table_oid, f.column.column) for f in report.findings}
        lines.append(f"sequence drift in {plural(len(columns), 'column')}:")
        for f in report.findings:
            lines.append(f"  {f.column.label}  (sequence {f.sequence.qualified})")
            kind = "" if f.kind == "collision" else f"{f.kind}: "
            lines.append(f"    {kind}{describe_finding(f)}")
            fix = f.fix_sql.splitlines() or [""]
            lines.append(f"    fix: {fix[0]}")
            lines.extend(f"         {line}" for line in fix[1:])
    for s in report.skipped:
        lines.append(f"skipped {s.schema}.{s.table}.{s.column} (sequence {s.sequence}): {s.reason}")
    for c in report.checked:
        if c.status in ("duplicates", "unchecked") or (verbose and c.status == "ok"):
            note = f": {c.note}" if c.note else ""
            lines.append(f"{c.status} {c.column.label} (sequence {c.sequence.qualified}){note}")
    lines.append(summary(report))
    return "\n".join(lines)


def summary(report: Report) -> str:
    tables = {(c.column.schema, c.column.table) for c in report.checked}
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    kinds = ", ".join(plural(n, k) for k, n in sorted(counts.items())) or "no drift"
    line = f"checked {plural(len(report.checked), 'column')} in {plural(len(tables), 'table')}: {kinds}"
    if report.skipped:
        line += f"; {len(report.skipped)} skipped"
    return line


def finding_dict(f: Finding) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": f.kind,
        "schema": f.column.schema,
        "table": f.column.table,
        "column": f.column.column,
        "sequence": f.sequence.qualified,
        "next_value": f.next_value,
    }
    if f.kind == "collision":
        d["first_collision"] = f.first_collision
        d["inserts_until_collision"] = f.inserts_until_collision
        d["max_existing"] = f.max_existing
    else:
        d["values_left"] = f.values_left
        d["used_fraction"] = f.used_fraction
    d["fix_sql"] = f.fix_sql
    return d


def checked_dict(c: Checked) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": c.column.schema,
        "table": c.column.table,
        "column": c.column.column,
        "sequence": c.sequence.qualified,
        "status": c.status,
    }
    if c.note:
        d["note"] = c.note
    return d


def skipped_dict(s: Skipped) -> dict[str, Any]:
    return {
        "schema": s.schema,
        "table": s.table,
        "column": s.column,
        "sequence": s.sequence,
        "reason": s.reason,
    }


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "findings": [finding_dict(f) for f in report.findings],
        "checked": [checked_dict(c) for c in report.checked],
        "skipped": [skipped_dict(s) for s in report.skipped],
    }


def as_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2)
