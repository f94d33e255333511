"""Running pytest with the plugin on a small project (pytester)."""

from __future__ import annotations

import pytest

# pytester runs in this process, where pytest_seqdrift is already imported: pytest then
# warns that it cannot rewrite its asserts. Users never see that; the tests count warnings.
# pytest-asyncio (installed for the async tests) warns in every project without this
QUIET = (
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*QUIET, *args)
