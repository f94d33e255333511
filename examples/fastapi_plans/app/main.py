from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import get_db
from app.models import Plan

app = FastAPI(title="plans")

Db = Annotated[AsyncSession, Depends(get_db)]


class PlanIn(BaseModel):
    name: str
    price: int


class PlanOut(PlanIn):
    model_config = ConfigDict(from_attributes=True)

    id: int


@app.get("/plans", response_model=list[PlanOut])
async def list_plans(db: Db):
    return (await db.scalars(select(Plan).order_by(Plan.price))).all()


@app.post("/plans", response_model=PlanOut, status_code=201)
async def create_plan(plan: PlanIn, db: Db):
    row = Plan(**plan.model_dump())
    db.add(row)
    await db.commit()
    return row
