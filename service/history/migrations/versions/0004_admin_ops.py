"""admin_ops: admin writes applied under an Idempotency-Key, recorded before Redis

Revision ID: 0004_admin_ops
Revises: 0003_flush_failures
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_admin_ops"
down_revision: str | None = "0003_flush_failures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_ops",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_admin_ops_user_id", "admin_ops", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_admin_ops_user_id", table_name="admin_ops")
    op.drop_table("admin_ops")
