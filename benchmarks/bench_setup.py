"""What does ``--seqdrift`` add to a Django project's test set-up and test suite?

With ``--seqdrift`` the plugin follows every Django migration as pytest-django applies
it, checking the whole database (read-only) after each one whose operations could make
drift, and checks each test database once after ``django_db_setup``. In one run, on one
throwaway server, with generated Django projects (written to a temporary directory; the
database settings come from libpq's environment variables, PGHOST, PGPORT, PGUSER,
PGDATABASE):

(a) per migration, on a 100-table schema: one app whose migrations create 100 models
    (4 CreateModel migrations), then 50 RunPython migrations (a bulk_create of 10 rows
    with ids, then a correct setval: no drift) and 5 AlterField ones. The set-up of one
    trivial ``db`` test (``--create-db``: create the test database, migrate it) is timed
    with and without ``--seqdrift``, alternately; the overhead per migration is the
    difference of the medians over the migrations the plugin followed, next to what the
    plugin spends in its hooks, timed in the test process. Target: < 10 ms per migration.
(b) a 300-migration project that builds up to 100 tables with a mix of 40 %
    CreateModel/AddField, 30 % AlterField, 20 % RunPython data migrations and 10 %
    RunSQL/AddConstraint: the added seconds and their share of the set-up time.
(c) a pytest-django suite of 300 tests over the models of (a), each doing a few ORM
    queries and inserts inside the ``db`` fixture's transaction (nothing drifts): the wall
    time of ``pytest`` against ``pytest --seqdrift`` (default scope), alternately, and for
    information ``--seqdrift-scope=all``. Target: --seqdrift adds < 5 % of wall time.

Ratios are taken against baselines measured in the same run: on this shared 2-core
machine absolute times drift by ±10-15 % between runs. ``--load`` keeps every core busy
with spinning processes of the script's own during the measurements (they end with it).
When the per-migration target is not met (or with ``--profile``), one run of (a) is
profiled inside the plugin's hooks and the top entries are printed.

    python benchmarks/bench_setup.py                    # (a), (b), (c), quiet
    python benchmarks/bench_setup.py --load             # the same, both cores kept busy
    python benchmarks/bench_setup.py --skip b c --repeat 7 --profile

It starts a throwaway PostgreSQL of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import psycopg
from bench_check import cpu_load, timed  # the same median of warm runs; the same load

from pytest_seqdrift import check
from pytest_seqdrift.testbed import throwaway_server

MIGRATION_TARGET_MS = 10.0  # (a): added per migration on a 100-table schema
SUITE_TARGET = 0.05  # (c): --seqdrift adds under 5 % of the suite's wall time

APP = "benchapp"
ID_FIELD = (
    '("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, '
    'verbose_name="ID"))'
)
# Django 5.1 renamed CheckConstraint(check=) to condition=
CHECK_KEYWORD = "condition" if django.VERSION >= (5, 1) else "check"

# -- the generated Django project ------------------------------------------------------


@dataclass
class Model:
    name: str  # "M7"
    fields: dict[str, str]  # field name -> its code, the same in migrations and models.py
    constraints: list[str] = field(default_factory=list)

    @property
    def table(self) -> str:
        return f"{APP}_{self.name.lower()}"


@dataclass
class Project:
    """Migrations generated step by step, and the models they end with."""

    models: dict[str, Model] = field(default_factory=dict)
    migrations: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # operation -> migrations
    loads: int = 0  # rows-with-ids loads so far: each gets ids above every earlier one

    def add(self, kind: str, operations: list[str], helpers: list[str] | None = None) -> None:
        number = len(self.migrations) + 1
        self.migrations.append((f"{number:04d}_{kind.lower()}", operations, helpers or []))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    # each of these adds one migration
    def create(self, numbers: list[int]) -> None:
        ops = []
        for n in numbers:
            fields = {
                "name": "models.CharField(max_length=50)",
                "value": "models.IntegerField(default=0)",
            }
            if n % 5 == 0 and f"M{n - 1}" in self.models:  # some foreign keys, as real apps
                fields["parent"] = (
                    f'models.ForeignKey("{APP}.M{n - 1}", null=True, on_delete=models.CASCADE)'
                )
            model = self.models[f"M{n}"] = Model(f"M{n}", fields)
            listed = ",\n".join(
                [f"        {ID_FIELD}", *(f'        ("{k}", {v})' for k, v in fields.items())]
            )
            ops.append(
                f'migrations.CreateModel(\n    name="{model.name}",\n    fields=[\n{listed},\n    ],\n)'
            )
        self.add("CreateModel", ops)

    def add_field(self, model: Model) -> None:
        name = f"extra_{len(model.fields)}"
        code = model.fields[name] = "models.IntegerField(null=True)"
        self.add(
            "AddField",
            [
                f'migrations.AddField(model_name="{model.name.lower()}", name="{name}", field={code})'
            ],
        )

    def alter_field(self, model: Model, sql: bool) -> None:
        """A wider column (ALTER TABLE), or a new help text (no SQL at all)."""
        if sql:
            width = int(model.fields["name"].split("=")[1].rstrip(")")) + 10
            name, code = "name", f"models.CharField(max_length={width})"
        else:
            name, code = (
                "value",
                f'models.IntegerField(default=0, help_text="v{len(self.migrations)}")',
            )
        model.fields[name] = code
        self.add(
            "AlterField",
            [
                f'migrations.AlterField(model_name="{model.name.lower()}", name="{name}", field={code})'
            ],
        )

    def run_python(self, model: Model) -> None:
        """Rows copied in with their ids, then the sequence set past them: no drift."""
        self.loads += 1
        base = 1000 * self.loads
        helper = textwrap.dedent(
            f'''
            def load_rows(apps, schema_editor):
                model = apps.get_model("{APP}", "{model.name}")
                model.objects.bulk_create(
                    model(id={base} + i, name="row %d" % i, value=i) for i in range(1, 11)
                )
                table = model._meta.db_table
                with schema_editor.connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                        "(SELECT max(id) FROM " + table + "))",
                        [table],
                    )
            '''
        )
        self.add(
            "RunPython", ["migrations.RunPython(load_rows, migrations.RunPython.noop)"], [helper]
        )

    def run_sql(self, model: Model) -> None:
        """A row inserted through the sequence."""
        self.add(
            "RunSQL",
            [
                f"migrations.RunSQL(\"INSERT INTO {model.table} (name, value) VALUES ('sql', 1)\", "
                "migrations.RunSQL.noop)"
            ],
        )

    def add_constraint(self, model: Model) -> None:
        code = (
            f"models.CheckConstraint({CHECK_KEYWORD}=models.Q(value__gte=0), "
            f'name="{model.table}_value_{len(self.migrations)}")'
        )
        model.constraints.append(code)
        self.add(
            "AddConstraint",
            [f'migrations.AddConstraint(model_name="{model.name.lower()}", constraint={code})'],
        )

    def write(self, root: Path, tests: int = 0) -> None:
        (root / "pytest.ini").write_text(PYTEST_INI)
        (root / "conftest.py").write_text(CONFTEST)
        (root / "benchsite").mkdir()
        (root / "benchsite" / "__init__.py").write_text("")
        (root / "benchsite" / "settings.py").write_text(SETTINGS)
        app = root / APP
        (app / "migrations").mkdir(parents=True)
        (app / "__init__.py").write_text("")
        (app / "migrations" / "__init__.py").write_text("")
        previous = None
        for name, operations, helpers in self.migrations:
            deps = f'("{APP}", "{previous}")' if previous else ""
            ops = "".join(textwrap.indent(op, " " * 8) + ",\n" for op in operations)
            (app / "migrations" / f"{name}.py").write_text(
                "from django.db import migrations, models\n"
                + "".join(helpers)
                + "\n\nclass Migration(migrations.Migration):\n"
                + ("    initial = True\n" if previous is None else "")
                + f"    dependencies = [{deps}]\n    operations = [\n{ops}    ]\n"
            )
            previous = name
        classes = []
        for model in self.models.values():
            lines = [f"class {model.name}(models.Model):"]
            lines += [f"    {k} = {v}" for k, v in model.fields.items()]
            if model.constraints:
                lines += ["", "    class Meta:", "        constraints = ["]
                lines += [f"            {c}," for c in model.constraints]
                lines += ["        ]"]
            classes.append("\n".join(lines))
        (app / "models.py").write_text(
            "from django.db import models\n\n\n" + "\n\n\n".join(classes) + "\n"
        )
        folder = root / "tests"
        folder.mkdir()
        (folder / "test_setup.py").write_text(
            "def test_setup(db):\n    pass  # only the set-up: create the test database, migrate\n"
        )
        (folder / "test_suite.py").write_text(SUITE.format(tests=tests, models=len(self.models)))


def project_a(models: int, loads: int, alters: int) -> Project:
    """(a): every model created first, then the data migrations, AlterFields among them."""
    p = Project()
    per = -(-models // 4)
    for first in range(1, models + 1, per):
        p.create(list(range(first, min(models, first + per - 1) + 1)))
    every = max(1, loads // max(1, alters))
    done = 0
    for j in range(loads):
        p.run_python(p.models[f"M{j % models + 1}"])
        if (j + 1) % every == 0 and done < alters:
            p.alter_field(p.models[f"M{(7 * done) % models + 1}"], sql=True)
            done += 1
    return p


# one block of ten migrations: 4 CreateModel/AddField, 3 AlterField, 2 RunPython, 1
# RunSQL or AddConstraint
BLOCK = ["C", "A", "C", "P", "C", "A", "S", "C", "P", "A"]


def project_b(migrations: int, models: int) -> Project:
    """(b): a project grown over time: models created along the way (one per
    CreateModel migration), altered, loaded with data and constrained, at random but
    seeded: the same project every run."""
    rng = random.Random(6)
    p = Project()
    slots = sum(BLOCK[i % len(BLOCK)] == "C" for i in range(migrations))
    # the C slots past the models' number add a field instead: every k-th, spread out
    k = slots // (slots - models) if slots > models else 0
    c = 0
    for i in range(migrations):
        kind = BLOCK[i % len(BLOCK)]
        existing = list(p.models.values())
        if kind == "C":
            c += 1
            if existing and (len(p.models) >= models or (k and c % k == 0)):
                p.add_field(rng.choice(existing))
            else:
                p.create([len(p.models) + 1])
        elif kind == "A":
            p.alter_field(rng.choice(existing), sql=rng.random() < 0.5)
        elif kind == "P":
            p.run_python(rng.choice(existing))
        elif rng.random() < 0.5:
            p.run_sql(rng.choice(existing))
        else:
            p.add_constraint(rng.choice(existing))
    return p


PYTEST_INI = """[pytest]
DJANGO_SETTINGS_MODULE = benchsite.settings
pythonpath = .
addopts = -p no:cacheprovider -p no:randomly
"""

SETTINGS = f'''
"""The database comes from libpq's environment variables, as psql reads them."""
import os

SECRET_KEY = "bench-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["{APP}"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["PGDATABASE"],
        "HOST": os.environ["PGHOST"],
        "PORT": os.environ["PGPORT"],
        "USER": os.environ["PGUSER"],
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
    }}
}}
'''

SUITE = """
import pytest

from benchapp import models


@pytest.mark.parametrize("i", range({tests}))
def test_orm(db, i):
    model = getattr(models, f"M{{i % {models} + 1}}")
    before = model.objects.count()
    made = [model.objects.create(name=f"t{{i}}-{{k}}", value=k) for k in range(3)]
    assert model.objects.count() == before + 3
    assert model.objects.filter(value__gte=1, id__in=[m.id for m in made]).count() == 2
    model.objects.filter(id=made[0].id).update(value=10)
    assert model.objects.get(id=made[0].id).value == 10
"""

CONFTEST = '''
"""Times the test phases, and with --seqdrift what the plugin spends in its hooks."""
import cProfile
import gc
import json
import os
import time

OUT = os.environ["SEQDRIFT_BENCH_OUT"]
PROFILE = os.environ.get("SEQDRIFT_BENCH_PROFILE")
data = {
    "setup": [], "call": [], "teardown": [], "steps": [], "setup_check": [], "probes": [],
    "check_setup": [], "finish": [], "apply": [],
}
profiler = cProfile.Profile() if PROFILE else None
gc_state = {"depth": 0, "start": 0.0}
data["gc_inside"] = 0.0  # garbage collections run while inside the plugin's hooks
data["gc_all"] = 0.0


def _gc(phase, info):
    if phase == "start":
        gc_state["start"] = time.perf_counter()
        return
    elapsed = time.perf_counter() - gc_state["start"]
    data["gc_all"] += elapsed
    if gc_state["depth"]:
        data["gc_inside"] += elapsed


gc.callbacks.append(_gc)


def _timed(cls, name, key):
    original = getattr(cls, name, None)
    if original is None:  # the plugin changed: say so rather than time nothing in silence
        data.setdefault("missing", []).append(f"{cls.__name__}.{name}")
        return
    plugin = key != "apply"  # the plugin's own work: profiled, its collections counted

    def timed(*args, **kwargs):
        outermost = plugin and gc_state["depth"] == 0  # SetupChecks.check nests in check_django
        gc_state["depth"] += plugin
        if outermost and profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            gc_state["depth"] -= plugin
            if outermost and profiler is not None:
                profiler.disable()
            # a step: (seconds, checked?); may_drift is its third argument
            may_drift = kwargs.get("may_drift", args[3] if len(args) > 3 else True)
            data[key].append([elapsed, bool(may_drift)] if key == "steps" else elapsed)

    setattr(cls, name, timed)


def pytest_configure(config):
    data["marks"] = {"configure": time.time()}  # wall-clock marks, to split the run's time
    from django.db.migrations.migration import Migration

    _timed(Migration, "apply", "apply")  # Django's own work in each migration, both ways
    if config.getoption("seqdrift", default=None) is None:
        return
    from pytest_seqdrift.plugin.outcome import Reporter
    from pytest_seqdrift.plugin.probing import Prober
    from pytest_seqdrift.plugin.setups import SetupChecks
    from pytest_seqdrift.plugin.watch import Watcher

    _timed(Watcher, "step_applied", "steps")  # after each migration: the check (or not)
    _timed(SetupChecks, "check_django", "setup_check")  # once: the test database
    _timed(Prober, "probe", "probes")  # after a probed test's body
    # at each test's set-up: is its database checked yet? (and, nested, the check itself)
    _timed(SetupChecks, "check", "check_setup")
    _timed(Reporter, "finish", "finish")  # after each phase: its report


def pytest_collection_finish(session):
    data["marks"]["collected"] = time.time()


def pytest_runtest_logreport(report):
    assert report.passed, report.longreprtext
    data[report.when].append(report.duration)


def pytest_sessionfinish(session):
    data["marks"]["finished"] = time.time()
    plugin = session.config.pluginmanager.get_plugin("seqdrift-plugin")
    data["active"] = plugin is not None
    if plugin is not None:
        data["followed"] = plugin.watcher.steps
        data["checked"] = plugin.watcher.checks
    if profiler is not None:
        profiler.dump_stats(PROFILE)
    with open(OUT, "w") as f:
        json.dump(data, f)
'''

# -- running pytest --------------------------------------------------------------------


@dataclass
class Result:
    wall: float
    data: dict[str, Any]

    @property
    def first_setup(self) -> float:
        """The first test's set-up: django_db_setup (create, migrate) and the plugin's
        checks after each migration and of the test database."""
        return float(self.data["setup"][0])

    @property
    def in_steps(self) -> float:
        return sum(t for t, _ in self.data["steps"])

    @property
    def in_setup(self) -> float:
        return self.in_steps + sum(self.data["setup_check"])


def run_pytest(root: Path, env: dict[str, str], args: list[str], profile: str = "") -> Result:
    out = root / "times.json"
    out.unlink(missing_ok=True)
    extra = {"SEQDRIFT_BENCH_OUT": str(out)}
    if profile:
        extra["SEQDRIFT_BENCH_PROFILE"] = profile
    command = [sys.executable, "-m", "pytest", "-q", "--create-db", *args]
    started = time.time()
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=root, env={**env, **extra}, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    ended = time.time()
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    seqdrift = "--seqdrift" in args
    if seqdrift and "seqdrift: no sequence drift" not in done.stdout:
        raise SystemExit(f"--seqdrift did not report a clean run:\n{done.stdout}")
    data = json.loads(out.read_text())
    if data.get("missing"):
        raise SystemExit(f"not found in the plugin, to time: {', '.join(data['missing'])}")
    assert data["active"] == seqdrift, "the plugin must be active exactly with --seqdrift"
    marks = data["marks"]
    data["phases"] = {
        "start": marks["configure"] - started,  # Python, pytest, its plugins, Django
        "collect": marks["collected"] - marks["configure"],
        "run": marks["finished"] - marks["collected"],  # the set-up and the tests
        "exit": ended - marks["finished"],  # the test database dropped, the summary, exit
    }
    return Result(wall, data)


def alternate(
    root: Path,
    env: dict[str, str],
    variants: dict[str, list[str]],
    repeat: int,
    fewer: dict[str, int] | None = None,
) -> dict[str, list[Result]]:
    """Every variant ``repeat`` times (those in ``fewer`` fewer times, not warmed up), in
    turn after one warm-up run of each, so that a change in the machine's load evens out
    between them."""
    fewer = fewer or {}
    for name, args in variants.items():
        if name not in fewer:
            run_pytest(root, env, args)  # warm up: the OS's and the server's caches
    results: dict[str, list[Result]] = {name: [] for name in variants}
    for i in range(repeat):
        for name, args in variants.items():
            if i < fewer.get(name, repeat):
                results[name].append(run_pytest(root, env, args))
    return results


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s"


def target(name: str, value: float, op: str, bound: float, unit: str = "") -> bool:
    met = value < bound if op == "<" else value <= bound
    print(
        f"  {name:<52} {value:8.2f}{unit}  target {op} {bound:g}{unit}: {'met' if met else 'NOT MET'}"
    )
    return met


def describe_project(p: Project) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in p.kinds.items())
    return f"{len(p.migrations)} migrations ({kinds}), {len(p.models)} tables"


# -- (a) and (b): the set-up -----------------------------------------------------------


def setup_cost(
    root: Path, env: dict[str, str], p: Project, repeat: int, label: str
) -> tuple[dict[str, list[Result]], dict[str, float]]:
    p.write(root)
    test = ["tests/test_setup.py"]
    runs = alternate(root, env, {"without": test, "with": [*test, "--seqdrift"]}, repeat)
    off, on = runs["without"], runs["with"]
    followed = on[0].data["followed"]
    checked = on[0].data["checked"]
    s_off = med([r.first_setup for r in off])
    s_on = med([r.first_setup for r in on])
    w_off, w_on = med([r.wall for r in off]), med([r.wall for r in on])
    paired = med([b.first_setup - a.first_setup for a, b in zip(off, on, strict=True)])
    in_steps = med([r.in_steps for r in on])
    in_checked = med([sum(t for t, c in r.data["steps"] if c) for r in on])
    in_unchecked = med([sum(t for t, c in r.data["steps"] if not c) for r in on])
    in_setup_check = med([sum(r.data["setup_check"]) for r in on])
    added = s_on - s_off
    print(f"{label}: {describe_project(p)}")
    print(
        f"followed by --seqdrift: {followed} migrations, {checked} of them checked after "
        f"(the rest cannot make drift), then the test database once"
    )
    rows = [
        ("set-up of the first test, without", s_off, spread([r.first_setup for r in off])),
        ("set-up of the first test, --seqdrift", s_on, spread([r.first_setup for r in on])),
        ("wall time of the run, without", w_off, spread([r.wall for r in off])),
        ("wall time of the run, --seqdrift", w_on, spread([r.wall for r in on])),
    ]
    print(f"  {'':40} {'median':>9}   range over {repeat} runs")
    for name, value, rng in rows:
        print(f"  {name:40} {value:8.2f} s   {rng}")
    print(
        f"  added to the set-up: {added:.2f} s (median of the paired differences "
        f"{paired:.2f} s) = {added / s_off:.1%} of the set-up, {(w_on - w_off) / w_off:.1%} of the wall time"
    )
    print(
        f"  per migration followed: {added / followed * 1000:.1f} ms; per checked migration: "
        f"{added / max(1, checked) * 1000:.1f} ms"
    )
    print(
        f"  inside the plugin (timed in the test process): {in_steps:.2f} s after the "
        f"migrations = {in_checked / max(1, checked) * 1000:.1f} ms per checked one, "
        f"{in_unchecked / max(1, followed - checked) * 1000:.2f} ms per unchecked one; "
        f"the test database's check {in_setup_check * 1000:.0f} ms; "
        f"outside them {(added - in_steps - in_setup_check):+.2f} s"
    )

    def split(r: Result) -> dict[str, float]:
        apply = sum(r.data["apply"])
        return {
            "migrations (Django's apply)": apply,
            "the plugin's hooks": r.in_setup,
            "the rest of the set-up": r.first_setup - apply - r.in_setup,
            "garbage collection, all of the run": r.data["gc_all"],
        }

    parts = {k: {c: med([split(r)[c] for r in v]) for c in split(v[0])} for k, v in runs.items()}
    print(f"  the set-up, split (medians){'':13} {'without':>9} {'--seqdrift':>11} {'added':>8}")
    for c in parts["without"]:
        a, b = parts["without"][c], parts["with"][c]
        print(f"  {c:40} {a:8.2f}s {b:10.2f}s {b - a:+7.2f}s")
    numbers = {
        "added": added,
        "paired": paired,
        "setup": s_off,
        "followed": followed,
        "checked": checked,
        "in_steps": in_steps,
        "in_checked_ms": in_checked / max(1, checked) * 1000,
        "in_setup": in_steps + in_setup_check,
        "wall_share": (w_on - w_off) / w_off,
    }
    return runs, numbers


def part_a(
    env: dict[str, str], repeat: int, models: int, loads: int, alters: int
) -> dict[str, float]:
    print(f"\n## (a) --seqdrift per migration, {models}-table schema")
    with tempfile.TemporaryDirectory(prefix="seqdrift-bench-a-") as tmp:
        _, n = setup_cost(Path(tmp), env, project_a(models, loads, alters), repeat, "project")
    per = n["added"] / n["followed"] * 1000
    print("targets:")
    n["met"] = target(
        "ms added per migration, 100 tables (set-up)", per, "<", MIGRATION_TARGET_MS, " ms"
    )
    target(
        "(cross-check) ms per checked migration, in the hooks",
        n["in_checked_ms"],
        "<",
        MIGRATION_TARGET_MS,
        " ms",
    )
    return n


def part_b(env: dict[str, str], repeat: int, migrations: int, models: int) -> dict[str, float]:
    print(f"\n## (b) --seqdrift on a {migrations}-migration project")
    with tempfile.TemporaryDirectory(prefix="seqdrift-bench-b-") as tmp:
        _, n = setup_cost(Path(tmp), env, project_b(migrations, models), repeat, "project")
    print(
        f"  a {migrations}-migration set-up: {n['setup']:.1f} s, {n['added']:+.2f} s with --seqdrift "
        f"({n['added'] / n['setup']:.1%}; inside the plugin {n['in_setup']:.2f} s = "
        f"{n['in_setup'] / n['setup']:.1%})"
    )
    return n


# -- (c): a test suite -------------------------------------------------------------------


def part_c(
    env: dict[str, str], repeat: int, models: int, loads: int, alters: int, tests: int
) -> dict[str, float]:
    every_test = "pytest --seqdrift --seqdrift-scope=all"
    p = project_a(models, loads, alters)
    print(f"\n## (c) a pytest-django suite of {tests} tests on the schema of (a)")
    variants = {
        "pytest": ["tests/test_suite.py"],
        "pytest --seqdrift": ["tests/test_suite.py", "--seqdrift"],
        every_test: ["tests/test_suite.py", "--seqdrift", "--seqdrift-scope=all"],
    }
    with tempfile.TemporaryDirectory(prefix="seqdrift-bench-c-") as tmp:
        root = Path(tmp)
        p.write(root, tests)
        # scope=all is for information only: measured twice
        runs = alternate(root, env, variants, repeat, fewer={every_test: min(2, repeat)})
    for r in runs.values():
        assert len(r[0].data["call"]) == tests, len(r[0].data["call"])

    def part(r: Result) -> dict[str, float]:
        """The run's wall time, split: start, collection, the first set-up, the tests
        (every set-up but the first, every body and teardown but the last), the end (the
        test database dropped, pytest's summary, the interpreter's exit)."""
        d, ph = r.data, r.data["phases"]
        in_tests = sum(d["setup"][1:]) + sum(d["call"]) + sum(d["teardown"][:-1])
        return {
            "wall": r.wall,
            "start": ph["start"],
            "collect": ph["collect"],
            "first set-up": r.first_setup,
            "tests": in_tests,
            "end": ph["run"] - r.first_setup - in_tests + ph["exit"],
        }

    table = {k: {c: med([part(r)[c] for r in v]) for c in part(v[0])} for k, v in runs.items()}
    columns = list(next(iter(table.values())))
    print(f"  {'':40}" + "".join(f"{c:>13}" for c in columns) + "   wall range (runs)")
    for k, row in table.items():
        print(
            f"  {k:40}"
            + "".join(f"{row[c]:12.2f}s" for c in columns)
            + f"   {spread([r.wall for r in runs[k]])} ({len(runs[k])})"
        )
    base, on, every = table["pytest"], table["pytest --seqdrift"], table[every_test]
    print(f"  {'--seqdrift adds':40}" + "".join(f"{on[c] - base[c]:+12.2f}s" for c in columns))
    added = on["wall"] - base["wall"]
    pairs = list(zip(runs["pytest"], runs["pytest --seqdrift"], strict=True))
    paired = med([b.wall - a.wall for a, b in pairs])
    # where the plugin works: the set-up and the tests (start, collection and the end are
    # the same code both ways, and as noisy as the rest of the machine)
    worked = [
        (part(b)["first set-up"] + part(b)["tests"]) - (part(a)["first set-up"] + part(a)["tests"])
        for a, b in pairs
    ]
    per_test = (on["tests"] - base["tests"]) / tests
    in_probe = med([sum(r.data["probes"]) for r in runs[every_test]]) / tests
    on_runs = runs["pytest --seqdrift"]
    in_known = med([sum(r.data["check_setup"]) - sum(r.data["setup_check"]) for r in on_runs])
    in_finish = med([sum(r.data["finish"]) for r in on_runs])
    print(
        f"  --seqdrift adds {added:.2f} s = {added / base['wall']:.1%} of the wall time; of it the "
        f"set-up {on['first set-up'] - base['first set-up']:+.2f} s, each test "
        f"{per_test * 1000:+.2f} ms (a test takes {base['tests'] / tests * 1000:.2f} ms)"
    )
    print(
        f"  the same, as the median of the {len(pairs)} paired differences: the wall time "
        f"{paired:+.2f} s = {paired / base['wall']:.1%}; the set-up and the tests only "
        f"{med(worked):+.2f} s = {med(worked) / base['wall']:.1%} of the wall time"
    )
    print(
        f"  inside the plugin at each test (in the test process): {in_known / tests * 1000:.2f} ms "
        f"asking which database it is (one round trip: checked already?), "
        f"{in_finish / tests * 1000:.2f} ms for its reports"
    )
    all_added = every["wall"] - base["wall"]
    print(
        f"  --seqdrift-scope=all (for information): {all_added:+.2f} s = "
        f"{all_added / base['wall']:.1%}; the probe after each test {in_probe * 1000:.1f} ms "
        f"(in the test process)"
    )
    print("targets:")
    met = target(
        "--seqdrift share of the wall time, default scope",
        added / base["wall"] * 100,
        "<",
        SUITE_TARGET * 100,
        " %",
    )
    return {
        "added": added,
        "share": added / base["wall"],
        "paired_share": paired / base["wall"],
        "met": met,
    }


# -- where the time goes -------------------------------------------------------------------


def profile_a(
    dsn: str, env: dict[str, str], models: int, loads: int, alters: int, top: int
) -> None:
    """One run of (a) with --seqdrift, cProfile on inside the plugin's hooks only; then
    check() on the same schema migrated once, warm, for comparison."""
    import pstats

    print("\n## where the time goes: (a) under cProfile, inside the plugin's hooks only")
    with tempfile.TemporaryDirectory(prefix="seqdrift-bench-prof-") as tmp:
        root = Path(tmp)
        project_a(models, loads, alters).write(root)
        run_pytest(root, env, ["tests/test_setup.py", "--seqdrift"])  # warm up
        stats_file = str(root / "plugin.prof")
        result = run_pytest(root, env, ["tests/test_setup.py", "--seqdrift"], profile=stats_file)
        stats = pstats.Stats(stats_file)
        steady = steady_check(dsn, root, env)
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_cc, calls, tottime, cumtime, _callers) in entries.items():
        short = path.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append((cumtime, tottime, calls, f"{short}:{line}({name})", short, name))

    def cumulative(module: str, function: str) -> tuple[float, int]:
        """The cumulative time and calls of one function, found by module and name."""
        found = [(r[0], r[2]) for r in rows if r[4].endswith(module) and r[5] == function]
        return found[0] if found else (0.0, 0)

    checks, n_checks = cumulative("pytest_seqdrift/checker.py", "check")
    n = max(1, n_checks)
    waits, _ = cumulative("psycopg/connection.py", "wait")
    discovery, _ = cumulative("pytest_seqdrift/db/session.py", "query_dicts")
    block, _ = cumulative("pytest_seqdrift/read/reader.py", "_read")
    print(
        f"{len(result.data['steps'])} steps and the set-up check: {result.in_setup * 1000:.0f} ms "
        f"under the profiler (its own cost included); {n_checks} check() calls, "
        f"{checks / n * 1000:.1f} ms each: discovery {discovery / n * 1000:.1f} ms, the read "
        f"block {block / n * 1000:.1f} ms, the rest {(checks - discovery - block) / n * 1000:.1f} ms; "
        f"of it waiting on the server {waits / n * 1000:.1f} ms; garbage collections inside "
        f"the hooks {result.data['gc_inside'] * 1000:.0f} ms (in the whole run "
        f"{result.data['gc_all'] * 1000:.0f} ms)"
    )
    print(
        f"check() on the same schema migrated once, warm, 20 runs: {steady['django']:.1f} ms on a "
        f"connection like Django's (client-side binding: nothing prepared), "
        f"{steady['prepared']:.1f} ms on a plain psycopg one (prepared after 5 runs); "
        f"after each migration (in the test process, no profiler): "
        f"{result.in_steps / max(1, result.data['checked']) * 1000:.1f} ms"
    )
    print(f"\n  top {top} by cumulative time{'':42} cumulative    own    calls")
    for cum, tot, calls, where, *_ in sorted(rows, reverse=True)[:top]:
        print(f"  {where[-70:]:70} {cum * 1000:8.0f} ms {tot * 1000:6.0f} ms {calls:7d}")
    print(f"\n  top {top} by own time")
    for cum, tot, calls, where, *_ in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        print(f"  {where[-70:]:70} {cum * 1000:8.0f} ms {tot * 1000:6.0f} ms {calls:7d}")


def steady_check(dsn: str, root: Path, env: dict[str, str]) -> dict[str, float]:
    """check() on the project's schema, migrated once into a database of its own."""
    name = "seqdrift_bench_steady"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    settings = {
        "PGDATABASE": name,
        "PYTHONPATH": str(root),
        "DJANGO_SETTINGS_MODULE": "benchsite.settings",
    }
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"],
        cwd=root,
        env={**env, **settings},
        check=True,
    )
    steady = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    out = {}
    with psycopg.connect(steady, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        out["django"] = timed(lambda: check(conn), 20) * 1000
    with psycopg.connect(steady, autocommit=True) as conn:
        out["prepared"] = timed(lambda: check(conn), 20) * 1000
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant in (a), (c)")
    parser.add_argument("--repeat-b", type=int, default=3, help="runs of each variant in (b)")
    parser.add_argument("--models", type=int, default=100, help="tables in (a), (b), (c)")
    parser.add_argument("--loads", type=int, default=50, help="(a): RunPython migrations")
    parser.add_argument("--alters", type=int, default=5, help="(a): AlterField migrations")
    parser.add_argument("--migrations", type=int, default=300, help="(b): migrations")
    parser.add_argument("--tests", type=int, default=300, help="(c): tests in the suite")
    parser.add_argument("--skip", choices=["a", "b", "c"], nargs="+", default=[])
    parser.add_argument(
        "--load",
        type=int,
        nargs="?",
        const=os.cpu_count() or 2,
        default=0,
        metavar="N",
        help="keep N cores busy while measuring (default N: every core)",
    )
    parser.add_argument("--profile", action="store_true", help="profile (a) whatever the result")
    parser.add_argument("--top", type=int, default=15, help="profile entries shown")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, Django {django.__version__}, psycopg "
        f"{psycopg.__version__}, {os.cpu_count()} cores, "
        + (f"loaded: {args.load} spinning processes" if args.load else "quiet (no load of ours)")
    )
    started = time.perf_counter()
    with throwaway_server("seqdrift_bench") as dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        env = {
            **os.environ,
            "PGHOST": str(info["host"]),
            "PGPORT": str(info["port"]),
            "PGUSER": str(info["user"]),
            "PGDATABASE": str(info["dbname"]),
        }
        with psycopg.connect(dsn) as conn:
            print(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
        with cpu_load(args.load):
            a = None
            if "a" not in args.skip:
                a = part_a(env, args.repeat, args.models, args.loads, args.alters)
            if "b" not in args.skip:
                part_b(env, args.repeat_b, args.migrations, args.models)
            if "c" not in args.skip:
                part_c(env, args.repeat, args.models, args.loads, args.alters, args.tests)
            if args.profile or (a is not None and not a["met"]):
                profile_a(dsn, env, args.models, args.loads, args.alters, args.top)
    print(f"\n(the whole run: {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
