"""experiment tracking: experiments and their tags, runs with parameters and tags, metric
history with a latest-value table, and run artifacts

Revision ID: c28654653bed
Revises: 8ea9a871f921
Create Date: 2026-12-01 08:46:30.768915
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "c28654653bed"
down_revision: str | None = "8ea9a871f921"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=True),
        sa.Column("model_id", sa.String(length=40), nullable=True),
        sa.Column("config", maestro.db.JSONType, nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("lifecycle_stage", sa.String(length=20), nullable=False),
        sa.Column("artifact_location", sa.String(length=1000), nullable=True),
        sa.Column("created_by_id", sa.String(length=40), nullable=True),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_experiments_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_experiments_model_id_registered_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_experiments_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_experiments_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_experiments_project_id_name")),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiments_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_experiments_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(
            "ix_experiments_project_id_created_at", ["project_id", "created_at"], unique=False
        )

    op.create_table(
        "experiment_tags",
        sa.Column("experiment_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.String(length=5000), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_tags_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "key", name=op.f("pk_experiment_tags")),
    )
    op.create_table(
        "runs",
        sa.Column("experiment_id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("end_time", sa.BigInteger(), nullable=True),
        sa.Column("user_name", sa.String(length=320), nullable=True),
        sa.Column("artifact_uri", sa.String(length=1000), nullable=True),
        sa.Column("lifecycle_stage", sa.String(length=20), nullable=False),
        sa.Column("created_by_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_runs_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_runs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_runs_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_experiment_id_created_at", ["experiment_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_runs_experiment_id_start_time", ["experiment_id", "start_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runs_organization_id"), ["organization_id"], unique=False)

    op.create_table(
        "run_artifacts",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("artifact_type", sa.String(length=20), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=True),
        sa.Column("storage_key", sa.String(length=500), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=True),
        sa.Column("created_by_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_run_artifacts_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_run_artifacts_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_artifacts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_artifacts")),
        sa.UniqueConstraint("run_id", "path", name=op.f("uq_run_artifacts_run_id_path")),
    )
    op.create_table(
        "run_latest_metrics",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("experiment_id", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_run_latest_metrics_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_latest_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_latest_metrics")),
    )
    with op.batch_alter_table("run_latest_metrics", schema=None) as batch_op:
        batch_op.create_index(
            "ix_run_latest_metrics_experiment_id_key_value", ["experiment_id", "key", "value"], unique=False
        )

    op.create_table(
        "run_metrics",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
    )
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_run_metrics_run_id_key_step", ["run_id", "key", "step"], unique=False)

    op.create_table(
        "run_params",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.String(length=6000), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_params_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_params")),
    )
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.String(length=8000), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_tags_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_tags")),
    )


def downgrade() -> None:
    op.drop_table("run_tags")
    op.drop_table("run_params")
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_run_metrics_run_id_key_step")

    op.drop_table("run_metrics")
    with op.batch_alter_table("run_latest_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_run_latest_metrics_experiment_id_key_value")

    op.drop_table("run_latest_metrics")
    op.drop_table("run_artifacts")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_organization_id"))
        batch_op.drop_index("ix_runs_experiment_id_start_time")
        batch_op.drop_index("ix_runs_experiment_id_created_at")

    op.drop_table("runs")
    op.drop_table("experiment_tags")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index("ix_experiments_project_id_created_at")
        batch_op.drop_index(batch_op.f("ix_experiments_organization_id"))
        batch_op.drop_index(batch_op.f("ix_experiments_model_id"))

    op.drop_table("experiments")
