"""Listening to what sets a test database up, step by step: Django's migration
executor, Alembic's migration context and pytest-postgresql's template loader.

Each of them runs the user's own migrations or files; none offers a hook that a
plugin can join without editing the project (Django's progress callback belongs to the
``migrate`` command, Alembic's ``on_version_apply`` to ``env.py``). So each gets one
wrapper around the method that applies a step, installed while ``--seqdrift`` is on and
taken off again at the end of the run. The wrapper calls the original unchanged and
then tells a ``Recorder`` what was applied and on which connection; the recorder checks
the database and must never raise into the migration.

A library that is not imported yet is wrapped as soon as it is (``_PostImport``): a
project that does not use Django pays nothing for it, and one that imports Alembic
only inside a fixture is still followed.

No pytest here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from pytest_seqdrift.plugin.history import Step


class Recorder(Protocol):
    def step_applied(self, connection: Any, step: Step, may_drift: bool = True) -> None:
        """A step was applied on ``connection``: check the database now (unless the
        step cannot make drift)."""

    def run_ended(self, connection: Any, description: str) -> None:
        """A run of steps (``migrate``, an Alembic upgrade) ended on ``connection``."""


Patch = Callable[[ModuleType, Recorder], Callable[[], None]]  # returns its undo


# -- Django ------------------------------------------------------------------------------

# Operations that cannot make a column collide: they create empty tables, remove
# things, rename or only touch the model state. A migration made of nothing else is
# not checked after (a check costs about as much as a small migration); any other
# operation, a subclass of these or an operation of another library included, is.
_DJANGO_SAFE = (
    "CreateModel",
    "DeleteModel",
    "RemoveField",
    "RemoveIndex",
    "RemoveConstraint",
    "AddIndex",
    "RenameModel",
    "RenameField",
    "RenameIndex",
    "AlterModelTable",
    "AlterModelTableComment",
    "AlterModelOptions",
    "AlterModelManagers",
    "AlterIndexTogether",
    "AlterOrderWithRespectTo",
)


def _field_safe(field: Any, *, new_table: bool) -> bool:
    """A column that cannot make drift: no ``db_default`` (it may draw from a sequence
    that other tables use), not generated from other columns, and -- added to a table
    that may hold rows -- not an AutoField. A new table is empty, and so is its own
    sequence's range."""
    names = {cls.__name__ for cls in type(field).__mro__}
    if "GeneratedField" in names or (not new_table and "AutoFieldMixin" in names):
        return False
    not_provided = importlib.import_module("django.db.models.fields").NOT_PROVIDED
    return getattr(field, "db_default", not_provided) is not_provided


def _operation_safe(operation: Any, operations: ModuleType) -> bool:
    cls = type(operation)
    if cls is getattr(operations, "SeparateDatabaseAndState", None):
        return all(_operation_safe(op, operations) for op in operation.database_operations)
    if cls is getattr(operations, "AddField", None):
        return _field_safe(operation.field, new_table=False)
    if cls is getattr(operations, "AlterField", None):
        # a column that draws from no sequence Django knows of, and no new key on it:
        # where rows and a default set outside Django are already there, a key is what
        # would make the column judged, and maybe drifted, from now on
        field = operation.field
        return _field_safe(field, new_table=False) and not field.unique
    if cls is getattr(operations, "CreateModel", None):
        return all(_field_safe(field, new_table=True) for _, field in operation.fields)
    return any(cls is getattr(operations, name, None) for name in _DJANGO_SAFE)


def django_may_drift(migration: Any) -> bool:
    """Whether a Django migration may leave a column's sequence behind its ids: it has
    an operation that writes rows (``RunPython``, ``RunSQL``), makes a column an
    ``AutoField`` (or one with a ``db_default``, or generated), adds a unique key, or
    one this module does not know."""
    operations = importlib.import_module("django.db.migrations.operations")
    return not all(_operation_safe(op, operations) for op in migration.operations)


def _django_step(migration: Any, backwards: bool) -> Step:
    return Step(
        "migration",
        f"{migration.app_label}.{migration.name}",
        app=migration.app_label,
        backwards=backwards,
    )


def _following(method: Any, recorder: Recorder, *, backwards: bool) -> Any:
    """``MigrationExecutor.apply_migration`` (``unapply_migration``), then the recorder
    told of the migration -- unless it was only recorded as applied (``fake``)."""

    @functools.wraps(method)
    def follow(self: Any, state: Any, migration: Any, *args: Any, **kwargs: Any) -> Any:
        state = method(self, state, migration, *args, **kwargs)
        if not kwargs.get("fake", args[0] if args else False):
            step = _django_step(migration, backwards=backwards)
            recorder.step_applied(self.connection, step, django_may_drift(migration))
        return state

    return follow


def _patch_django(module: ModuleType, recorder: Recorder) -> Callable[[], None]:
    executor = module.MigrationExecutor
    apply, unapply, migrate = (
        executor.apply_migration,
        executor.unapply_migration,
        executor.migrate,
    )

    @functools.wraps(migrate)
    def migrate_(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = migrate(self, *args, **kwargs)
        recorder.run_ended(self.connection, f"Django migrate ({self.connection.alias!r})")
        return state

    executor.apply_migration = _following(apply, recorder, backwards=False)
    executor.unapply_migration = _following(unapply, recorder, backwards=True)
    executor.migrate = migrate_

    def undo() -> None:
        executor.apply_migration, executor.unapply_migration, executor.migrate = (
            apply,
            unapply,
            migrate,
        )

    return undo


# -- Alembic -----------------------------------------------------------------------------


def _alembic_step(info: Any) -> Step:
    script = getattr(info, "up_revision", None)
    message = " ".join(str(getattr(script, "doc", "") or "").split()) or None
    if message and len(message) > 72:
        message = message[:69].rstrip() + "..."
    return Step(
        "revision",
        str(info.up_revision_id),
        message=message,
        backwards=not info.is_upgrade,
    )


def _patch_alembic(module: ModuleType, recorder: Recorder) -> Callable[[], None]:
    context = module.MigrationContext
    run = context.run_migrations

    @functools.wraps(run)
    def run_migrations(self: Any, **kw: Any) -> None:
        if self.as_sql or self.connection is None:  # offline: nothing reaches a database
            run(self, **kw)
            return
        applied: list[Any] = []

        def on_version_apply(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
            if step.is_stamp:
                return
            applied.append(heads)
            recorder.step_applied(ctx.connection, _alembic_step(step))

        saved = self.on_version_apply_callbacks
        self.on_version_apply_callbacks = (*saved, on_version_apply)
        try:
            run(self, **kw)
        finally:
            self.on_version_apply_callbacks = saved
        if applied:
            heads = ", ".join(sorted(applied[-1])) or "base"
            recorder.run_ended(self.connection, f"Alembic migration to {heads}")

    context.run_migrations = run_migrations

    def undo() -> None:
        context.run_migrations = run

    return undo


# -- pytest-postgresql -------------------------------------------------------------------


def load_label(load: Any) -> str:
    """What pytest-postgresql's ``load=`` item is called in a report: a file's path
    (relative to the working directory when it lies below it), an import path as
    given, a callable's dotted name."""
    if isinstance(load, Path):
        try:
            return str(load.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(load)
    if isinstance(load, str):
        return load
    func = getattr(load, "func", load)  # functools.partial
    name = getattr(func, "__qualname__", None) or type(func).__name__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


def _patch_janitor(module: ModuleType, recorder: Recorder) -> Callable[[], None]:
    janitor = module.DatabaseJanitor
    load = janitor.load

    @functools.wraps(load)
    def load_(self: Any, item: Any) -> None:
        load(self, item)
        psycopg = importlib.import_module("psycopg")
        try:
            conn = psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=self.dbname,
                autocommit=True,
                application_name="pytest-seqdrift",
            )
        except psycopg.Error:
            return  # the loader could connect, with other settings: nothing to say here
        try:
            recorder.step_applied(conn, Step("load", load_label(item)))
        finally:
            conn.close()  # pytest-postgresql creates databases from this template next

    janitor.load = load_

    def undo() -> None:
        janitor.load = load

    return undo


PATCHES: dict[str, Patch] = {
    "django.db.migrations.executor": _patch_django,
    "alembic.runtime.migration": _patch_alembic,
    "pytest_postgresql.janitor": _patch_janitor,
}


# -- installing them, now or when their module is first imported -------------------------


class _PostImport(importlib.abc.MetaPathFinder):
    """Patches a watched module right after it is first executed."""

    def __init__(self, listening: Listening) -> None:
        self.listening = listening

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.listening.waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return None  # an old-style loader: leave it to its own finder, unfollowed
        listening = self.listening

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            listening.patch(fullname, module)

        # a loader instance of its own: another import of the same file is unaffected
        wrapped = _Loader(loader, exec_and_patch)
        spec.loader = wrapped
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, exec_module: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._exec = exec_module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create: Any = getattr(self._inner, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._exec(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks
        return getattr(self._inner, name)


class Listening:
    """The patches in place for one test run; ``stop()`` takes every one off."""

    def __init__(self, recorder: Recorder, patches: dict[str, Patch] | None = None) -> None:
        self.recorder = recorder
        self.patches = dict(PATCHES if patches is None else patches)
        self.waiting = set(self.patches)
        self.undo: list[Callable[[], None]] = []
        self.finder = _PostImport(self)
        for name in list(self.waiting):
            module = sys.modules.get(name)
            if module is not None:
                self.patch(name, module)
        if self.waiting:
            sys.meta_path.insert(0, self.finder)

    def patch(self, name: str, module: ModuleType) -> None:
        if name not in self.waiting:
            return
        self.waiting.discard(name)
        with contextlib.suppress(AttributeError):  # a release without what we wrap
            self.undo.append(self.patches[name](module, self.recorder))
        if not self.waiting and self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)

    def stop(self) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        while self.undo:
            self.undo.pop()()
        self.waiting = set()
