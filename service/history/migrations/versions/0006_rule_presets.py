"""rule_presets: rules.model and rules.webhook (a rule is a processing preset), jobs_log.params

Revision ID: 0006_rule_presets
Revises: 0005_listing_indexes
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_rule_presets"
down_revision: str | None = "0005_listing_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PortableJSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # All nullable: a rule from before names no model (the default one) and no webhook; a
    # job from before ran without params.
    with op.batch_alter_table("rules") as batch:
        batch.add_column(sa.Column("model", sa.String(64), nullable=True))
        batch.add_column(sa.Column("webhook", PortableJSON, nullable=True))
    with op.batch_alter_table("jobs_log") as batch:
        batch.add_column(sa.Column("params", PortableJSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs_log") as batch:
        batch.drop_column("params")
    with op.batch_alter_table("rules") as batch:
        batch.drop_column("webhook")
        batch.drop_column("model")
