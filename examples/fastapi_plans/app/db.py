"""The database: libpq's environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE), as psql reads them."""

import os
from collections.abc import AsyncIterator

from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

DATABASE_URL = URL.create(
    "postgresql+asyncpg",
    username=os.environ.get("PGUSER", "postgres"),
    password=os.environ.get("PGPASSWORD") or None,
    host=os.environ.get("PGHOST", "localhost"),
    port=int(os.environ.get("PGPORT", "5432")),
    database=os.environ.get("PGDATABASE", "plans"),
)

engine = create_async_engine(DATABASE_URL)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session
