import pytest
import pytest_asyncio
from alembic import command
from alembic.config import Config
from app.db import DATABASE_URL, get_db
from app.main import app
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool


@pytest.fixture(scope="session", autouse=True)
def migrated_database():
    """The test database at the head revision, for the whole run.

    A plain (sync) fixture: env.py calls asyncio.run(), which cannot run inside
    pytest-asyncio's event loop.
    """
    config = Config("alembic.ini")
    command.upgrade(config, "head")
    yield
    command.downgrade(config, "base")


@pytest_asyncio.fixture
async def db_session():
    """An AsyncSession inside a transaction that is rolled back after the test; the
    app's commits become savepoints."""
    engine = create_async_engine(DATABASE_URL, poolclass=NullPool)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        yield session
        await session.close()
        await transaction.rollback()
    await engine.dispose()


@pytest_asyncio.fixture
async def client(db_session):
    async def override_get_db():
        yield db_session

    app.dependency_overrides[get_db] = override_get_db
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        yield client
    app.dependency_overrides.clear()
