from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class Visibility(StrEnum):
    private = "private"  # project members and organisation admins
    organization = "organization"  # every member of the organisation may read
    public = "public"  # every authenticated user may read


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


class ProjectMember(IdMixin, Base):
    __tablename__ = "project_members"
    id_prefix = "pm"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
