"""The probe: insert past each unique sequence-backed column's highest existing value
and let PostgreSQL say whether the key collides (``insert`` mode), or evaluate the
column's default and look each value up (``default`` mode). For test databases only:
it writes inside a savepoint or transaction that is rolled back, and puts every
sequence it moved back exactly."""

from __future__ import annotations

from pytest_seqdrift.probe.report import Mode, Probed, ProbeReport
from pytest_seqdrift.probe.run import DEFAULT_LIMIT, aprobe, probe

__all__ = ["DEFAULT_LIMIT", "Mode", "ProbeReport", "Probed", "aprobe", "probe"]
