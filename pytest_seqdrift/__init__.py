"""pytest-seqdrift: fail the test run that leaves a PostgreSQL sequence behind its ids."""

from __future__ import annotations

from .api import check
from .connections import CannotCheck, NotSupported, SeqdriftError
from .model import Checked, Finding, Report, Skipped

__version__ = "0.1.0.dev0"

__all__ = [
    "CannotCheck",
    "Checked",
    "Finding",
    "NotSupported",
    "Report",
    "SeqdriftError",
    "Skipped",
    "__version__",
    "check",
]
