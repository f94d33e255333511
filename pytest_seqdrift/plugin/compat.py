"""Compatibility with other plugins' versions. No pytest import here: each shim patches
only the other plugin's own class, and only when the breakage it mends is present."""

from __future__ import annotations

import inspect
import sys
from typing import Any


def mend_pytest_alembic() -> bool:
    """pytest-alembic 0.13.1 cannot collect under pytest 9.2: its ``TestCollector``
    appends to ``self._nodeid``, which pytest 9.2 replaced with a structured ``id``
    (``AttributeError: 'TestCollector' object has no attribute '_nodeid'``, as soon as
    ``tests/conftest.py`` exists). Give that class a ``_nodeid`` that reads and extends
    the new ``id``, so its built-in tests are collected as before
    (``tests/conftest.py::pytest-alembic::test_upgrade``). Returns True when it mended.

    A pytest-alembic release that no longer touches ``_nodeid``, or a pytest that still
    has it, is left alone.
    """
    module = sys.modules.get("pytest_alembic.plugin.plugin")
    collector = getattr(module, "TestCollector", None)
    if collector is None or inspect.getattr_static(collector, "_nodeid", None) is not None:
        return False
    if not isinstance(inspect.getattr_static(collector, "id", None), property):
        return False  # an older pytest: _nodeid is a plain attribute there
    try:
        if "_nodeid" not in inspect.getsource(collector.__init__):
            return False
    except (OSError, TypeError):  # no source to read: the two tests above decide
        pass

    def get(self: Any) -> str:
        return str(self.nodeid)

    def extend(self: Any, value: str) -> None:
        base = self.nodeid
        if not value.startswith(f"{base}::"):
            raise AttributeError(f"can only extend node id {base!r}, not set {value!r}")
        node_id = self.id
        for name in value[len(base) + 2 :].split("::"):
            node_id = node_id.child(name)
        self._id = node_id

    collector._nodeid = property(get, extend)
    return True
