import os

import pytest
from alembic import command
from alembic.config import Config
from pytest_postgresql import factories
from sqlalchemy import URL, create_engine
from sqlalchemy.orm import Session

postgresql_proc = factories.postgresql_proc()
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def engine(postgresql):
    info = postgresql.info
    url = URL.create(
        f"postgresql+{os.environ.get('PLANS_DRIVER', 'psycopg')}",
        username=info.user,
        password=info.password,
        host=info.host,
        port=info.port,
        database=info.dbname,
    )
    config = Config("alembic.ini")
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False))
    command.upgrade(config, "head")
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with Session(engine) as session:
        yield session
