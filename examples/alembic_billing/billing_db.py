"""The database, from libpq's environment variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE) as psql reads them. BILLING_DRIVER picks the SQLAlchemy dialect:
psycopg (psycopg 3, the default) or psycopg2. BILLING_IDS=serial gives the tables serial
primary keys instead of identity columns."""

import os

import sqlalchemy as sa


def url() -> sa.URL:
    return sa.URL.create(
        f"postgresql+{os.environ.get('BILLING_DRIVER', 'psycopg')}",
        username=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD") or None,
        host=os.environ.get("PGHOST", "localhost"),
        port=int(os.environ.get("PGPORT", "5432")),
        database=os.environ.get("PGDATABASE", "billing"),
    )


def engine() -> sa.Engine:
    return sa.create_engine(url())


def id_column() -> sa.Column:
    if os.environ.get("BILLING_IDS", "identity") == "serial":
        return sa.Column("id", sa.Integer, primary_key=True)  # SERIAL
    return sa.Column("id", sa.Integer, sa.Identity(), primary_key=True)
