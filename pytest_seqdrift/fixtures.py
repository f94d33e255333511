"""The name pytest prints for a failed ``assert_sequences_consistent``:
``pytest_seqdrift.fixtures.SequenceDriftError``. The fixtures themselves live in
``pytest_seqdrift.plugin.fixtures``."""

from pytest_seqdrift.errors import SequenceDriftError

__all__ = ["SequenceDriftError"]
