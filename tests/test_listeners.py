"""listeners.py: a check after every Alembic revision, pytest-postgresql load and
Django migration that may drift -- on real Alembic and pytest-postgresql, against the
test bed's server -- and nothing left behind when the run ends."""

from __future__ import annotations

import importlib
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from pytest_postgresql.janitor import DatabaseJanitor

from pytest_seqdrift.db.adapters import session_for
from pytest_seqdrift.plugin import listeners
from pytest_seqdrift.plugin.history import Step
from pytest_seqdrift.plugin.listeners import Listening, django_may_drift
from pytest_seqdrift.plugin.watch import Watcher

Conn = psycopg.Connection[Any]

ENV = """
from alembic import context

def callbacks(ctx, step, heads, run_args):
    context.config.attributes.setdefault("seen", []).append(step.up_revision_id)

with context.config.attributes["engine"].connect() as connection:
    context.configure(connection=connection, on_version_apply=callbacks)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = '''
"""{message}

Revision ID: {rev}
"""
from alembic import op

revision = {rev!r}
down_revision = {down!r}


def upgrade():
    op.execute({up!r})


def downgrade():
    op.execute({down_sql!r})
'''

REVISIONS = [
    (
        "0001",
        None,
        "create the plans",
        "CREATE TABLE plan (id serial PRIMARY KEY, name text)",
        "DROP TABLE plan",
    ),
    (
        "0002",
        "0001",
        "seed the plans",
        "INSERT INTO plan VALUES (1, 'free'), (2, 'team')",
        "DELETE FROM plan",
    ),
    (
        "0003",
        "0002",
        "add a column",
        "ALTER TABLE plan ADD COLUMN note text",
        "ALTER TABLE plan DROP COLUMN note",
    ),
]


@pytest.fixture
def alembic_config(tmp_path: Path, db: Conn) -> Iterator[Config]:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV)
    (tmp_path / "script.py.mako").write_text("")
    for rev, down, message, up, down_sql in REVISIONS:
        (tmp_path / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, message=message, up=up, down_sql=down_sql)
        )
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    info = db.info
    url = sa.URL.create(
        "postgresql+psycopg",
        username=info.user,
        host=info.host,
        port=info.port,
        database=info.dbname,
    )
    engine = sa.create_engine(url)
    config.attributes["engine"] = engine
    yield config
    engine.dispose()


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    watcher = Watcher(run_context=lambda: ("in the test", None))
    listening = Listening(watcher)
    try:
        yield watcher
    finally:
        listening.stop()


def test_every_alembic_revision_is_checked_inside_the_upgrade_s_transaction(
    alembic_config: Config, watcher: Watcher, db: Conn
) -> None:
    command.upgrade(alembic_config, "head")
    (database,) = watcher.histories
    history = watcher.histories[database]
    assert [s.label for s in history.steps] == [
        "revision 0001 (create the plans)",
        "revision 0002 (seed the plans)",
        "revision 0003 (add a column)",
    ]
    # the upgrade is one transaction: each check saw what the revisions before it did
    assert history.current is not None
    (finding,) = history.current.findings
    assert (finding.column.table, finding.first_collision) == ("plan", 1)
    assert history.origin(finding) == history.steps[1]
    # the run's end, with where it ran
    (run,) = watcher.take_runs()
    assert run.description == "Alembic migration to 0003, in the test"
    assert [f.column.table for f in run.report.findings] == ["plan"]
    # the project's own on_version_apply still ran, for every revision
    assert alembic_config.attributes["seen"] == ["0001", "0002", "0003"]
    assert session_for(db).database_id() == database


def test_a_downgrade_is_followed_too(alembic_config: Config, watcher: Watcher) -> None:
    command.upgrade(alembic_config, "head")
    command.downgrade(alembic_config, "0001")
    history = next(iter(watcher.histories.values()))
    assert [s.label for s in history.steps[3:]] == [
        "downgrading revision 0003 (add a column)",
        "downgrading revision 0002 (seed the plans)",
    ]
    assert history.current is not None
    assert history.current.findings == []  # the seeded rows went with the downgrade


def test_stopping_puts_alembic_back(alembic_config: Config) -> None:
    original = MigrationContext.run_migrations
    watcher = Watcher()
    listening = Listening(watcher)
    assert MigrationContext.run_migrations is not original
    listening.stop()
    assert MigrationContext.run_migrations is original
    command.upgrade(alembic_config, "head")
    assert watcher.histories == {}


def test_a_load_into_pytest_postgresql_s_template_is_checked_and_its_connection_closed(
    db: Conn, tmp_path: Path, watcher: Watcher
) -> None:
    seed = tmp_path / "seed.sql"
    seed.write_text(
        "CREATE TABLE currency (id serial PRIMARY KEY); INSERT INTO currency VALUES (3);"
    )
    info = db.info
    janitor = DatabaseJanitor(
        user=info.user, host=info.host, port=info.port, dbname=info.dbname, password=None
    )
    janitor.load(seed)
    (history,) = watcher.histories.values()
    (step,) = history.steps
    assert step == Step("load", str(seed))  # outside the working directory: as given
    assert history.current is not None
    assert [f.first_collision for f in history.current.findings] == [3]
    # the backend of a closed connection leaves pg_stat_activity a moment later
    deadline = time.monotonic() + 5
    while True:
        (open_connections,) = db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'pytest-seqdrift'"
        ).fetchone() or (None,)
        if open_connections == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert open_connections == 0


def test_a_failing_check_never_reaches_the_migration() -> None:
    watcher = Watcher()
    watcher.step_applied(object(), Step("migration", "shop.0001", app="shop"))
    (note,) = watcher.take_notes()
    assert note.startswith("could not check the database after migration shop.0001: ")
    assert watcher.histories == {}

    def broken_context() -> Any:
        raise RuntimeError("a bug of ours")

    watcher = Watcher(run_context=broken_context)
    watcher.run_ended(object(), "Alembic migration to 0002")
    assert watcher.take_notes() == [
        "could not check the database at the end of the Alembic migration to 0002: a bug of ours"
    ]


def test_a_module_imported_later_is_patched_when_it_is_first_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "seqdrift_late_module"
    (tmp_path / f"{name}.py").write_text("def apply():\n    return 'original'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[str] = []

    def patch(module: Any, recorder: Any) -> Any:
        original = module.apply

        def patched() -> Any:
            seen.append("patched")
            return original()

        module.apply = patched
        return lambda: setattr(module, "apply", original)

    listening = Listening(Watcher(), patches={name: patch})
    try:
        assert name not in sys.modules
        module = importlib.import_module(name)
        assert module.apply() == "original"
        assert seen == ["patched"]
        assert listening.finder not in sys.meta_path  # nothing left to wait for
    finally:
        listening.stop()
        sys.modules.pop(name, None)
    assert module.apply() == "original"
    assert seen == ["patched"]


def test_load_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sql").mkdir()
    assert listeners.load_label(tmp_path / "sql" / "seed.sql") == "sql/seed.sql"
    assert listeners.load_label("tests.loaders:load") == "tests.loaders:load"
    assert listeners.load_label(test_load_labels) == f"{__name__}.test_load_labels"


def _migration(*operations: Any) -> Any:
    from django.db import migrations

    migration = migrations.Migration("0002_x", "shop")
    migration.operations = list(operations)
    return migration


def test_which_django_migrations_are_checked_after() -> None:
    from django.db import migrations, models

    safe = [
        migrations.CreateModel("Plan", [("id", models.BigAutoField(primary_key=True))]),
        migrations.AddField("plan", "note", models.TextField(default="")),
        # a wider column, a new default, an index: no sequence, no key
        migrations.AlterField("plan", "note", models.TextField(default="-", db_index=True)),
        migrations.AddIndex("plan", models.Index(fields=["note"], name="plan_note")),
        migrations.RenameField("plan", "note", "remark"),
        migrations.RemoveField("plan", "remark"),
        migrations.DeleteModel("Plan"),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RemoveIndex("plan", "plan_note")]
        ),
    ]
    assert not django_may_drift(_migration(*safe))
    unsafe = [
        migrations.RunPython(migrations.RunPython.noop),
        migrations.RunSQL("INSERT INTO plan VALUES (7)"),
        migrations.AlterField("plan", "id", models.AutoField(primary_key=True)),
        # a key on a column whose rows (and default, set by RunSQL) are already there
        migrations.AlterField("plan", "note", models.TextField(unique=True)),
        migrations.AlterField("plan", "code", models.IntegerField(primary_key=True)),
        migrations.AlterField("plan", "code", models.BigIntegerField(db_default=models.Value(1))),
        migrations.AddField("plan", "number", models.BigAutoField(primary_key=True)),
        migrations.AddConstraint(
            "plan", models.UniqueConstraint(fields=["id", "note"], name="plan_id_note")
        ),
        migrations.AlterUniqueTogether("plan", {("id", "note")}),
        migrations.SeparateDatabaseAndState(database_operations=[migrations.RunSQL("SELECT 1")]),
    ]
    for operation in unsafe:
        assert django_may_drift(_migration(*safe, operation)), operation


def test_a_source_printed_by_a_revision_message_stays_short() -> None:
    info = type("Info", (), {"up_revision_id": "abc", "is_upgrade": True})()
    info.up_revision = type("Script", (), {"doc": "x" * 100})()
    step = listeners._alembic_step(info)
    assert step.message is not None
    assert len(step.message) == 72
    assert step.message.endswith("...")
    assert textwrap.shorten(step.label, 200) == step.label
