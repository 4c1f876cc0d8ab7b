"""credit_grants: credit grants of a kind, that may expire (issue 20)

Revision ID: 0010_credit_grants
Revises: 0009_usage_indexes
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_credit_grants"
down_revision: str | None = "0009_usage_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", _UTC, nullable=True),
        sa.Column("ledger_id", sa.String(300), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
    )
    op.create_index("ix_credit_grants_user_id", "credit_grants", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_credit_grants_user_id", table_name="credit_grants")
    op.drop_table("credit_grants")
