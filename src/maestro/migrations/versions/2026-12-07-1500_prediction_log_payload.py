"""prediction log payload: prediction_logs.payload, an answered request's rows in binary

Revision ID: f6c8e0a2b456
Revises: e5b7d9f1a345
Create Date: 2026-12-07 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f6c8e0a2b456"
down_revision: str | None = "e5b7d9f1a345"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prediction_logs") as batch:
        batch.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction_logs") as batch:
        batch.drop_column("payload")
