"""plans id sequence past the seeded ids

Revision ID: c70a5e19d3f8
Revises: 8e4d27a5c6b1
Create Date: 2026-11-30 16:05:37.402981

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c70a5e19d3f8"
down_revision: str | Sequence[str] | None = "8e4d27a5c6b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # 8e4d27a5c6b1 inserted plans with their ids; the sequence never saw them
    op.execute(
        "SELECT setval(pg_get_serial_sequence('plans', 'id'), max(id)) FROM plans "
        "HAVING max(id) IS NOT NULL"
    )


def downgrade() -> None:
    """Downgrade schema."""
    # a sequence is never moved back
