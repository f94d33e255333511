"""What a finding's report adds when it is known where the drift was born: the step
that introduced it, and the fix in the terms of the tool that ran that step -- a Django
migration operation, an Alembic ``op.execute``, a line to append to a loaded SQL file.
The raw SQL (``Finding.fix_sql``) stays first; these lines come beside it.

Pure: text in, text out.
"""

from __future__ import annotations

from pytest_seqdrift.model import Finding
from pytest_seqdrift.plugin.history import Step


def py_string(text: str) -> str:
    """``text`` as a Python string literal to paste into a migration: triple-quoted
    where that needs no escape (SQL holds both kinds of quotes), else ``repr``."""
    if '"""' in text or "\\" in text or text.endswith('"') or not text.isprintable():
        return repr(text)
    return f'"""{text}"""'


def origin_line(step: Step) -> str:
    return f"introduced by {step.label}"


_STEPS = {
    "migration": "the migrations",
    "revision": "the Alembic revisions",
    "load": "the files loaded into the template",
}


def after_steps_line(last: Step) -> str:
    """Set-up drift that no check after a step showed: it came later."""
    return (
        f"not there after {_STEPS[last.kind]} (the last: {last.label}): made by the set-up "
        "that followed them (a post_migrate handler, a fixture that writes rows), or seen "
        "only by the probe"
    )


def _setval(finding: Finding) -> str | None:
    """The fix's statement on one line, or None where a setval cannot fix it (the fix
    is then commented-out advice: overflow, exhaustion, a default it cannot judge)."""
    lines = [line for line in finding.fix_sql.splitlines() if line.strip()]
    if len(lines) != 1 or lines[0].lstrip().startswith("--"):
        return None
    return lines[0].strip()


def fix_for(step: Step, finding: Finding) -> list[str]:
    """The fix as the tool that ran ``step`` takes it; [] when the SQL is all there is."""
    statement = _setval(finding)
    if statement is None:
        return []
    if step.kind == "migration" and step.app:
        return [
            f"or as an operation of a new migration of {step.app} "
            f"(python manage.py makemigrations {step.app} --empty):",
            "    migrations.RunSQL(",
            f"        {py_string(statement)},",
            "        reverse_sql=migrations.RunSQL.noop,",
            "    ),",
        ]
    if step.kind == "revision":
        return [
            "or in the upgrade() of a new revision (alembic revision -m 'move sequences "
            "past the existing ids'):",
            f"    op.execute({py_string(statement)})",
        ]
    if step.kind == "load":
        if step.name.endswith(".sql"):
            return [f"or append that line to {step.name}"]
        return [f"or run that statement at the end of {step.name}"]
    return []


RESET_ORIGIN = "pytest-django's reset_sequences=True, at this test's set-up"


def reset_sequences_lines() -> tuple[list[str], list[str]]:
    """Drift made by pytest-django's ``reset_sequences=True``, not by a migration: the
    line that says so, and the fix in the test's terms."""
    return (
        [
            f"made by {RESET_ORIGIN}: it set every sequence back to its start and the "
            "table kept its rows (no migration did this)"
        ],
        ["or drop reset_sequences=True from this test, or empty the table before it"],
    )
