"""pytest-seqdrift: fail the test run that leaves a PostgreSQL sequence behind its ids."""

from __future__ import annotations

from .api import check
from .connections import CannotCheck, SeqdriftError
from .model import Checked, Finding, Report, Skipped

__version__ = "0.1.0.dev0"

__all__ = [
    "CannotCheck",
    "Checked",
    "Finding",
    "Report",
    "SeqdriftError",
    "Skipped",
    "__version__",
    "check",
]
