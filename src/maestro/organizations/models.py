from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class Role(StrEnum):
    """Roles in an organisation, and in a project (where they narrow or widen it)."""

    admin = "admin"
    developer = "developer"
    viewer = "viewer"


class Plan(StrEnum):
    free = "free"
    professional = "professional"
    enterprise = "enterprise"


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"
    id_prefix = "org"

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(String(2000))
    subscription_plan: Mapped[str] = mapped_column(String(20), default=Plan.free)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Membership(IdMixin, Base):
    __tablename__ = "memberships"
    id_prefix = "mem"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("organization_id", "user_id"),)


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
