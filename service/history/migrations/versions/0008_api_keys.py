"""api_keys: API keys with scopes and spend caps, and the key a job was made through

Revision ID: 0008_api_keys
Revises: 0007_retry_and_delivery_log
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_api_keys"
down_revision: str | None = "0007_retry_and_delivery_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("cap_credits", sa.BigInteger(), nullable=True),
        sa.Column("cap_period", sa.String(8), nullable=True),
        sa.Column("expires_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("last_used_at", _UTC, nullable=True),
        sa.Column("revoked_at", _UTC, nullable=True),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    with op.batch_alter_table("jobs_log") as batch:
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
    with_key = sa.text("key_id IS NOT NULL")
    op.create_index("ix_jobs_log_key_created", "jobs_log", ["key_id", "created_at"],
                    postgresql_where=with_key, sqlite_where=with_key)


def downgrade() -> None:
    op.drop_index("ix_jobs_log_key_created", table_name="jobs_log")
    with op.batch_alter_table("jobs_log") as batch:
        batch.drop_column("key_id")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
