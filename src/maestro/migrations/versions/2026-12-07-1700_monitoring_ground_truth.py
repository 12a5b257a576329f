"""monitoring ground truth: labels joined to logged predictions, and each deployment's
quality counts per minute of the predictions

Revision ID: b8e0a2c4d678
Revises: a7d9f1b3c567
Create Date: 2026-12-07 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "b8e0a2c4d678"
down_revision: str | None = "a7d9f1b3c567"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitoring_labels",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("prediction_id", sa.String(length=40), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("minute", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("answers", sa.String(length=10), nullable=False),
        sa.Column("actual", maestro.db.JSONType, nullable=False),
        sa.Column("predicted", maestro.db.JSONType, nullable=True),
        sa.Column("classes", maestro.db.JSONType, nullable=True),
        sa.Column("probabilities", maestro.db.JSONType, nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_labels_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "deployment_id", "prediction_id", "row_index", name=op.f("pk_monitoring_labels")
        ),
    )
    op.create_index(
        "ix_monitoring_labels_deployment_id_minute",
        "monitoring_labels",
        ["deployment_id", "minute"],
        unique=False,
    )
    op.create_table(
        "monitoring_quality",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("minute", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_quality_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_quality")),
        sa.UniqueConstraint(
            "deployment_id", "minute", name=op.f("uq_monitoring_quality_deployment_id_minute")
        ),
    )


def downgrade() -> None:
    op.drop_table("monitoring_quality")
    op.drop_index("ix_monitoring_labels_deployment_id_minute", table_name="monitoring_labels")
    op.drop_table("monitoring_labels")
