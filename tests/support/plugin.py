"""Running pytest with the plugin on a small project (pytester)."""

from __future__ import annotations

import pytest

# pytester runs in this process, where pytest_seqdrift is already imported: pytest then
# warns that it cannot rewrite its asserts. Users never see that; the tests count warnings.
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*QUIET, *args)
