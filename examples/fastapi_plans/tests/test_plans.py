import pytest
from app.models import Plan
from sqlalchemy import select


@pytest.mark.asyncio
async def test_list_plans(client):
    response = await client.get("/plans")
    assert response.status_code == 200
    assert [p["name"] for p in response.json()] == ["starter", "team", "business"]


@pytest.mark.asyncio
async def test_create_plan(client, db_session):
    response = await client.post("/plans", json={"name": "enterprise", "price": 49900})
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "enterprise"
    assert await db_session.get(Plan, created["id"]) is not None


@pytest.mark.asyncio
async def test_new_plans_are_listed(client):
    await client.post("/plans", json={"name": "nonprofit", "price": 0})
    names = [p["name"] for p in (await client.get("/plans")).json()]
    assert names == ["nonprofit", "starter", "team", "business"]


@pytest.mark.asyncio
async def test_each_test_starts_from_the_seeded_plans(db_session):
    names = (await db_session.scalars(select(Plan.name).order_by(Plan.id))).all()
    assert names == ["starter", "team", "business"]


@pytest.mark.asyncio
async def test_a_plan_needs_a_price(client):
    response = await client.post("/plans", json={"name": "mystery"})
    assert response.status_code == 422
