"""flush_failures (records SQL refused, set aside) and jobs_log.results_deleted_at

Revision ID: 0003_flush_failures
Revises: 0002_job_model
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_flush_failures"
down_revision: str | None = "0002_job_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "flush_failures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("record_id", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", _utc(), nullable=False),
        sa.Column("last_failed_at", _utc(), nullable=False),
    )
    with op.batch_alter_table("jobs_log") as batch:
        batch.add_column(sa.Column("results_deleted_at", _utc(), nullable=True))
    # Partial: the sweeper looks only for rows whose files are still there.
    op.create_index(
        "ix_jobs_log_results_due", "jobs_log", ["finished_at"],
        postgresql_where=sa.text("results_deleted_at IS NULL"),
        sqlite_where=sa.text("results_deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_log_results_due", table_name="jobs_log")
    with op.batch_alter_table("jobs_log") as batch:
        batch.drop_column("results_deleted_at")
    op.drop_table("flush_failures")
