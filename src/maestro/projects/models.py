"""Projects. Project memberships and visibility are identity's
(``maestro.identity.models``), since the role a principal holds in a project decides
authorisation; they are re-exported here for the modules that import them from this one."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin
from maestro.identity.models import ProjectMember, Visibility

__all__ = ["Project", "ProjectMember", "Visibility"]


class Project(IdMixin, TimestampMixin, Base):
    __tablename__ = "projects"
    id_prefix = "proj"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(2000))
    visibility: Mapped[str] = mapped_column(String(20), default=Visibility.private)
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (UniqueConstraint("organization_id", "slug"),)
