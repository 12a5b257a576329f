"""monitoring segments: a deployment's monitoring settings (its segment column and the
values kept apart), and a segment key on profiles, quality counts, labels and drift
reports ('' for the whole deployment)

Revision ID: d0a2c4e6f891
Revises: c9f1b3d5e789
Create Date: 2026-12-07 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "d0a2c4e6f891"
down_revision: str | None = "c9f1b3d5e789"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: (the unique key before, the unique key with the segment)
_KEYED = {
    "monitoring_profiles": ("deployment_id", "hour", "column"),
    "monitoring_quality": ("deployment_id", "minute"),
    "monitoring_drift_reports": ("deployment_id", "window_start", "window_end"),
}


def _name(table: str, columns: Sequence[str]) -> str:
    return f"uq_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    op.create_table(
        "monitoring_settings",
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("segment_column", sa.String(length=300), nullable=True),
        sa.Column("segment_values", maestro.db.JSONType, nullable=False),
        sa.Column("segment_since", maestro.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", maestro.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_monitoring_settings_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", name=op.f("pk_monitoring_settings")),
    )
    for table, key in _KEYED.items():
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("segment", sa.String(length=200), nullable=False, server_default=""))
            batch.drop_constraint(op.f(_name(table, key)), type_="unique")
            batch.create_unique_constraint(op.f(_name(table, (*key, "segment"))), [*key, "segment"])
    with op.batch_alter_table("monitoring_labels") as batch:
        batch.add_column(sa.Column("segment", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monitoring_labels") as batch:
        batch.drop_column("segment")
    for table, key in _KEYED.items():
        op.execute(sa.text(f"DELETE FROM {table} WHERE segment <> ''"))  # noqa: S608 - fixed names
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(_name(table, (*key, "segment"))), type_="unique")
            batch.create_unique_constraint(op.f(_name(table, key)), list(key))
            batch.drop_column("segment")
    op.drop_table("monitoring_settings")
