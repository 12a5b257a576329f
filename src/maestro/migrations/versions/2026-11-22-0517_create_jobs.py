"""create the jobs table

Revision ID: 4efaecfedf16
Revises:
Create Date: 2026-11-22 05:17:18.987352
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "4efaecfedf16"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("params", maestro.db.JSONType, nullable=False),
        sa.Column("result", maestro.db.JSONType, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("enqueued_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_kind_created_at", ["kind", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_status_enqueued_at", ["status", "enqueued_at"], unique=False)
        batch_op.create_index("ix_jobs_status_heartbeat_at", ["status", "heartbeat_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_heartbeat_at")
        batch_op.drop_index("ix_jobs_status_enqueued_at")
        batch_op.drop_index("ix_jobs_kind_created_at")

    op.drop_table("jobs")
