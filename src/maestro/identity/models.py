from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    id_prefix = "user"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    avatar_url: Mapped[str | None] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(default=True)
    # Administers the whole installation: organisations' plans, accounts, failed sign-ins.
    is_instance_admin: Mapped[bool] = mapped_column(default=False)
    current_organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL")
    )
    last_login_at: Mapped[datetime | None]

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.email


class AuthSession(IdMixin, Base):
    """One login. Its refresh tokens form a family: reuse of a rotated one revokes
    the session, and with it every access token that names it."""

    __tablename__ = "auth_sessions"
    id_prefix = "sess"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(100))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class RefreshToken(IdMixin, Base):
    __tablename__ = "refresh_tokens"
    id_prefix = "rt"

    session_id: Mapped[str] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None]


class ApiKey(IdMixin, TimestampMixin, Base):
    __tablename__ = "api_keys"
    id_prefix = "key"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None]


class FailedSignIn(IdMixin, Base):
    """A refused ``POST /auth/login``, for the instance administrators to read."""

    __tablename__ = "failed_sign_ins"
    id_prefix = "fsi"

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    email: Mapped[str] = mapped_column(String(320))  # as typed, bounded
    ip: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(40))


class AuditLog(IdMixin, Base):
    __tablename__ = "audit_logs"
    id_prefix = "audit"

    organization_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(100))
    resource_type: Mapped[str | None] = mapped_column(String(50))
    resource_id: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None]
    method: Mapped[str | None] = mapped_column(String(10))
    path: Mapped[str | None] = mapped_column(String(500))
    ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_audit_logs_organization_id_created_at", "organization_id", "created_at"),
        Index("ix_audit_logs_actor_id_created_at", "actor_id", "created_at"),
    )


# --- organisations, roles and memberships ----------------------------------------------
class Role(StrEnum):
    """Roles in an organisation, and in a project (where they narrow or widen it)."""

    admin = "admin"
    developer = "developer"
    viewer = "viewer"


class Plan(StrEnum):
    """Request allowances per organisation. ``unlimited`` is a self-hosted install's
    own default: no billing tier, no limit; the other three are the hosted tiers."""

    unlimited = "unlimited"
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


class Visibility(StrEnum):
    private = "private"  # project members and organisation admins
    organization = "organization"  # every member of the organisation may read
    public = "public"  # every authenticated user may read


class ProjectMember(IdMixin, Base):
    __tablename__ = "project_members"
    id_prefix = "pm"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
