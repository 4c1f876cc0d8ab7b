"""retry_and_delivery_log: per-job result TTL, retries, kept inputs, webhook delivery log

Revision ID: 0007_retry_and_delivery_log
Revises: 0006_rule_presets
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_retry_and_delivery_log"
down_revision: str | None = "0006_rule_presets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    # All nullable: a job from before has the setting's TTL, retries nothing, and had its
    # inputs deleted at its flush.
    with op.batch_alter_table("jobs_log") as batch:
        batch.add_column(sa.Column("result_ttl_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("results_expire_at", _UTC, nullable=True))
        batch.add_column(sa.Column("retry_of", sa.String(64), nullable=True))
        batch.add_column(sa.Column("inputs_deleted_at", _UTC, nullable=True))
    not_deleted = sa.text("results_deleted_at IS NULL")
    op.create_index("ix_jobs_log_results_expire", "jobs_log", ["results_expire_at"],
                    postgresql_where=not_deleted, sqlite_where=not_deleted)
    kept = sa.text("failed_items > 0 AND inputs_deleted_at IS NULL "
                   "AND results_deleted_at IS NULL")
    op.create_index("ix_jobs_log_kept_inputs", "jobs_log", ["finished_at"],
                    postgresql_where=kept, sqlite_where=kept)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("delivered_at", _UTC, nullable=True),
        sa.Column("next_attempt_at", _UTC, nullable=True),
        sa.Column("gave_up_at", _UTC, nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("redelivery_of", sa.String(200), nullable=True),
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_created_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_job_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_jobs_log_kept_inputs", table_name="jobs_log")
    op.drop_index("ix_jobs_log_results_expire", table_name="jobs_log")
    with op.batch_alter_table("jobs_log") as batch:
        batch.drop_column("inputs_deleted_at")
        batch.drop_column("retry_of")
        batch.drop_column("results_expire_at")
        batch.drop_column("result_ttl_s")
