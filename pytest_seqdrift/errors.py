"""Every exception pytest-seqdrift raises, and the value a failed read answers with.

Each exception's ``__module__`` is where users import it from, so the names printed in
tracebacks and in pytest's output stay the same wherever the code that raises it lives.
An exception is only ever raised: a read that fails is answered by a ``ReadFailure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_seqdrift.model import Report


class SeqdriftError(Exception):
    """Base class of the errors pytest-seqdrift raises."""


class CannotCheck(SeqdriftError):
    """The database could not be checked at all (connection, privilege, server)."""


class NotSupported(CannotCheck, TypeError):
    """Not a connection pytest-seqdrift can check: not PostgreSQL, or not a driver it
    knows (it takes psycopg 3, psycopg2, SQLAlchemy and Django connections)."""


class CannotFix(SeqdriftError):
    """The fix could not be applied (a lock held past the lock timeout, a privilege);
    nothing was changed."""


class SequenceDriftError(SeqdriftError, AssertionError):
    """Sequence drift found by ``assert_sequences_consistent``: the message is the report,
    which ``report`` holds."""

    def __init__(self, report: Report, message: str) -> None:
        super().__init__(message)
        self.report = report


for _error in (SeqdriftError, CannotCheck, NotSupported, CannotFix):
    _error.__module__ = "pytest_seqdrift"
SequenceDriftError.__module__ = "pytest_seqdrift.fixtures"
del _error


@dataclass(frozen=True)
class ReadFailure:
    """Why one read (a sequence's state, a table's bounds, a statement) has no answer:
    the server's one-line message, and its SQLSTATE where the server gave one."""

    message: str
    sqlstate: str | None = None

    @property
    def out_of_resources(self) -> bool:
        """Class 53, insufficient resources ("out of shared memory"): worth a retry on
        its own, once the chunk's locks are gone."""
        return (self.sqlstate or "").startswith("53")
