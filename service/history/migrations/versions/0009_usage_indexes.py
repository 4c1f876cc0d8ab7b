"""usage_indexes: the usage statement reads one index range (by user and finish time)

Revision ID: 0009_usage_indexes
Revises: 0007_retry_and_delivery_log
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009_usage_indexes"
# 0008 (API keys: jobs_log.key_id) is built beside this one: when both are merged, this
# revises 0008's revision instead.
down_revision: str | None = "0007_retry_and_delivery_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# What the statement reads besides the range (service.history.usage).
_SUMMED = ["model", "total_items", "charged", "refunded"]


def upgrade() -> None:
    # INCLUDE is PostgreSQL's (11+): there the statement never reads the table.
    op.create_index("ix_jobs_log_user_finished", "jobs_log", ["user_id", "finished_at"],
                    postgresql_include=_SUMMED)
    op.create_index("ix_jobs_log_finished", "jobs_log", ["finished_at"],
                    postgresql_include=_SUMMED)


def downgrade() -> None:
    op.drop_index("ix_jobs_log_finished", table_name="jobs_log")
    op.drop_index("ix_jobs_log_user_finished", table_name="jobs_log")
