"""The package's layers, as its imports show them: every arrow points down, none loops.

ARCHITECTURE.md draws the same picture; this test keeps the two honest.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_seqdrift"

# lowest first: a module may import from its own layer and the layers below it
LAYERS: list[tuple[str, ...]] = [
    ("errors", "model", "options"),  # values everyone shares
    ("db",),  # talking to PostgreSQL through any driver
    ("drift", "fixsql", "render"),  # arithmetic and words: pure functions of values
    ("read",),  # what the catalog, the sequences and the tables say
    ("checker", "snapshot", "cutover"),  # read-only operations
    ("probe", "fix"),  # operations that write, and undo or commit
    ("cli", "alembic", "plugin"),  # the ways in
    ("__init__", "__main__", "fixtures"),  # the public names
]
TESTBED = "testbed"  # starts PostgreSQL for the tests, the demo and the benchmarks


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"pytest_seqdrift.{module} is in no layer: add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module of the package, and every outside top-level module, that the file
    imports (at its top or inside a function)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module)
            if node.module == "pytest_seqdrift":  # from pytest_seqdrift import render
                out.update(
                    f"pytest_seqdrift.{a.name}"
                    for a in node.names
                    if f"{a.name}" in MODULES or a.name in {m.split(".")[0] for m in MODULES}
                )
            elif node.module.startswith("pytest_seqdrift."):
                out.update(
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if f"{node.module.removeprefix('pytest_seqdrift.')}.{a.name}" in MODULES
                )
    return out


def _internal(imported: set[str]) -> set[str]:
    return {
        name.removeprefix("pytest_seqdrift.")
        for name in imported
        if name.startswith("pytest_seqdrift.") and name.removeprefix("pytest_seqdrift.") in MODULES
    }


GRAPH = {name: _internal(_imports(path)) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    if module == TESTBED:
        assert GRAPH[module] <= {"errors"}
        return
    up = sorted(m for m in GRAPH[module] if m == TESTBED or _layer(m) > _layer(module))
    assert not up, f"pytest_seqdrift.{module} imports from a layer above it: {up}"


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError(" -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for other in sorted(GRAPH[name]):
            # a package's __init__ re-exporting its modules is not a cycle with them
            if not other.startswith(f"{name}.") and not name.startswith(f"{other}."):
                visit(other, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_pytest_only_in_the_plugin_and_pytest_postgresql_only_in_the_testbed(module: str) -> None:
    tops = {name.split(".")[0] for name in _imports(MODULES[module])}
    if "pytest" in tops:
        assert module == "plugin" or module.startswith("plugin."), module
    if "pytest_postgresql" in tops:
        assert module == TESTBED, module


def test_the_layer_test_sees_the_arrows_it_judges() -> None:
    """A check that found no imports would pass everything."""
    assert {"read.reader", "db.session", "errors", "options"} <= GRAPH["checker"]
    assert "checker" in GRAPH["plugin.fixtures"]
    assert _layer("plugin.hooks") > _layer("probe") > _layer("checker") > _layer("read.keys")


def test_optional_libraries_are_imported_only_when_used() -> None:
    """Loading the package and its plugin imports none of the async stack (nor
    SQLAlchemy, Django, psycopg2): a user who hands us one of their objects has imported
    its library already; the rest cost nothing."""
    optional = ["asyncpg", "pytest_asyncio", "anyio", "sqlalchemy", "django", "psycopg2"]
    code = (
        "import sys, pytest_seqdrift, pytest_seqdrift.plugin, pytest_seqdrift.cli; "
        f"print([m for m in {optional!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
