"""owners of jobs: organisation, project and creator

Revision ID: acf171a35519
Revises: 285ca2cca2e7
Create Date: 2026-11-22 05:42:51.513168
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "acf171a35519"
down_revision: str | None = "285ca2cca2e7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("organization_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("project_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("created_by_id", sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_organization_id"), ["organization_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_organization_id_organizations"),
            "organizations",
            ["organization_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_project_id_projects"), "projects", ["project_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_project_id_projects"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_jobs_organization_id_organizations"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_organization_id"))
        batch_op.drop_column("created_by_id")
        batch_op.drop_column("project_id")
        batch_op.drop_column("organization_id")
