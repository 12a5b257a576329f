"""Organisation-level tables owned by this domain. The organisation itself, its plans,
roles and memberships are identity's (``maestro.identity.models``): who a principal is
and which roles it holds decide every authorisation, below this layer. They are
re-exported here for the modules that import them from this one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, utcnow
from maestro.identity.models import Membership, Organization, Plan, Role

__all__ = ["Invitation", "Membership", "Organization", "Plan", "Role"]


class Invitation(IdMixin, Base):
    __tablename__ = "invitations"
    id_prefix = "inv"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    accepted_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
