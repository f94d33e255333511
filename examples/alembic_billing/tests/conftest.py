import pytest
import sqlalchemy as sa
from billing_db import engine


@pytest.fixture
def alembic_engine():
    """pytest-alembic's override point: an empty database for each test."""
    eng = engine()
    with eng.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    yield eng
    eng.dispose()
