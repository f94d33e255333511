# pytest-seqdrift's ready-made check, next to pytest-alembic's built-in tests: upgrade
# one revision at a time and name the revision that left sequence drift behind.
from pytest_seqdrift.alembic import test_sequences_after_each_revision  # noqa: F401
