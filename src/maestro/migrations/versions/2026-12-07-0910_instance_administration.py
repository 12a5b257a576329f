"""instance administration: users.is_instance_admin and the failed_sign_ins table

Revision ID: e5b7d9f1a345
Revises: d4a6c8e0f234
Create Date: 2026-12-07 09:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "e5b7d9f1a345"
down_revision: str | None = "d4a6c8e0f234"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("is_instance_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "failed_sign_ins",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_sign_ins")),
    )
    op.create_index(op.f("ix_failed_sign_ins_created_at"), "failed_sign_ins", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_sign_ins_created_at"), table_name="failed_sign_ins")
    op.drop_table("failed_sign_ins")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_instance_admin")
