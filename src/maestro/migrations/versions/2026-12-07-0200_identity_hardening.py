"""identity hardening

Audit entries about sessions (refresh, sign-out, a reused refresh token) named the
session by its id. They now carry a digest of it instead (``sessref_…``, as
``identity.security.session_reference`` makes it), so that nobody who reads the log
can present the id as part of a credential. This rewrites the entries written before.
The digest cannot be reversed, so the downgrade leaves them as they are.

Revision ID: a1d3e5c7b901
Revises: 69a023c44d7c
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1d3e5c7b901"
down_revision: str | None = "69a023c44d7c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_audit_logs = sa.table(
    "audit_logs", sa.column("id", sa.String), sa.column("resource_type"), sa.column("resource_id")
)


def _reference(session_id: str) -> str:
    return "sessref_" + hashlib.sha256(session_id.encode()).hexdigest()[:24]


def upgrade() -> None:
    connection = op.get_bind()
    after = ""
    while True:
        rows = connection.execute(
            sa.select(_audit_logs.c.id, _audit_logs.c.resource_id)
            .where(
                _audit_logs.c.resource_type == "sessions",
                _audit_logs.c.resource_id.like("sess\\_%", escape="\\"),
                _audit_logs.c.id > after,
            )
            .order_by(_audit_logs.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            sa.update(_audit_logs)
            .where(_audit_logs.c.id == sa.bindparam("row_id"))
            .values(resource_id=sa.bindparam("reference")),
            [{"row_id": row.id, "reference": _reference(row.resource_id)} for row in rows],
        )
        after = rows[-1].id


def downgrade() -> None:
    pass
