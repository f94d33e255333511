"""seed plans

The plans keep the ids the old billing system gave them: invoices refer to them.

Revision ID: 8e4d27a5c6b1
Revises: 3b1f0c2d9a47
Create Date: 2026-11-23 10:31:02.760114

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8e4d27a5c6b1"
down_revision: str | Sequence[str] | None = "3b1f0c2d9a47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

plans = sa.table(
    "plans",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("price", sa.Integer),
)


def upgrade() -> None:
    """Upgrade schema."""
    op.bulk_insert(
        plans,
        [
            {"id": 7, "name": "starter", "price": 900},
            {"id": 9, "name": "team", "price": 2900},
            {"id": 12, "name": "business", "price": 9900},
        ],
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(plans.delete().where(plans.c.id.in_([7, 9, 12])))
