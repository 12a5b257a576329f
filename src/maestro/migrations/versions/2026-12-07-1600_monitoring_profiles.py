"""monitoring profiles: each deployment's served columns folded into hourly profiles, and
how far into the prediction log folding has read

Revision ID: a7d9f1b3c567
Revises: f6c8e0a2b456
Create Date: 2026-12-07 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "a7d9f1b3c567"
down_revision: str | None = "f6c8e0a2b456"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitoring_profiles",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("hour", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("column", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_profiles_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_profiles")),
        sa.UniqueConstraint(
            "deployment_id", "hour", "column", name=op.f("uq_monitoring_profiles_deployment_id_hour_column")
        ),
    )
    op.create_table(
        "monitoring_fold_marks",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("last_created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_id", sa.String(length=40), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_fold_marks_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", name=op.f("pk_monitoring_fold_marks")),
    )


def downgrade() -> None:
    op.drop_table("monitoring_fold_marks")
    op.drop_table("monitoring_profiles")
