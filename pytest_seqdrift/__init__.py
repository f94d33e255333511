"""pytest-seqdrift: fail the test run that leaves a PostgreSQL sequence behind its ids."""

from __future__ import annotations

from pytest_seqdrift.checker import acheck, check
from pytest_seqdrift.errors import (
    CannotCheck,
    CannotFix,
    NotSupported,
    SeqdriftError,
    SequenceDriftError,
)
from pytest_seqdrift.model import Checked, Finding, Report, Skipped

__version__ = "0.1.0.dev0"

__all__ = [
    "CannotCheck",
    "CannotFix",
    "Checked",
    "Finding",
    "NotSupported",
    "Report",
    "SeqdriftError",
    "SequenceDriftError",
    "Skipped",
    "__version__",
    "acheck",
    "check",
]
