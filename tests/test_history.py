"""Where drift began (history.py) and how the fix is said in a tool's own terms
(advice.py): pure, no database."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_seqdrift.model import Column, Finding, PgSequence, Report
from pytest_seqdrift.plugin import advice
from pytest_seqdrift.plugin.history import History, Step


def column(table: str) -> Column:
    return Column(
        table_oid=hash(table) & 0xFFFF,
        schema="public",
        table=table,
        column="id",
        qualified_table=f"public.{table}",
        data_type="integer",
        partitioned=False,
        source="default",
        sequence_oid=1,
        plain_default=True,
        default_expr=None,
        key_columns=("id",),
    )


SEQ = PgSequence(1, "public", "s", "public.s", "bigint", 1, 1, 1, 2**63 - 1, False)
SETVAL = 'SELECT setval(\'public.s\', GREATEST(5, last_value)) FROM "public"."s";'


def finding(table: str, fix_sql: str = SETVAL) -> Finding:
    return Finding("collision", column(table), SEQ, 1, 1, 0, 5, fix_sql=fix_sql)


def drifted(*tables: str) -> Report:
    return Report(findings=[finding(t) for t in tables])


def steps(n: int) -> list[Step]:
    return [Step("migration", f"shop.000{i}", app="shop") for i in range(1, n + 1)]


def test_the_step_after_which_a_column_drifted_ever_since_is_its_origin() -> None:
    one, two, three, four = steps(4)
    history = History()
    history.applied(one, drifted())
    history.applied(two, drifted("country"))
    history.applied(three, drifted("country", "plan"))  # country still, plan is new
    assert history.origin(finding("country")) == two
    assert history.origin(finding("plan")) == three
    history.applied(four, drifted("plan"))  # four mends country
    assert history.origin(finding("country")) is None
    assert history.origin(finding("plan")) == three


def test_drift_mended_and_made_again_is_blamed_on_the_later_step() -> None:
    one, two, three = steps(3)
    history = History()
    history.applied(one, drifted("country"))
    history.applied(two, drifted())
    history.applied(three, drifted("country"))
    assert history.origin(finding("country")) == three


def test_an_unchecked_step_changes_no_origin_and_hides_the_current_state() -> None:
    one, two, three = steps(3)
    history = History()
    history.applied(one, drifted("country"))
    history.applied(two, None)  # a step that cannot make drift: not checked
    assert history.current is None
    assert history.origin(finding("country")) == one
    history.applied(three, drifted("country"))
    assert history.origin(finding("country")) == one
    assert history.current is not None
    assert history.steps == [one, two, three]


def test_labels() -> None:
    assert Step("migration", "shop.0003_load").label == "migration shop.0003_load"
    assert Step("migration", "shop.0003", backwards=True).label == "unapplying migration shop.0003"
    assert Step("revision", "0002", "seed plans").label == "revision 0002 (seed plans)"
    assert Step("revision", "0002", backwards=True).label == "downgrading revision 0002"
    assert Step("load", "sql/seed.sql").label == "loading sql/seed.sql"


@given(st.text())
def test_py_string_is_a_python_literal_of_the_same_text(text: str) -> None:
    assert ast.literal_eval(advice.py_string(text)) == text


def test_the_fix_in_each_tool_s_terms() -> None:
    f = finding("country")
    django = advice.fix_for(Step("migration", "shop.0003", app="shop"), f)
    assert django[0].startswith("or as an operation of a new migration of shop (")
    assert "python manage.py makemigrations shop --empty" in django[0]
    operation = "\n".join(django[1:])
    assert ast.literal_eval(operation.split("(", 1)[1].split(",\n")[0].strip()) == SETVAL
    assert "reverse_sql=migrations.RunSQL.noop" in operation
    alembic = advice.fix_for(Step("revision", "0002"), f)
    assert alembic[1].strip().startswith("op.execute(")
    assert ast.literal_eval(alembic[1].strip()[len("op.execute(") : -1]) == SETVAL
    assert advice.fix_for(Step("load", "sql/seed.sql"), f) == [
        "or append that line to sql/seed.sql"
    ]
    assert advice.fix_for(Step("load", "tests.conftest.seed"), f) == [
        "or run that statement at the end of tests.conftest.seed"
    ]


def test_no_tool_form_where_setval_is_no_fix() -> None:
    commented = "-- not fixable by setval; widen the type instead:\n-- ALTER TABLE ..."
    assert advice.fix_for(Step("revision", "0002"), finding("t", commented)) == []


def test_a_finding_holds_only_the_fields_of_its_kind() -> None:
    """A collision's numbers and a capacity's never mix: each kind is read through
    its own typed view, and a finding built otherwise is refused."""
    col = column("t")
    hit = Finding("collision", col, SEQ, 1, first_collision=7, inserts_until_collision=6)
    assert hit.collision.first_collision == 7
    assert hit.collision.inserts_until_collision == 6
    full = Finding("exhaustion", col, SEQ, None, values_left=0, used_fraction=1.0)
    assert full.capacity.values_left == 0
    for wrong in (
        {"kind": "collision", "first_collision": 7},
        {"kind": "collision", "first_collision": 7, "inserts_until_collision": 6, "values_left": 3},
        {"kind": "overflow", "values_left": 3},
        {"kind": "overflow", "values_left": 3, "used_fraction": 0.9, "first_collision": 7},
        {"kind": "exhaustion", "values_left": 3, "used_fraction": 0.9, "after_wrap": True},
    ):
        with pytest.raises(ValueError, match="do not go with"):
            Finding(column=col, sequence=SEQ, next_value=1, **wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no collision"):
        _ = full.collision
    with pytest.raises(ValueError, match="has no capacity"):
        _ = hit.capacity
