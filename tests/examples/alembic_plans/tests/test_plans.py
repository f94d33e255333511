from plans.models import Plan, Subscription
from sqlalchemy import select


def test_the_plans(session):
    names = session.scalars(select(Plan.name).order_by(Plan.monthly_cents)).all()
    assert names == ["free", "team", "business"]


def test_subscribe(session):
    team = session.scalars(select(Plan).where(Plan.name == "team")).one()
    session.add(Subscription(email="ada@example.com", plan=team))
    session.commit()
    assert session.scalars(select(Subscription.email)).all() == ["ada@example.com"]


def test_a_plan_is_free():
    assert Plan(name="x", monthly_cents=0).monthly_cents == 0
