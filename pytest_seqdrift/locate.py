"""Which database a test uses, and whether it is a test database the probe may write to.

No pytest here: the fixture in ``fixtures.py`` gathers what pytest knows and asks this
module; the answer is a ``Located`` database or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Fixtures of other plugins whose value is a connection to a database that plugin created
# for the tests (so the probe may write to it).
TEST_DATABASE_FIXTURES = ("postgresql",)

# Fixtures that mark a test as a migration test: django-test-migrations' ``migrator`` and
# pytest-alembic's ``alembic_runner`` (its built-in tests use it too).
MIGRATION_FIXTURES = ("migrator", "migrator_factory", "alembic_runner")

# Fixtures that mean "this test uses a database", for ``seqdrift_scope = all``.
DATABASE_FIXTURES = (
    *TEST_DATABASE_FIXTURES,
    *MIGRATION_FIXTURES,
    "seqdrift_connection",
    "db",
    "transactional_db",
    "django_db_setup",
    "alembic_engine",
)

NO_DATABASE_HELP = (
    "pytest-seqdrift found no database for this test: override the `seqdrift_connection` "
    "fixture in conftest.py to return your test database's connection, use "
    "pytest-postgresql's `postgresql` fixture, or pass --seqdrift-dsn / set SEQDRIFT_DSN"
)


@dataclass(frozen=True)
class Located:
    """A database connection and what is known about it."""

    connection: Any
    source: str  # where it came from, for reports: "fixture postgresql", "--seqdrift-dsn", ...
    test_database: bool  # created for the tests: the probe may write to it (and undo it)


def is_migration_test(fixturenames: list[str] | tuple[str, ...]) -> bool:
    return any(name in fixturenames for name in MIGRATION_FIXTURES)


def uses_database(fixturenames: list[str] | tuple[str, ...]) -> bool:
    return any(name in fixturenames for name in DATABASE_FIXTURES)


def wrap(value: Any, source: str) -> Located | None:
    """A user's ``seqdrift_connection`` returns a plain connection (or None): it is the
    user's test database by definition."""
    if value is None or isinstance(value, Located):
        return value
    return Located(value, source, test_database=True)
