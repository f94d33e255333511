"""Reports for people (text), for tools (JSON) and for GitHub Actions (workflow
commands). One renderer serves the assertion message, the pytest summary and the CLI;
the CLI's text adds a table and colour around the same finding blocks.

Names come from the database, and PostgreSQL allows any character in a quoted one: a
line break, a carriage return, an escape sequence that clears the terminal. Every line
for people leaves this module through ``Paint`` (made printable, then coloured), so no
name -- nor a reason or note that quotes one -- reaches a terminal or a log raw. The
JSON keeps the true names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pytest_seqdrift.model import (
    Checked,
    Compared,
    Cutover,
    Finding,
    Report,
    Skipped,
    Subscription,
    printable,
)

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
        hit = f.collision
        k = hit.inserts_until_collision
        wrap = ", after wrapping around" if hit.after_wrap else ""
        if k == 0:
            what = f"the very next insert collides with existing {col} {hit.first_collision}"
        else:
            succeed = "insert succeeds" if k == 1 else "inserts succeed"
            what = f"{k} {succeed}{wrap}, the {ordinal(k + 1)} collides with existing {col} {hit.first_collision}"
        text = f"next value {nv}; {what} (max {col} {hit.max_existing})"
        key = f.column.key_columns
        if key is not None and len(key) > 1:
            text += f"; unique key ({', '.join(key)}): it fails where the rest of the key matches"
        if f.note:
            text += f"; {f.note}"
        return text
    cap = f.capacity
    used = f"{cap.used_fraction:.1%} used"
    if cap.values_left == 0:
        why = (
            f"the next insert fails: {f.column.data_type} cannot hold it"
            if f.kind == "overflow"
            else "the next insert fails: the sequence has reached its limit"
        )
        return f"next value {nv}; {why}"
    limit = (
        f"{f.column.data_type} {col} overflows" if f.kind == "overflow" else "the sequence runs out"
    )
    return f"next value {nv}; {plural(cap.values_left, 'value')} left before {limit} ({used})"


# Lines a caller adds to a finding's block: before its fix (where the drift was born)
# and after it (the fix in the terms of the tool that made the drift).
Annotate = Callable[[Finding], tuple[list[str], list[str]]]


def text(report: Report, *, verbose: bool = False, annotate: Annotate | None = None) -> str:
    """The findings, each with its fix; the checked columns too when ``verbose``."""
    say = Paint(False)
    lines = finding_blocks(report, say, annotate)
    for s in report.skipped:
        lines.append(say(f"skipped {skipped_label(s)} (sequence {s.sequence}): {s.reason}"))
    for c in report.checked:
        if c.status in ("duplicates", "unchecked") or (verbose and c.status == "ok"):
            note = f": {c.note}" if c.note else ""
            lines.append(
                say(f"{c.status} {c.column.label} (sequence {c.sequence.qualified}){note}")
            )
    lines.append(say(summary(report)))
    return "\n".join(lines)


def finding_blocks(
    report: Report, paint: Paint | None = None, annotate: Annotate | None = None
) -> list[str]:
    """``sequence drift in N columns:`` and, per finding, what happens and its fix;
    each line printable (``Paint``)."""
    say = paint or Paint(False)
    lines: list[str] = []
    if report.findings:
        columns = {(f.column.table_oid, f.column.column) for f in report.findings}
        lines.append(say(f"sequence drift in {plural(len(columns), 'column')}:", "bold"))
        for f in report.findings:
            before, after = annotate(f) if annotate is not None else ([], [])
            sequence = say(f"(sequence {f.sequence.qualified})")
            lines.append(f"  {say(f.column.label, 'bold')}  {sequence}")
            lines.append(say(f"    {what_happens(f)}"))
            lines.extend(say(f"    {line}") for line in before)
            fix = f.fix_sql.splitlines() or [""]
            lines.append(say(f"    fix: {fix[0]}"))
            lines.extend(say(f"         {line}") for line in (*fix[1:], *after))
    return lines


def what_happens(f: Finding) -> str:
    """``describe_finding``, with the kind in front where it is not a collision: the
    words of a finding wherever it is printed (a failure, the summary, the CLI)."""
    kind = "" if f.kind == "collision" else f"{f.kind}: "
    return f"{kind}{describe_finding(f)}"


_KIND_ORDER = ("collision", "overflow", "exhaustion")
_KIND_WORDS = {
    "collision": "collision",
    "overflow": "near overflow",
    "exhaustion": "near exhaustion",
}


def summary(report: Report) -> str:
    """``checked 212 columns in 48 tables: 2 collisions, 1 near exhaustion; 1 skipped``;
    never "no drift" of a database of which not one column could be read."""
    if report.skipped and not report.checked:
        return f"nothing checked: {plural(len(report.skipped), 'sequence-backed column')} skipped"
    tables = {(c.column.schema, c.column.table) for c in report.checked}
    counts = {k: sum(f.kind == k for f in report.findings) for k in _KIND_ORDER}
    kinds = ", ".join(
        f"{n} {_KIND_WORDS[k]}" + ("s" if n != 1 and k == "collision" else "")
        for k, n in counts.items()
        if n
    )
    unchecked = sum(c.status == "unchecked" for c in report.checked)
    # an unchecked column is not known to be free of drift: never "no drift" of it
    clean = "no drift among those judged" if unchecked else "no drift"
    line = f"checked {plural(len(report.checked), 'column')} in {plural(len(tables), 'table')}: {kinds or clean}"
    if unchecked:
        line += f"; {unchecked} unchecked"
    if report.skipped:
        line += f"; {len(report.skipped)} skipped"
    return line


# --- the command line's text: a table, the findings, the counts -------------------------

_SGR = {"bold": "1", "dim": "2", "red": "1;31", "green": "32", "yellow": "33", "magenta": "35"}
_STATUS_STYLE = {
    "collision": "red",
    "overflow": "yellow",
    "exhaustion": "yellow",
    "skipped": "magenta",
    "duplicates": "yellow",
    "unchecked": "dim",
    "ok": "green",
}


class Paint:
    """A line (or a piece of one) for people: made printable -- a name may hold a line
    break or an escape sequence, and neither may reach the terminal -- then in ANSI
    colour when ``enabled`` (a terminal, no ``NO_COLOR``) and a ``style`` is given."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str | None = None) -> str:
        text = printable(text)
        if style is None or not self.enabled or not text:
            return text
        return f"\x1b[{_SGR[style]}m{text}\x1b[0m"


def skipped_label(s: Skipped) -> str:
    return f"{s.schema}.{s.table}.{s.column}"


SKIPPED_LISTED = 10  # more skipped columns than this: the text says how many, and why


def _reason_kind(s: Skipped) -> str:
    """The reason without the name of the column or sequence it is about (``permission
    denied: cannot SELECT from sequence``), so that the reasons of many columns add up;
    a name many share (a schema's) stays."""
    for name in (s.sequence, f"{s.schema}.{s.table}", s.table, s.column):
        if name and s.reason.endswith(f" {name}"):
            return s.reason[: -len(name) - 1]
    return s.reason


def skipped_reasons(skipped: list[Skipped]) -> str:
    """``permission denied: cannot SELECT from sequence (180), permission denied for
    schema private (6)``: the reasons, most frequent first."""
    counts: dict[str, int] = {}
    for s in skipped:
        kind = _reason_kind(s)
        counts[kind] = counts.get(kind, 0) + 1
    ranked = sorted(counts.items(), key=lambda kc: -kc[1])  # stable: first seen first
    return ", ".join(f"{kind} ({n})" for kind, n in ranked)


def cannot_check(report: Report) -> str | None:
    """Why nothing could be checked, in one line, when not one column could be read
    (every one was skipped); None when something was checked, or nothing was there."""
    if not report.skipped or report.checked:
        return None
    if len(report.skipped) == 1:
        (s,) = report.skipped
        return (
            "cannot check: the only sequence-backed column could not be read: "
            f"{skipped_label(s)}: {s.reason}"
        )
    return (
        f"cannot check: none of the {len(report.skipped)} sequence-backed columns could be "
        f"read: {skipped_reasons(report.skipped)}"
    )


def short_finding(f: Finding) -> str:
    """A finding in a few words, for the table (the block below says it in full)."""
    col = f.column.column
    if f.kind == "collision":
        hit = f.collision
        k = hit.inserts_until_collision
        which = "the next insert" if k == 0 else f"the {ordinal(k + 1)} insert"
        wrap = ", after wrapping," if hit.after_wrap else ""
        return (
            f"{which}{wrap} fails on existing {col} {hit.first_collision} (max {hit.max_existing})"
        )
    cap = f.capacity
    if cap.values_left == 0:
        return "the next insert fails"
    return f"{plural(cap.values_left, 'value')} left ({cap.used_fraction:.1%} used)"


def lists_skipped(report: Report, *, verbose: bool = False) -> bool:
    """Does the text list each skipped column (few of them, or ``verbose``), or only
    how many were skipped and why?"""
    return verbose or len(report.skipped) <= SKIPPED_LISTED


def table_rows(report: Report, *, verbose: bool = False) -> list[tuple[str, str, str, str]]:
    """(status, column, sequence, detail) for every column worth a look, findings
    first; the skipped ones when few (``lists_skipped``); with ``verbose`` every skipped
    column and the columns that are fine too."""
    rows: list[tuple[str, str, str, str]] = [
        (f.kind, f.column.label, f.sequence.qualified, short_finding(f)) for f in report.findings
    ]
    if lists_skipped(report, verbose=verbose):
        rows += [("skipped", skipped_label(s), s.sequence, s.reason) for s in report.skipped]
    for c in report.checked:
        if c.status in ("duplicates", "unchecked") or (verbose and c.status == "ok"):
            detail = c.note or ""
            if c.status == "ok":
                top = "no rows" if c.max_existing is None else f"max {c.max_existing}"
                detail = f"next value {c.next_value}, {top}"
            rows.append((c.status, c.column.label, c.sequence.qualified, detail))
    return rows


def table(rows: list[tuple[str, str, str, str]], paint: Paint) -> list[str]:
    """Aligned columns; the last one (the detail) runs on. Padding is measured before
    colour is added, so the columns line up on a terminal too."""
    header = ("STATUS", "COLUMN", "SEQUENCE", "DETAIL")
    rows = [(r[0], printable(r[1]), printable(r[2]), printable(r[3])) for r in rows]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(3)]

    def line(cells: tuple[str, str, str, str], style: str | None) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        status = paint(padded[0], style)
        return f"{status}  {padded[1]}  {padded[2]}  {cells[3]}".rstrip()

    lines = [paint(line(header, None), "bold")]
    order = {"collision": 0, "overflow": 1, "exhaustion": 1, "skipped": 2}
    for row in sorted(rows, key=lambda r: order.get(r[0], 3)):
        lines.append(line(row, _STATUS_STYLE.get(row[0], "bold")))
    return lines


def for_terminal(report: Report, *, colour: bool = False, verbose: bool = False) -> str:
    """``seqdrift check``'s text: a table of every column worth a look (findings first),
    then each finding with its fix, then the counts. A clean database gets one line.
    Many skipped columns are counted by reason, not listed (``verbose`` lists them)."""
    paint = Paint(colour)
    lines: list[str] = []
    rows = table_rows(report, verbose=verbose)
    if rows:
        lines += table(rows, paint)
    if not lists_skipped(report, verbose=verbose):
        n = len(report.skipped)
        lines.append(
            paint(
                f"{n} columns skipped: {skipped_reasons(report.skipped)}; --verbose lists them",
                "magenta",
            )
        )
    if lines:
        lines.append("")
    blocks = finding_blocks(report, paint)
    if blocks:
        lines += [*blocks, ""]
    style = "red" if report.findings else "green" if cannot_check(report) is None else "magenta"
    lines.append(paint(summary(report), style))
    return "\n".join(lines)


# --- the pytest plugin's summary, from the findings' dict form --------------------------
# Under pytest-xdist a finding reaches the controller as ``finding_record``'s dict (a
# test report's property), not as a ``Finding``: the summary renders it from there.


def record_lines(record: dict[str, Any], lead: str) -> list[str]:
    """A finding in the summary, from ``finding_record``'s dict (and ``introduced_by``
    where known): the words of its failure, its origin, the first line of its fix."""
    say = Paint(False)
    d = record
    lines = [say(f"{lead}{d['schema']}.{d['table']}.{d['column']}: {d['what']}")]
    if d.get("introduced_by"):
        lines.append(say(f"    introduced by {d['introduced_by']}"))
    lines.append(say(f"    fix: {d['fix_sql'].splitlines()[0] if d['fix_sql'] else '-'}"))
    return lines


def run_clean(*, setups: int, steps: int, probed_tests: int) -> str:
    """``no sequence drift (2 test database set-ups checked, 1 test probed)``."""
    done = [
        f"{plural(setups, 'test database set-up')} checked" if setups else "",
        f"{plural(steps, 'migration step')} followed" if steps else "",
        f"{plural(probed_tests, 'test')} probed" if probed_tests else "",
    ]
    return f"no sequence drift ({', '.join(d for d in done if d)})"


def run_counts(
    *,
    born: int,
    born_databases: int,
    findings: int,
    probed_tests: int,
    failures: int,
    errors: int,
    cannot: int,
) -> str:
    """The summary's last line: ``1 finding in the set-up of 1 test database; 2
    findings in 3 probed tests; 2 tests failed because of pytest-seqdrift``."""
    parts = []
    if born:
        parts.append(
            f"{plural(born, 'finding')} in the set-up of {plural(born_databases, 'test database')}"
        )
    if probed_tests or findings:
        parts.append(f"{plural(findings, 'finding')} in {plural(probed_tests, 'probed test')}")
    line = "; ".join(parts)
    if failures or errors:
        said = [
            plural(failures, "test") + " failed" if failures else "",
            plural(errors, "error") + " at a test's set-up" if errors else "",
        ]
        line += f"; {' and '.join(x for x in said if x)} because of pytest-seqdrift"
        if cannot:
            line += f" ({cannot} could not be checked)"
    return line


# --- GitHub Actions workflow commands --------------------------------------------------


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def _gh_command(command: str, title: str, *message: str) -> str:
    """A workflow command; the title and each line of the message made printable
    first (``Paint``), then escaped by GitHub's rules (a line break of the message's own
    becomes ``%0A``; one in a name was made ``\\n`` before)."""
    say = Paint(False)
    data = "\n".join(say(line) for line in message)
    return f"::{command} title={_gh_property(say(title))}::{_gh_data(data)}"


def github(report: Report) -> str:
    """One workflow command per finding: ``::error`` for a collision (an insert will
    fail), ``::warning`` for overflow and exhaustion; ``::notice`` for each column that
    was skipped or could not be judged; then the counts as a plain line. When not one
    column could be read, one ``::error`` that says so, and nothing else."""
    cannot = cannot_check(report)
    if cannot is not None:
        return _gh_command("error", "seqdrift could not check", cannot)
    lines: list[str] = []
    for f in report.findings:
        command = "error" if f.kind == "collision" else "warning"
        fix = f.fix_sql.splitlines() or [""]
        message = [
            f"{f.column.label} (sequence {f.sequence.qualified}): {what_happens(f)}",
            f"fix: {fix[0]}",
            *fix[1:],
        ]
        lines.append(_gh_command(command, f"sequence {f.kind}: {f.column.label}", *message))
    for s in report.skipped:
        label = skipped_label(s)
        message_line = f"{label} (sequence {s.sequence}) was not checked: {s.reason}"
        lines.append(_gh_command("notice", f"seqdrift skipped {label}", message_line))
    for c in report.checked:
        if c.status in ("duplicates", "unchecked"):
            note = f"{c.column.label} (sequence {c.sequence.qualified}): {c.note or c.status}"
            lines.append(_gh_command("notice", f"seqdrift {c.status}: {c.column.label}", note))
    lines.append(summary(report))
    return "\n".join(lines)


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
    if f.note:
        d["note"] = f.note
    return d


def finding_record(f: Finding) -> dict[str, Any]:
    """``finding_dict`` and the words of the finding's failure (``what``): a finding as
    it travels from a pytest-xdist worker to the controller (where only dicts go), for
    ``record_lines`` to render there."""
    return {**finding_dict(f), "what": what_happens(f)}


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


# --- cutovers: the target compared with its source (``--source``) ----------------------

CUTOVER_KIND = {"behind": "behind", "missing on target": "missing", "missing on source": "missing"}


def _fed(c: Compared) -> str:
    if not c.columns:
        return "backs no column"
    return ", ".join(c.columns)


def describe_compared(c: Compared) -> str:
    """One line for a compared sequence: ``public.orders_id_seq (public.orders.id): next
    value 51, the source's 101: 50 behind``."""
    what = f"{c.sequence} ({_fed(c)})"
    if c.status == "missing on target":
        there = "" if c.sequence == c.source_sequence else f", no {c.sequence} there"
        return (
            f"{c.source_sequence}: missing on the target{there} "
            f"(the source's next value {c.source_next_value})"
        )
    if c.status == "missing on source":
        return f"{what}: missing on the source (no {c.source_sequence} there)"
    if c.status == "skipped":
        return f"{what}: not compared: {c.note}"
    source = "exhausted" if c.source_next_value is None else str(c.source_next_value)
    nv = "none (exhausted)" if c.next_value is None else str(c.next_value)
    text = f"{what}: next value {nv}, the source's {source}"
    if c.status == "behind":
        text += f": {plural(c.behind_by or 0, 'value')} behind"
        step = abs(c.target.increment) if c.target is not None else 1
        if step != 1 and c.behind_by:
            text += f" ({plural(-(-c.behind_by // step), 'nextval() call')} of {step})"
    if c.note:
        text += f"; {c.note}"
    return text


def describe_subscription(sub: Subscription, behind: list[Compared]) -> list[str]:
    """What a cutover must know of a subscription: is it still writing, how far behind,
    and which of its tables' sequences the fix moves."""
    state = "enabled" if sub.enabled else "disabled"
    worker = ", its worker running" if sub.worker_running else ""
    tables = plural(len(sub.tables), "table")
    ready = f", {sub.tables_not_ready} not yet in sync" if sub.tables_not_ready else ""
    if sub.lag_bytes is not None:
        lag = f"; {plural(max(sub.lag_bytes, 0), 'byte')} of the source's WAL not yet confirmed"
    elif sub.slot_on_source is False:
        lag = "; its slot is not on the source (it replicates from elsewhere)"
    else:
        lag = ""
    lines = [f"subscription {sub.name}: {state}{worker}, {tables}{ready}{lag}"]
    replicated = set(sub.tables)
    moved = [
        c.sequence for c in behind if any(col.rsplit(".", 1)[0] in replicated for col in c.columns)
    ]
    if moved:
        lines.append(f"  sequences of its tables behind the source: {', '.join(moved)}")
    if sub.enabled:
        lines.append(
            f"  writes may still arrive: ALTER SUBSCRIPTION {sub.name} DISABLE (or drop it) "
            "before the fix"
        )
    elif sub.lag_bytes or sub.tables_not_ready:
        lines.append(
            "  it stopped before it caught up: rows written at the source may be missing "
            "here; enable it until the lag is 0 (and every table in sync) before the cutover"
        )
    if sub.refresh_sequences:
        lines.append(
            f"  its publication replicates sequences (FOR ALL SEQUENCES): ALTER SUBSCRIPTION "
            f"{sub.name} REFRESH SEQUENCES copies their state, instead of a setval"
        )
    return lines


def cutover_summary(cut: Cutover, *, where: bool = False) -> str:
    """``compared 14 sequences with the source: 2 behind, 1 missing on the target``
    (``where``: the source named after "the source")."""
    counts = {
        k: sum(c.status == k for c in cut.compared)
        for k in ("behind", "missing on target", "missing on source", "skipped")
    }
    words = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "skipped")
    source = f"the source ({cut.source})" if where else "the source"
    line = (
        f"compared {plural(len(cut.compared), 'sequence')} with {source}: {words or 'none behind'}"
    )
    if counts["skipped"]:
        line += f"; {counts['skipped']} not compared"
    return line


def cutover_lines(cut: Cutover, paint: Paint | None = None) -> list[str]:
    """The comparison's part of ``seqdrift check --source``'s text."""
    say = paint or Paint(False)
    lines: list[str] = []
    shown = [c for c in cut.compared if c.status != "ok"]
    for c in shown:
        style = "red" if c.status == "behind" else "yellow" if c.status != "skipped" else "magenta"
        lines.append("  " + say(describe_compared(c), style))
    fixes = [c.fix_sql for c in cut.compared if c.status == "behind" and c.fix_sql]
    if fixes:
        lines.append("  fix (seqdrift fix TARGET --source SOURCE prints and runs these):")
        lines += [f"    {say(line)}" for sql in fixes for line in sql.split("\n")]
    behind = [c for c in cut.compared if c.status == "behind"]
    lines += [say(line, "magenta") for line in cut.unread]
    for sub in cut.subscriptions:
        lines += [
            say(line, "yellow" if sub.enabled else None)
            for line in describe_subscription(sub, behind)
        ]
    style = "red" if cut.differences else "green"
    if not lines:  # nothing to list: one line, which names the source
        return [say(cutover_summary(cut, where=True), style)]
    header = say(f"compared with the source, {cut.source}:", "bold")
    return [header, *lines, say(cutover_summary(cut), style)]


def cutover_for_terminal(cut: Cutover, *, colour: bool = False, verbose: bool = False) -> str:
    """``seqdrift check --source``'s text: the target's own check, then the comparison."""
    return "\n".join(
        [
            for_terminal(cut.report, colour=colour, verbose=verbose),
            "",
            *cutover_lines(cut, Paint(colour)),
        ]
    )


def compared_finding(c: Compared) -> dict[str, Any]:
    """A difference as a JSON finding: kind ``behind`` or ``missing``. ``table`` and
    ``column`` are the first column it feeds on the target (null: it backs none)."""
    table = column = None
    if c.columns:
        _schema, table, column = _split_label(c.columns[0], c.schema)
    d: dict[str, Any] = {
        "kind": CUTOVER_KIND[c.status],
        "schema": c.schema,
        "table": table,
        "column": column,
        "sequence": c.sequence,
        "source_sequence": c.source_sequence,
        "next_value": c.next_value,
        "source_next_value": c.source_next_value,
    }
    if c.status == "behind":
        d["behind_by"] = c.behind_by
    else:
        d["missing_on"] = "target" if c.status == "missing on target" else "source"
    d["columns"] = list(c.columns)
    d["fix_sql"] = c.fix_sql
    if c.note:
        d["note"] = c.note
    return d


def _split_label(label: str, schema: str) -> tuple[str, str, str]:
    """``schema.table.column`` as the three names (a name may hold a dot: split from
    the known schema, then at the last dot)."""
    rest = label[len(schema) + 1 :] if label.startswith(schema + ".") else label.split(".", 1)[-1]
    table, _, column = rest.rpartition(".")
    return schema, table, column


def compared_dict(c: Compared) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": c.schema,
        "sequence": c.sequence,
        "source_sequence": c.source_sequence,
        "status": c.status,
        "next_value": c.next_value,
        "source_next_value": c.source_next_value,
        "columns": list(c.columns),
    }
    if c.behind_by is not None:
        d["behind_by"] = c.behind_by
    if c.note:
        d["note"] = c.note
    return d


def subscription_dict(sub: Subscription) -> dict[str, Any]:
    return {
        "name": sub.name,
        "enabled": sub.enabled,
        "worker_running": sub.worker_running,
        "tables": list(sub.tables),
        "tables_not_ready": sub.tables_not_ready,
        "received_lsn": sub.received_lsn,
        "lag_bytes": sub.lag_bytes,
        "last_message_at": sub.last_message_at,
        "slot_on_source": sub.slot_on_source,
        "refresh_sequences": sub.refresh_sequences,
    }


def cutover_dict(cut: Cutover) -> dict[str, Any]:
    """``as_dict`` of the target's check, its findings followed by the differences, and
    every compared sequence and subscription."""
    d = as_dict(cut.report)
    d["findings"] += [compared_finding(c) for c in cut.differences]
    d["compared"] = [compared_dict(c) for c in cut.compared]
    d["subscriptions"] = [subscription_dict(s) for s in cut.subscriptions]
    d["source"] = cut.source
    if cut.unread:
        d["unread"] = list(cut.unread)
    return d


def cutover_json(cut: Cutover) -> str:
    return json.dumps(cutover_dict(cut), indent=2)


def cutover_github(cut: Cutover) -> str:
    """``github`` of the target's check, then an ``::error`` per sequence behind and a
    ``::warning`` per sequence missing on one side."""
    lines = [github(cut.report)]
    if cannot_check(cut.report) is not None:
        return lines[0]
    for c in cut.differences:
        command = "error" if c.status == "behind" else "warning"
        message = [describe_compared(c)]
        if c.fix_sql:
            message.append(f"fix: {c.fix_sql}")
        lines.append(_gh_command(command, f"sequence {c.status}: {c.sequence}", *message))
    behind = [c for c in cut.compared if c.status == "behind"]
    for sub in cut.subscriptions:
        said = describe_subscription(sub, behind)
        if sub.enabled or len(said) > 1:
            lines.append(_gh_command("warning", f"subscription {sub.name}", *said))
    for line in cut.unread:
        lines.append(_gh_command("warning", "replication state unread", line))
    lines.append(cutover_summary(cut))
    return "\n".join(lines)
