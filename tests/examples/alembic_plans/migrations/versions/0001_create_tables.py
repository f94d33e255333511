"""create tables

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "plan",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("monthly_cents", sa.Integer, nullable=False),
    )
    op.create_table(
        "subscription",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("plan_id", sa.Integer, sa.ForeignKey("plan.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("subscription")
    op.drop_table("plan")
