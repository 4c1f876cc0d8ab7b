"""listing_indexes: GET /jobs?status= pages by index, like the unfiltered pages

Revision ID: 0005_listing_indexes
Revises: 0004_admin_ops
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_listing_indexes"
down_revision: str | None = "0004_admin_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_log_user_state_created",
        "jobs_log",
        ["user_id", "state", sa.text("created_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_log_user_state_created", table_name="jobs_log")
