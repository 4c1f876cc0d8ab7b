"""account_alerts: the account webhook and the low-balance alert of each user

Revision ID: 0013_account_alerts
Revises: 0012_rule_priority
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_account_alerts"
down_revision: str | None = "0012_rule_priority"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_alerts",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_events", sa.String(100), nullable=False),
        sa.Column("low_balance", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("account_alerts")
