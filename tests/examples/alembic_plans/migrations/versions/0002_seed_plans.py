"""seed the plans

The plans keep the ids the billing provider knows them by.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

plan = sa.table(
    "plan",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("monthly_cents", sa.Integer),
)


def upgrade() -> None:
    op.bulk_insert(
        plan,
        [
            {"id": 1, "name": "free", "monthly_cents": 0},
            {"id": 2, "name": "team", "monthly_cents": 900},
            {"id": 3, "name": "business", "monthly_cents": 2900},
        ],
    )


def downgrade() -> None:
    op.execute(plan.delete())
