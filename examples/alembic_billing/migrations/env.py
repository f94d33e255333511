from alembic import context
from billing_db import engine

# pytest-alembic hands over its engine; from the command line, connect to PG*
connectable = context.config.attributes.get("connection") or engine()

with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
