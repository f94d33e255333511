"""Which database a test uses, and whether it is a test database the probe may write to.

No pytest here: the fixture in ``fixtures.py`` gathers what pytest knows and asks this
module; the answer is a ``Located`` database or None.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Fixtures of other plugins whose value is a connection to a database that plugin created
# for the tests (so the probe may write to it).
TEST_DATABASE_FIXTURES = ("postgresql",)

# Fixtures that mark a test as a migration test: django-test-migrations' ``migrator`` and
# pytest-alembic's ``alembic_runner`` (its built-in tests use it too).
MIGRATION_FIXTURES = ("migrator", "migrator_factory", "alembic_runner")

# pytest-django's fixtures that give a test the database (the ``django_db`` marker does too).
DJANGO_DATABASE_FIXTURES = (
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
    "live_server",
    "migrator",
    "migrator_factory",
)

# pytest-alembic's override point: the user's engine for the migration tests.
ALEMBIC_ENGINE_FIXTURE = "alembic_engine"

# Fixtures that mean "this test uses a database", for ``seqdrift_scope = all``.
DATABASE_FIXTURES = (
    *TEST_DATABASE_FIXTURES,
    *MIGRATION_FIXTURES,
    "seqdrift_connection",
    *DJANGO_DATABASE_FIXTURES,
    "django_db_setup",
    ALEMBIC_ENGINE_FIXTURE,
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


def migration_fixture(fixturenames: Iterable[str]) -> str | None:
    """The migration fixture a test uses, if any."""
    names = set(fixturenames)
    return next((name for name in MIGRATION_FIXTURES if name in names), None)


def uses_database(fixturenames: Iterable[str]) -> bool:
    names = set(fixturenames)
    return any(name in names for name in DATABASE_FIXTURES)


def postgresql_fixture_kind(func: Any) -> str | None:
    """``"process"`` for a fixture made by pytest-postgresql's ``postgresql_proc`` or
    ``postgresql_noproc`` factory, ``"client"`` for one made by ``postgresql`` (whatever
    the user named it), else None."""
    module = getattr(func, "__module__", None) or ""
    if module in ("pytest_postgresql.factories.process", "pytest_postgresql.factories.noprocess"):
        return "process"
    if module == "pytest_postgresql.factories.client":
        return "client"
    return None


def wrap(value: Any, source: str) -> list[Located]:
    """The databases of a ``seqdrift_connection`` value: None, one connection or
    ``Located``, or a list of them (pytest-django's aliases). A user's fixture returns
    plain connections: its databases are the user's test databases by definition."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [found for v in value for found in wrap(v, source)]
    if isinstance(value, Located):
        return [value]
    return [Located(value, source, test_database=True)]


# -- pytest-django -----------------------------------------------------------------------


def django_ready() -> bool:
    """Django is imported and its settings are configured (pytest-django did it)."""
    conf = sys.modules.get("django.conf")
    return conf is not None and bool(conf.settings.configured)


def django_aliases(databases: Iterable[str] | str | None) -> list[str]:
    """The aliases a test may use: pytest-django's ``django_db(databases=...)`` (None:
    ``default``; ``"__all__"``: every alias)."""
    connections = importlib.import_module("django.db").connections
    if databases is None:
        return ["default"]
    if databases == "__all__":
        return list(connections)
    return [databases] if isinstance(databases, str) else list(databases)


def django_databases(databases: Iterable[str] | str | None) -> list[Located]:
    """pytest-django's test databases for these aliases: every PostgreSQL one. Where none
    is PostgreSQL the first is returned all the same, so that the check says in one
    sentence that it checks PostgreSQL only, instead of checking nothing in silence."""
    connections = importlib.import_module("django.db").connections
    found = [
        Located(connections[alias], f"pytest-django database {alias!r}", test_database=True)
        for alias in django_aliases(databases)
    ]
    postgres = [f for f in found if f.connection.vendor == "postgresql"]
    return postgres or found[:1]


def django_test_case_databases(item: Any) -> list[Located]:
    """The databases of a test written as a Django ``TestCase`` or ``TransactionTestCase``
    method (no fixture or marker names them: the class's ``databases`` does)."""
    cls = getattr(item, "cls", None)
    test = sys.modules.get("django.test")
    if cls is None or test is None or not django_ready():
        return []
    if not (isinstance(cls, type) and issubclass(cls, test.TransactionTestCase)):
        return []
    return django_databases(getattr(cls, "databases", None))


def django_database_names() -> dict[str, str]:
    """Each Django alias's database name, as its connection stands now."""
    connections = importlib.import_module("django.db").connections
    return {alias: str(connections[alias].settings_dict.get("NAME")) for alias in connections}


def django_test_databases(names_before: dict[str, str]) -> list[Located]:
    """The PostgreSQL databases pytest-django has just set up for the tests: every
    alias whose connection now names another database than before (its test database:
    Django renames it there, also when it reuses one). An alias no test asked for keeps
    its own database; a test mirror is the database it mirrors."""
    connections = importlib.import_module("django.db").connections
    found = []
    for alias, name in django_database_names().items():
        wrapper = connections[alias]
        if wrapper.vendor != "postgresql" or wrapper.settings_dict.get("TEST", {}).get("MIRROR"):
            continue
        if name == names_before.get(alias):
            continue
        found.append(Located(wrapper, f"pytest-django test database {alias!r}", test_database=True))
    return found


def django_resets_sequences(marker: Any, fixturenames: Iterable[str]) -> bool:
    """pytest-django resets every sequence at this test's set-up:
    ``django_db(reset_sequences=True)`` or the ``django_db_reset_sequences`` fixture."""
    if "django_db_reset_sequences" in set(fixturenames):
        return True
    if marker is None:
        return False
    # django_db(transaction=False, reset_sequences=False, databases=None, ...)
    return bool(
        marker.kwargs.get("reset_sequences", marker.args[1] if len(marker.args) > 1 else False)
    )


def alembic_database(engine: Any) -> Located | None:
    """pytest-alembic's ``alembic_engine``: the database its migration tests run on."""
    if engine is None:
        return None
    return Located(engine, f"fixture {ALEMBIC_ENGINE_FIXTURE}", test_database=True)
