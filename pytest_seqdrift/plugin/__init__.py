"""The pytest plugin (``pytest11`` entry point): options, the marker, and -- only when
``--seqdrift`` is on -- the ``SeqdriftPlugin`` that checks the test databases.

With ``--seqdrift`` the plugin

* checks every test database once its set-up is complete, before the first test body
  that receives it: pytest-django's databases once ``django_db_setup`` has migrated
  them, any other database it can locate (pytest-postgresql's, ``alembic_engine``, the
  user's ``seqdrift_connection``) at the end of the first set-up that hands it to a
  test. Drift found there belongs to the set-up: it is reported once, as an error at
  the set-up of the test that first receives it, naming where the database came from
  (``setups``);
* follows every Django migration, Alembic revision and pytest-postgresql load
  (``listeners``, ``watch``), checking after each, so that a report names the step
  that introduced the drift;
* probes migration tests after their body (marked, using ``migrator`` or
  ``alembic_runner``, or running migrations themselves), and with
  ``--seqdrift-scope=all`` every test that uses a database (``probing``);
* does the same for databases handed to an async test as async objects (asyncpg,
  psycopg's ``AsyncConnection``, SQLAlchemy's asyncio engine), on the test's own event
  loop as its coroutine runs (``asynchronous``);
* fails the test (or warns) with what each phase found, and sends it to the
  controller's summary (``outcome``, ``summary``).

Off, it costs nothing: no hook of ``SeqdriftPlugin`` is registered (``hooks``).

This module is what pytest loads: it exposes the hooks and the fixtures
(``fixtures``); the work is done in the modules named above.
"""

from __future__ import annotations

from pytest_seqdrift.errors import SequenceDriftError
from pytest_seqdrift.plugin.fixtures import (
    assert_sequences_consistent,
    async_assert_sequences_consistent,
    async_seqdrift_snapshot,
    seqdrift_connection,
    seqdrift_snapshot,
)
from pytest_seqdrift.plugin.hooks import SeqdriftPlugin, pytest_addoption, pytest_configure
from pytest_seqdrift.plugin.outcome import SeqdriftWarning

__all__ = [
    "SeqdriftPlugin",
    "SeqdriftWarning",
    "SequenceDriftError",
    "assert_sequences_consistent",
    "async_assert_sequences_consistent",
    "async_seqdrift_snapshot",
    "pytest_addoption",
    "pytest_configure",
    "seqdrift_connection",
    "seqdrift_snapshot",
]
