"""deployments with their version history and event log, the prediction log, per-minute
request aggregates and the serving generation counter

Revision ID: 7f1b4777df49
Revises: c28654653bed
Create Date: 2026-12-01 09:22:05.456090
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "7f1b4777df49"
down_revision: str | None = "c28654653bed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "serving_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_serving_generation")),
    )
    op.create_table(
        "deployments",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("environment", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=True),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("instance_type", sa.String(length=20), nullable=False),
        sa.Column("min_instances", sa.Integer(), nullable=False),
        sa.Column("max_instances", sa.Integer(), nullable=False),
        sa.Column("auto_scaling", sa.Boolean(), nullable=False),
        sa.Column("deployment_config", maestro.db.JSONType, nullable=False),
        sa.Column("serving", maestro.db.JSONType, nullable=True),
        sa.Column("deployed_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_request_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by_id", sa.String(length=40), nullable=True),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_deployments_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_deployments_model_id_registered_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_deployments_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_deployments_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_deployments_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("organization_id", "name", name=op.f("uq_deployments_organization_id_name")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index("ix_deployments_model_version_id", ["model_version_id"], unique=False)
        batch_op.create_index(
            "ix_deployments_project_id_created_at", ["project_id", "created_at"], unique=False
        )

    op.create_table(
        "deployment_events",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("event", sa.String(length=50), nullable=False),
        sa.Column("message", sa.String(length=2000), nullable=False),
        sa.Column("details", maestro.db.JSONType, nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_events_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
    )
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployment_events_deployment_id_created_at", ["deployment_id", "created_at"], unique=False
        )

    op.create_table(
        "deployment_minutes",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("minute", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("prediction_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_ms", sa.Double(), nullable=False),
        sa.Column("latency_max_ms", sa.Double(), nullable=False),
        sa.Column("latency_buckets", maestro.db.JSONType, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_minutes_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_minutes")),
    )
    with op.batch_alter_table("deployment_minutes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployment_minutes_deployment_id_minute", ["deployment_id", "minute"], unique=False
        )

    op.create_table(
        "deployment_revisions",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("previous_version_id", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("actor_type", sa.String(length=20), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_revisions_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_deployment_revisions_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_revisions")),
    )
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployment_revisions_deployment_id_created_at", ["deployment_id", "created_at"], unique=False
        )

    op.create_table(
        "prediction_logs",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("inputs", maestro.db.JSONType, nullable=True),
        sa.Column("outputs", maestro.db.JSONType, nullable=True),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_prediction_logs_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_prediction_logs_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_logs")),
    )
    with op.batch_alter_table("prediction_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_prediction_logs_deployment_id_created_at", ["deployment_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("prediction_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_prediction_logs_deployment_id_created_at")

    op.drop_table("prediction_logs")
    with op.batch_alter_table("deployment_revisions", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_revisions_deployment_id_created_at")

    op.drop_table("deployment_revisions")
    with op.batch_alter_table("deployment_minutes", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_minutes_deployment_id_minute")

    op.drop_table("deployment_minutes")
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_events_deployment_id_created_at")

    op.drop_table("deployment_events")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_project_id_created_at")
        batch_op.drop_index("ix_deployments_model_version_id")

    op.drop_table("deployments")
    op.drop_table("serving_generation")
