"""Accounts and sign-in: registration, login, refresh-token rotation, logout, the
current user."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maestro.config import Settings
from maestro.db import flush_unique, matched_rows, new_id, utcnow
from maestro.errors import AuthenticationRequired, Conflict, NotFound, PermissionDenied
from maestro.identity import audit, security
from maestro.identity.models import AuthSession, Membership, Organization, RefreshToken, Role, User
from maestro.identity.rbac import Principal
from maestro.identity.schemas import CurrentOrganization, MeUpdate, RegisterRequest, TokenPair, UserRead


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    return slug or "org"


def unique_organization_slug(session: Session, name: str) -> str:
    base = slugify(name)
    slug = base
    while session.scalar(select(Organization.id).where(Organization.slug == slug)) is not None:
        slug = f"{base}-{new_id('x')[-6:]}"
    return slug


def create_organization(session: Session, settings: Settings, *, name: str, owner: User) -> Organization:
    """A new organisation with ``owner`` as its first admin."""
    organization = Organization(
        name=name, slug=unique_organization_slug(session, name), subscription_plan=settings.default_plan
    )
    session.add(organization)
    session.flush()
    session.add(Membership(organization_id=organization.id, user_id=owner.id, role=Role.admin))
    if owner.current_organization_id is None:
        owner.current_organization_id = organization.id
    session.flush()
    return organization


def create_user(
    session: Session,
    settings: Settings,
    *,
    email: str,
    password: str | None,
    first_name: str = "",
    last_name: str = "",
) -> User:
    email = email.strip().lower()
    # Hashed before the first query, which on SQLite takes the write lock.
    password_hash = security.hash_password(settings, password) if password else None
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("An account with this email already exists", details=[("email", "already registered")])
    user = User(
        email=email,
        password_hash=password_hash,
        first_name=first_name,
        last_name=last_name,
    )
    session.add(user)
    flush_unique(session, Conflict("An account with this email already exists"))
    return user


def register(session: Session, settings: Settings, body: RegisterRequest, *, ip: str | None) -> TokenPair:
    if not settings.allow_registration:
        raise PermissionDenied(
            "Registration is closed on this server; ask an administrator for an invitation"
        )
    try:
        user = create_user(
            session,
            settings,
            email=body.email,
            password=body.password,
            first_name=body.first_name,
            last_name=body.last_name,
        )
    except Conflict as exc:
        raise Conflict(
            "This email address cannot be registered; sign in instead, or use another address",
            details=[("email", "cannot be registered")],
        ) from exc
    if settings.first_user_is_admin and _is_first_account(session, user):
        user.is_instance_admin = True
    organization = create_organization(
        session, settings, name=body.organization_name or f"{user.full_name}'s organization", owner=user
    )
    audit.describe(
        session,
        resource_type="users",
        resource_id=user.id,
        organization_id=organization.id,
        actor_type="user",
        actor_id=user.id,
    )
    return start_session(session, settings, user, ip=ip, user_agent=None)


def _is_first_account(session: Session, user: User) -> bool:
    """Whether ``user`` is the installation's only account: MAESTRO_FIRST_USER_IS_ADMIN
    never promotes a later sign-up, even on a server where it was turned on late."""
    return session.scalar(select(User.id).where(User.id != user.id).limit(1)) is None


class SignInRefused(AuthenticationRequired):
    """A refused sign-in, with why (for the failed sign-ins an administrator reads;
    the caller sees the same message whatever the reason)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_password(session: Session, settings: Settings, *, email: str, password: str) -> str:
    """The id of the account that ``email`` and ``password`` open, or 401. Meant for a
    reader: a wrong password, which costs a full hash, never holds the write lock."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if not security.verify_password(settings, user.password_hash if user else None, password) or user is None:
        raise SignInRefused("Wrong email or password", "unknown_email" if user is None else "wrong_password")
    if not user.is_active:
        raise SignInRefused("This account is disabled", "account_disabled")
    return user.id


def login(
    session: Session,
    settings: Settings,
    *,
    user_id: str,
    password: str,
    ip: str | None,
    user_agent: str | None,
) -> TokenPair:
    """Start a session for the account ``check_password`` returned."""
    user = session.get(User, user_id)
    if user is None or not user.is_active:  # removed or disabled since the check
        raise AuthenticationRequired("Wrong email or password")
    if security.needs_rehash(settings, user.password_hash or ""):
        user.password_hash = security.hash_password(settings, password)
    user.last_login_at = utcnow()
    audit.describe(
        session,
        resource_type="users",
        resource_id=user.id,
        actor_type="user",
        actor_id=user.id,
        organization_id=user.current_organization_id,
    )
    return start_session(session, settings, user, ip=ip, user_agent=user_agent)


def start_session(
    session: Session, settings: Settings, user: User, *, ip: str | None, user_agent: str | None
) -> TokenPair:
    now = utcnow()
    auth_session = AuthSession(
        user_id=user.id,
        expires_at=now + timedelta(days=settings.refresh_token_ttl_days),
        ip=ip,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(auth_session)
    session.flush()
    return _issue(session, settings, user, auth_session)


def _issue(session: Session, settings: Settings, user: User, auth_session: AuthSession) -> TokenPair:
    refresh_token = security.new_refresh_token()
    session.add(RefreshToken(session_id=auth_session.id, token_hash=security.sha256_hex(refresh_token)))
    session.flush()
    access_token = security.issue_access_token(
        settings, user_id=user.id, session_id=auth_session.id, organization_id=user.current_organization_id
    )
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=settings.access_token_ttl_seconds,
        user=user_read(session, user, user.current_organization_id),
    )


def revoke_session(session: Session, session_id: str, reason: str) -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )


@dataclass
class RefreshOutcome:
    tokens: TokenPair | None
    reused: bool = False


def refresh_token_is_live(session: Session, refresh_token: str) -> bool:
    """Whether the token belongs to an open session of an active user. Asked on a
    reader first, so that unknown or dead tokens never start a write transaction."""
    if not security.refresh_token_is_well_formed(refresh_token):
        return False
    found = session.execute(
        select(AuthSession.revoked_at, AuthSession.expires_at, User.is_active)
        .join(RefreshToken, RefreshToken.session_id == AuthSession.id)
        .join(User, User.id == AuthSession.user_id)
        .where(RefreshToken.token_hash == security.sha256_hex(refresh_token))
    ).first()
    return found is not None and found.revoked_at is None and found.expires_at > utcnow() and found.is_active


def refresh(
    session: Session, settings: Settings, refresh_token: str, *, now: datetime | None = None
) -> RefreshOutcome:
    """Rotate: the presented token is spent and a new pair issued. A token spent less
    than ``MAESTRO_REFRESH_REUSE_GRACE_SECONDS`` ago gets another pair of the same
    session (two tabs, or a retry, refreshing at once). Presenting it later means it
    leaked: the whole session (its family) is revoked, and the caller commits that
    revocation before answering 401. ``now`` is the clock, for tests."""
    now = now or utcnow()
    row = session.execute(
        select(RefreshToken, AuthSession, User)
        .join(AuthSession, AuthSession.id == RefreshToken.session_id)
        .join(User, User.id == AuthSession.user_id)
        .where(RefreshToken.token_hash == security.sha256_hex(refresh_token))
    ).first()
    if row is None:
        return RefreshOutcome(None)
    token, auth_session, user = row.RefreshToken, row.AuthSession, row.User
    if auth_session.revoked_at is not None or auth_session.expires_at <= now or not user.is_active:
        return RefreshOutcome(None)
    spent = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
    )
    if matched_rows(spent) != 1 and not _within_grace(session, settings, token.id, now):
        revoke_session(session, auth_session.id, "refresh token reused")
        audit.describe(
            session,
            resource_type="sessions",
            resource_id=security.session_reference(auth_session.id),
            actor_type="user",
            actor_id=user.id,
            organization_id=user.current_organization_id,
            outcome="failure",
            status_code=401,
            reason="refresh token reused: session revoked",
        )
        return RefreshOutcome(None, reused=True)
    auth_session.last_used_at = now
    audit.describe(
        session,
        resource_type="sessions",
        resource_id=security.session_reference(auth_session.id),
        actor_type="user",
        actor_id=user.id,
        organization_id=user.current_organization_id,
    )
    return RefreshOutcome(_issue(session, settings, user, auth_session))


def _within_grace(session: Session, settings: Settings, token_id: str, now: datetime) -> bool:
    """Whether a spent token was spent recently enough to be presented again. Read
    afresh: a concurrent refresh may have spent it since this transaction began."""
    grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
    rotated_at = session.scalar(select(RefreshToken.rotated_at).where(RefreshToken.id == token_id))
    return grace > timedelta(0) and rotated_at is not None and now < rotated_at + grace


def logout(session: Session, session_id: str) -> None:
    revoke_session(session, session_id, "logout")
    audit.describe(session, resource_type="sessions", resource_id=security.session_reference(session_id))


def user_read(session: Session, user: User, organization_id: str | None) -> UserRead:
    current = None
    if organization_id:
        row = session.execute(
            select(Organization.id, Organization.name, Membership.role)
            .join(Membership, Membership.organization_id == Organization.id)
            .where(Organization.id == organization_id, Membership.user_id == user.id)
        ).first()
        if row is not None:
            current = CurrentOrganization(id=row.id, name=row.name, role=Role(row.role))
    return UserRead(
        id=user.id,
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        avatar_url=user.avatar_url,
        current_organization=current,
        last_login_at=user.last_login_at,
        created_at=user.created_at,
    )


def users_by_id(session: Session, ids: Iterable[str | None]) -> dict[str, User]:
    """The users among ``ids`` (None and repeats ignored), in one query: how list
    responses name creators and members for a whole page at once."""
    wanted = {user_id for user_id in ids if user_id}
    if not wanted:
        return {}
    return {user.id: user for user in session.scalars(select(User).where(User.id.in_(wanted)))}


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


def update_me(session: Session, user: User, body: MeUpdate) -> User:
    changes = body.model_dump(exclude_unset=True)
    organization_id = changes.pop("current_organization", None)
    if organization_id is not None:
        is_member = session.scalar(
            select(Membership.id).where(
                Membership.organization_id == organization_id, Membership.user_id == user.id
            )
        )
        if is_member is None:
            raise NotFound("No such organization")
        user.current_organization_id = organization_id
    for field, value in changes.items():
        setattr(user, field, value if value is not None else ("" if field != "avatar_url" else None))
    audit.describe(session, resource_type="users", resource_id=user.id)
    session.flush()
    return user


def change_password(
    session: Session, settings: Settings, principal: Principal, *, known_hash: str, new_hash: str
) -> None:
    """Replace the password the caller proved they know (``known_hash``, read and
    verified before this transaction) and end every other session of theirs; the
    current one goes on. A change made meanwhile by someone else wins: 409."""
    changed = session.execute(
        update(User)
        .where(User.id == principal.user_id, User.password_hash == known_hash)
        .values(password_hash=new_hash)
    )
    if matched_rows(changed) != 1:
        raise Conflict("The password was changed meanwhile; sign in again")
    session.execute(
        update(AuthSession)
        .where(
            AuthSession.user_id == principal.user_id,
            AuthSession.id != principal.session_id,
            AuthSession.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow(), revoked_reason="password changed")
    )
    audit.describe(session, resource_type="users", resource_id=principal.user_id, changed=["password"])


def set_password(session: Session, settings: Settings, user: User, password: str) -> None:
    """Also ends every session of the user: a reset must lock out whoever had access."""
    user.password_hash = security.hash_password(settings, password)
    session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason="password reset")
    )
    session.flush()
