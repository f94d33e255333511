"""move the plan sequence past the seeded ids

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("SELECT setval(pg_get_serial_sequence('plan', 'id'), (SELECT max(id) FROM plan))")


def downgrade() -> None:
    pass
