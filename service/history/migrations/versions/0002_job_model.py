"""jobs_log.model: the model a job ran on (its price is jobs_log.price)

Revision ID: 0002_job_model
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_model"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs of version 1 named no model.
    with op.batch_alter_table("jobs_log") as batch:
        batch.add_column(sa.Column("model", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs_log") as batch:
        batch.drop_column("model")
