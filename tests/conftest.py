from __future__ import annotations

from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories

from pytest_seqdrift.server import find_pg_ctl, root_safe

pytest_plugins = ["pytester"]

# small projects that tests/test_plugin.py runs with pytester, not tests of their own
collect_ignore = ["examples"]

postgresql_proc = factories.postgresql_proc(executable=root_safe(find_pg_ctl()))
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def db(postgresql: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A fresh database of our own, in autocommit mode like a migration leaves it."""
    postgresql.autocommit = True
    return postgresql
