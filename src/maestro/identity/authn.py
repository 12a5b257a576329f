"""Authentication: turn a request's credentials into a Principal.

Accepted: ``Authorization: Bearer <access token>``, ``Authorization: Bearer mk_…``
and ``X-API-Key: mk_…``. Credentials in a query string are refused outright, since
URLs end up in logs and browser histories.

With a ``CredentialCache`` a credential checked in the last moment (see
``credential_cache``) authenticates without a database lookup."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.requests import Request

from maestro.config import Settings
from maestro.db import run_after_commit, utcnow
from maestro.errors import AuthenticationRequired, MaestroError, NotFound
from maestro.identity import security
from maestro.identity.credential_cache import ShortMemory
from maestro.identity.models import ApiKey, AuthSession, Membership, Organization, Role, User
from maestro.identity.rbac import Principal

# last_used_at is kept to the minute: a busy key does not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
QUERY_CREDENTIALS = frozenset({"api_key", "apikey", "key", "token", "access_token", "x-api-key", "auth"})
ORGANIZATION_HEADER = "x-organization-id"


def credentials(request: Request) -> tuple[str, str] | None:
    """("api_key" | "jwt", value) from the headers, or None when there are none."""
    if request.scope.get("query_string") and QUERY_CREDENTIALS & {
        name.lower() for name in request.query_params
    }:
        raise AuthenticationRequired(
            "Credentials are not accepted in the query string; "
            "send them in the Authorization or X-API-Key header"
        )
    api_key = request.headers.get("x-api-key")
    if api_key:
        return "api_key", api_key.strip()
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise AuthenticationRequired("Use 'Authorization: Bearer <token>'")
    if value.startswith(security.API_KEY_PREFIX):
        return "api_key", value
    return "jwt", value


class CredentialCache(ShortMemory):
    """Principals by the credential that authenticated them (as a SHA-256 digest, with
    the organisation header), each kept until the TTL or the credential's own expiry.
    ``now`` is the wall clock expiries are compared with (tests give one they move)."""

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(seconds, clock=clock)
        self.now = now

    @staticmethod
    def key(value: str, requested_org: str | None) -> str:
        return security.sha256_hex(f"{value}\x00{requested_org or ''}")

    def remember(
        self, value: str, requested_org: str | None, principal: Principal, expires: datetime | None
    ) -> None:
        at_most = None if expires is None else (expires - self.now()).total_seconds()
        self.put(self.key(value, requested_org), principal, at_most=at_most)


def _record_use(bind: Any, key_id: str, when: datetime) -> None:
    """In its own short transaction, after the request's: a read-only request never
    turns into a writer half-way (which SQLite may refuse under concurrency). Core, not
    a session: a key's last use changes nothing any cached principal depends on."""
    with bind.connect() as connection, connection.begin():
        connection.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))


def _api_key_principal(session: Session, key: str) -> tuple[Principal, datetime | None]:
    if not security.api_key_is_well_formed(key):
        raise AuthenticationRequired("Malformed API key")
    row = session.execute(
        select(ApiKey, Organization.subscription_plan, User.is_active.label("creator_active"))
        .join(Organization, Organization.id == ApiKey.organization_id)
        .outerjoin(User, User.id == ApiKey.created_by_id)
        .where(ApiKey.key_hash == security.sha256_hex(key))
    ).first()
    if row is None or row.ApiKey.revoked_at is not None:
        raise AuthenticationRequired("Unknown or revoked API key")
    if row.creator_active is False:
        raise AuthenticationRequired("The account that created this API key is deactivated")
    api_key: ApiKey = row.ApiKey
    now = utcnow()
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise AuthenticationRequired("This API key has expired")
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        run_after_commit(session, lambda: _record_use(session.get_bind(), api_key.id, now))
    # Remembered no longer than the key lives, nor than the minute after which its last
    # use must be written again.
    recheck = now + LAST_USED_RESOLUTION
    until = recheck if api_key.expires_at is None else min(api_key.expires_at, recheck)
    principal = Principal(
        kind="api_key",
        id=api_key.id,
        organization_id=api_key.organization_id,
        permissions={kind: list(actions) for kind, actions in (api_key.permissions or {}).items()},
        plan=row.subscription_plan,
    )
    return principal, until


def _user_principal(
    session: Session, settings: Settings, token: str, requested_org: str | None
) -> tuple[Principal, datetime | None]:
    try:
        claims = security.decode_access_token(settings, token)
    except security.ExpiredToken as exc:
        raise AuthenticationRequired(
            "The access token has expired; get a new one with POST /api/v1/auth/refresh, or use an API key"
        ) from exc
    except security.InvalidToken as exc:
        raise AuthenticationRequired("Invalid access token") from exc
    row = session.execute(
        select(User, AuthSession)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(User.id == claims["sub"], AuthSession.id == claims["sid"])
    ).first()
    if row is None or not row.User.is_active or row.AuthSession.revoked_at is not None:
        raise AuthenticationRequired("This session has ended; sign in again")
    user: User = row.User
    organization_id = requested_org or user.current_organization_id
    role = plan = None
    if organization_id:
        membership = session.execute(
            select(Membership.role, Organization.subscription_plan)
            .join(Organization, Organization.id == Membership.organization_id)
            .where(Membership.organization_id == organization_id, Membership.user_id == user.id)
        ).first()
        if membership is None:
            if requested_org:
                raise NotFound("No such organization")
            organization_id = None
        else:
            role, plan = Role(membership.role), membership.subscription_plan
    principal = Principal(
        kind="user",
        id=user.id,
        user_id=user.id,
        session_id=row.AuthSession.id,
        organization_id=organization_id,
        org_role=role,
        plan=plan,
        is_instance_admin=user.is_instance_admin,
    )
    return principal, datetime.fromtimestamp(claims["exp"], tz=UTC)


def cached_principal(request: Request, cache: CredentialCache | None) -> Principal | None:
    """The principal the request's credential authenticated to a moment ago, without
    touching the database; None when it must be checked (or carries none)."""
    if cache is None:
        return None
    found = credentials(request)
    if found is None:
        return None
    return cache.peek(cache.key(found[1], request.headers.get(ORGANIZATION_HEADER)))


def authenticate(
    request: Request, session: Session, settings: Settings, cache: CredentialCache | None = None
) -> Principal | None:
    found = credentials(request)
    if found is None:
        return None
    kind, value = found
    requested_org = request.headers.get(ORGANIZATION_HEADER)
    key = ""
    if cache is not None:
        key = cache.key(value, requested_org)
        remembered = cache.get(key)
        if remembered is not None:
            return remembered
    try:
        if kind == "api_key":
            principal, until = _api_key_principal(session, value)
        else:
            principal, until = _user_principal(session, settings, value, requested_org)
    except MaestroError:
        if cache is not None:  # a re-check that failed: the credential no longer holds
            cache.forget(key)
        raise
    if cache is not None:
        cache.remember(value, requested_org, principal, until)
    return principal
