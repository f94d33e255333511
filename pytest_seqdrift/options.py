"""What a check looks at and how long it may wait: one frozen value, validated once.

``check()``, the fix, the probe, the CLI and the plugin all take their options as a
``CheckOptions``; the CLI and the plugin read them from text with the parsers below, so
a value means the same, and is refused with the same words, wherever it is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.8  # the share of a column's range that, once used, is a finding
DEFAULT_LOCK_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class CheckOptions:
    """``schemas``: only those (None: every schema the role can see). ``exclude_tables``:
    fnmatch patterns matched against ``table`` and ``schema.table``. ``threshold``: the
    share of a column's range that counts as overflow or exhaustion. Timeouts in
    milliseconds (None: the server's own). ``max_scan_rows``: a column no index leads
    with, in a table the planner estimates at more rows than this, is skipped rather
    than scanned (None: always scanned)."""

    schemas: tuple[str, ...] | None = None
    exclude_tables: tuple[str, ...] = ()
    threshold: float = DEFAULT_THRESHOLD
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    statement_timeout_ms: int | None = None
    max_scan_rows: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold!r}")
        if self.max_scan_rows is not None and self.max_scan_rows < 0:
            raise ValueError(f"max_scan_rows must be 0 or more, not {self.max_scan_rows!r}")
        if self.lock_timeout_ms < 0:
            raise ValueError(f"lock_timeout_ms must be 0 or more, not {self.lock_timeout_ms!r}")
        if self.statement_timeout_ms is not None and self.statement_timeout_ms < 0:
            raise ValueError(
                f"statement_timeout_ms must be 0 or more, not {self.statement_timeout_ms!r}"
            )

    @classmethod
    def of(
        cls,
        *,
        schemas: Iterable[str] | None = None,
        exclude_tables: Iterable[str] = (),
        threshold: float = DEFAULT_THRESHOLD,
        lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
        statement_timeout_ms: int | None = None,
        max_scan_rows: int | None = None,
    ) -> CheckOptions:
        """The options from what a caller has in hand: any iterables of names."""
        return cls(
            None if schemas is None else tuple(schemas),
            tuple(exclude_tables),
            threshold,
            lock_timeout_ms,
            statement_timeout_ms,
            max_scan_rows,
        )


# --- the options as text: each parser returns the value or raises ValueError with the
# words that say what is expected (the CLI and the plugin add where the text came from)


def parse_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError("must be a share between 0 (exclusive) and 1, e.g. 0.8")
    return value


def parse_rows(text: str) -> int:
    """A number of rows, 0 or more: 1000, 1_000 and 1,000 all read as a thousand."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    if not cleaned.isdigit():
        raise ValueError(f"not a number of rows: {text!r} (e.g. 1000000)")
    return int(cleaned)


def parse_pattern(text: str) -> str:
    """A table's name or an fnmatch pattern, as ``exclude_tables`` takes them."""
    if not text.strip():
        raise ValueError("expected a table name or pattern, not an empty one")
    return text.strip()


_DURATION = re.compile(r"\s*(\d+)\s*(ms|s|min)?\s*")
_UNIT_MS = {None: 1, "ms": 1, "s": 1000, "min": 60_000}


def parse_duration(text: str) -> int:
    """Milliseconds: ``500``, ``500ms``, ``5s`` or ``1min``; 0 means no limit."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 500, 500ms, 5s, 1min)")
    return int(m[1]) * _UNIT_MS[m[2]]
