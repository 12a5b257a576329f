"""deployment secrets: environment variable values sealed in their own column, masked in
deployment_config

Existing values are sealed here, with the key derived from this installation's secret
(the configuration ``maestro db upgrade`` runs with); a database with no environment
values needs no key.

Revision ID: c3f5a7b9d123
Revises: b2e4f6a8c012
Create Date: 2026-12-07 02:20:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import maestro.db

revision: str = "c3f5a7b9d123"
down_revision: str | None = "b2e4f6a8c012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

deployments = sa.table(
    "deployments",
    sa.column("id", sa.String),
    sa.column("deployment_config", maestro.db.JSONType),
    sa.column("env_vars_encrypted", sa.Text),
)


def _settings() -> Any:
    from maestro.config import Settings

    return Settings()


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("env_vars_encrypted", sa.Text(), nullable=True))

    from maestro.deployments.secrets import MASK, masked, seal

    connection = op.get_bind()
    settings = None
    for row in connection.execute(sa.select(deployments.c.id, deployments.c.deployment_config)):
        config = dict(row.deployment_config or {})
        values = config.get("env_vars") or {}
        if not values or all(value == MASK for value in values.values()):
            continue
        settings = settings or _settings()
        config["env_vars"] = masked(values)
        connection.execute(
            deployments.update()
            .where(deployments.c.id == row.id)
            .values(deployment_config=config, env_vars_encrypted=seal(settings, values))
        )


def downgrade() -> None:
    from maestro.deployments.secrets import SecretsUnreadable, unseal

    connection = op.get_bind()
    settings = None
    for row in connection.execute(
        sa.select(deployments.c.id, deployments.c.deployment_config, deployments.c.env_vars_encrypted).where(
            deployments.c.env_vars_encrypted.is_not(None)
        )
    ):
        settings = settings or _settings()
        try:
            values = unseal(settings, row.env_vars_encrypted)
        except SecretsUnreadable:
            continue  # nothing to restore them from: they stay masked
        config = {**(row.deployment_config or {}), "env_vars": values}
        connection.execute(
            deployments.update().where(deployments.c.id == row.id).values(deployment_config=config)
        )

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("env_vars_encrypted")
