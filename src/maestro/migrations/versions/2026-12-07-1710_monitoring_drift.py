"""monitoring drift: each deployment's reference data and its profiles, and the drift
reports computed against it

Revision ID: c9f1b3d5e789
Revises: b8e0a2c4d678
Create Date: 2026-12-07 17:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "c9f1b3d5e789"
down_revision: str | None = "b8e0a2c4d678"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitoring_references",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("dataset_file_id", sa.String(length=40), nullable=True),
        sa.Column("dataset_key", sa.String(length=500), nullable=True),
        sa.Column("dataset_format", sa.String(length=30), nullable=True),
        sa.Column("prediction_column", sa.String(length=300), nullable=True),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("reference_start", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reference_end", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("skipped", maestro.db.JSONType, nullable=True),
        sa.Column("built_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by_id", sa.String(length=40), nullable=True),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_monitoring_references_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_file_id"],
            ["files.id"],
            name=op.f("fk_monitoring_references_dataset_file_id_files"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_references_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_references")),
        sa.UniqueConstraint("deployment_id", name=op.f("uq_monitoring_references_deployment_id")),
    )
    op.create_table(
        "monitoring_reference_profiles",
        sa.Column("reference_id", sa.String(length=40), nullable=False),
        sa.Column("column", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["reference_id"],
            ["monitoring_references.id"],
            name=op.f("fk_monitoring_reference_profiles_reference_id_monitoring_references"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_reference_profiles")),
        sa.UniqueConstraint(
            "reference_id", "column", name=op.f("uq_monitoring_reference_profiles_reference_id_column")
        ),
    )
    op.create_table(
        "monitoring_drift_reports",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("window_start", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_end", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("reference", maestro.db.JSONType, nullable=False),
        sa.Column("judged_columns", sa.Integer(), nullable=False),
        sa.Column("drifted_columns", sa.Integer(), nullable=False),
        sa.Column("share_drifted", sa.Double(), nullable=True),
        sa.Column("dataset_drift", sa.Boolean(), nullable=False),
        sa.Column("any_drift_corrected", sa.Boolean(), nullable=False),
        sa.Column("columns", maestro.db.JSONType, nullable=False),
        sa.Column("warnings", maestro.db.JSONType, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_drift_reports_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_drift_reports")),
        sa.UniqueConstraint(
            "deployment_id",
            "window_start",
            "window_end",
            name=op.f("uq_monitoring_drift_reports_deployment_id_window_start_window_end"),
        ),
    )


def downgrade() -> None:
    op.drop_table("monitoring_drift_reports")
    op.drop_table("monitoring_reference_profiles")
    op.drop_table("monitoring_references")
