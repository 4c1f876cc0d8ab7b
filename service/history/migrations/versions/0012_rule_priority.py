"""rule_priority: rules.priority, the priority a job made from the rule takes (issue 21)

Revision ID: 0012_rule_priority
Revises: 0010_credit_grants
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_rule_priority"
# After 0010 (credit grants), built beside it.
down_revision: str | None = "0010_credit_grants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: a rule from before sets no priority (its jobs are normal, as before).
    with op.batch_alter_table("rules") as batch:
        batch.add_column(sa.Column("priority", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rules") as batch:
        batch.drop_column("priority")
