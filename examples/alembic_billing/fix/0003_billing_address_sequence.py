"""The fix: move the sequence of profile_billingaddress past the ids 0002 copied.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(
        "SELECT setval(pg_get_serial_sequence('profile_billingaddress', 'id'), max(id)) "
        "FROM profile_billingaddress HAVING max(id) IS NOT NULL"
    )


def downgrade() -> None:
    pass  # a sequence is never moved back
