"""The pytest plugin entry point (``pytest11``).

For now it only registers the ``seqdrift`` marker, so that marked tests do not trip
``--strict-markers``; the probe and fixtures build on the engine in ``api.py``.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "seqdrift: a migration test whose database pytest-seqdrift checks for sequence drift",
    )
