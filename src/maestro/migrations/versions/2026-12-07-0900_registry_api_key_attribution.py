"""registry api key attribution: the API key that created a model or a version, or
changed a version's stage, when no person did

Revision ID: d4a6c8e0f234
Revises: c3f5a7b9d123
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4a6c8e0f234"
down_revision: str | None = "c3f5a7b9d123"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("registered_models", "created_by_key_id"),
    ("model_versions", "created_by_key_id"),
    ("stage_transitions", "changed_by_key_id"),
)


def upgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column(column, sa.String(length=40), nullable=True))
            batch_op.create_foreign_key(
                f"fk_{table}_{column}_api_keys", "api_keys", [column], ["id"], ondelete="SET NULL"
            )


def downgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_{column}_api_keys", type_="foreignkey")
            batch_op.drop_column(column)
