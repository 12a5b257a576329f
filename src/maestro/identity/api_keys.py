"""API keys: organisation-scoped credentials for programs, with permissions per
resource kind (``{"models": ["read"], "inference": ["read"]}``), an optional expiry,
and revocation that takes effect on the next request.

A key is shown in full exactly once, in the response that creates it; only its
visible prefix and its SHA-256 hash are stored. Keys are managed by the
organisation's admins, and never by another key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, create_model
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParams, PageParamsDep, paginate
from maestro.api.params import ApiKeyId, OrganizationId
from maestro.db import utcnow
from maestro.errors import NotFound
from maestro.identity import audit, security
from maestro.identity.models import ApiKey, User
from maestro.identity.rbac import ACTIONS, API_KEY_RESOURCES, Principal, Target, authorize
from maestro.identity.schemas import UserRef, user_ref
from maestro.identity.service import users_by_id
from maestro.schemas import StrictModel, Visible


# --- schemas -----------------------------------------------------------------------------
def as_utc(value: datetime) -> datetime:
    """A datetime in UTC; one without a time zone is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError("date is out of range") from exc


def _in_the_future(value: datetime) -> datetime:
    value = as_utc(value)
    if value <= utcnow():
        raise ValueError("must be in the future")
    return value


def _distinct_actions(actions: list[str]) -> list[str]:
    return [action for action in ACTIONS if action in actions]


# Ids are letters, digits, `_` and `-`; names have no control characters (PostgreSQL
# cannot even store NUL), so such input is a 422 rather than an error deeper down.
KeyName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
ExpiresAt = Annotated[datetime, AfterValidator(_in_the_future)]
GrantedActions = Annotated[
    list[Literal["read", "write", "delete"]],
    Field(max_length=len(ACTIONS)),
    AfterValidator(_distinct_actions),
]

# One optional list of actions per resource kind a key may be granted, so an unknown
# kind (or a person-only one such as `api_keys`) is refused with its name as the field.
_PERMISSION_FIELDS: dict[str, Any] = {
    resource: (GrantedActions | None, None) for resource in API_KEY_RESOURCES
}
ApiKeyPermissions: type[StrictModel] = create_model(
    "ApiKeyPermissions",
    __base__=StrictModel,
    __doc__="Actions granted per resource kind; kinds left out are not granted.",
    **_PERMISSION_FIELDS,
)


def _grants(permissions: BaseModel) -> dict[str, list[str]]:
    return {resource: actions for resource, actions in permissions.model_dump().items() if actions}


class ApiKeyCreate(StrictModel):
    name: KeyName = Field(examples=["Production API Key"])
    permissions: ApiKeyPermissions = Field(
        examples=[{"inference": ["read"], "models": ["read"], "deployments": ["read"]}]
    )
    expires_at: ExpiresAt | None = Field(None, description="When the key stops working; never if omitted.")


class ApiKeyUpdate(StrictModel):
    """Fields left out keep their value; `name` and `permissions` may not be null."""

    name: KeyName = Field(None, description="A new name.")  # type: ignore[assignment]  # None: left out; null is refused
    permissions: ApiKeyPermissions = Field(  # type: ignore[assignment]  # None: left out; null is refused
        None, description="Replaces every grant of the key."
    )
    expires_at: ExpiresAt | None = Field(None, description="A new expiry; `null` makes the key never expire.")


class ApiKeyRead(BaseModel):
    id: str = Field(examples=["key_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.", examples=["mk_a1B2c3D4"])
    permissions: dict[str, list[str]]
    expires_at: datetime | None
    last_used_at: datetime | None
    created_by: UserRef | None
    created_at: datetime
    revoked: bool


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The full key. It is shown only in this response; store it now.")


# --- service -----------------------------------------------------------------------------
def _read(api_key: ApiKey, creator: User | None) -> ApiKeyRead:
    return ApiKeyRead(
        id=api_key.id,
        name=api_key.name,
        prefix=api_key.prefix,
        permissions={kind: list(actions) for kind, actions in (api_key.permissions or {}).items()},
        expires_at=api_key.expires_at,
        last_used_at=api_key.last_used_at,
        created_by=user_ref(creator),
        created_at=api_key.created_at,
        revoked=api_key.revoked_at is not None,
    )


def _reads(session: Session, api_keys: Sequence[ApiKey]) -> list[ApiKeyRead]:
    creators = users_by_id(session, (key.created_by_id for key in api_keys))
    return [_read(key, creators.get(key.created_by_id or "")) for key in api_keys]


def _audit_values(api_key: ApiKey) -> dict[str, Any]:
    return {
        "name": api_key.name,
        "prefix": api_key.prefix,
        "permissions": api_key.permissions,
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
    }


def get_key(
    session: Session, principal: Principal, key_id: str, action: Literal["write", "delete"]
) -> ApiKey:
    """A live (not revoked) key the principal may ``action``; 404 for another
    organisation's key."""
    api_key = session.get(ApiKey, key_id)
    if api_key is None or api_key.revoked_at is not None:
        raise NotFound("No such API key")
    authorize(
        session, principal, action, Target("api_keys", api_key.organization_id), missing="No such API key"
    )
    return api_key


def list_keys(
    session: Session,
    principal: Principal,
    organization_id: str,
    params: PageParams,
    *,
    include_revoked: bool = False,
) -> Page[ApiKeyRead]:
    authorize(session, principal, "read", Target("api_keys", organization_id))
    statement = select(ApiKey).where(ApiKey.organization_id == organization_id)
    if not include_revoked:
        statement = statement.where(ApiKey.revoked_at.is_(None))
    return paginate(
        session,
        statement,
        params,
        sort_column=ApiKey.created_at,
        id_column=ApiKey.id,
        to_item=lambda rows: _reads(session, rows),
    )


def create_key(
    session: Session, principal: Principal, organization_id: str, body: ApiKeyCreate
) -> ApiKeyCreated:
    authorize(session, principal, "write", Target("api_keys", organization_id))
    new = security.generate_api_key()
    api_key = ApiKey(
        organization_id=organization_id,
        name=body.name,
        prefix=new.prefix,
        key_hash=new.key_hash,
        permissions=_grants(body.permissions),
        expires_at=body.expires_at,
        created_by_id=principal.user_id,
    )
    session.add(api_key)
    session.flush()
    audit.describe(
        session,
        resource_type="api_keys",
        resource_id=api_key.id,
        organization_id=organization_id,
        **_audit_values(api_key),
    )
    creator = session.get(User, principal.user_id) if principal.user_id else None
    return ApiKeyCreated(**_read(api_key, creator).model_dump(), key=new.key)


def update_key(session: Session, principal: Principal, key_id: str, body: ApiKeyUpdate) -> ApiKeyRead:
    api_key = get_key(session, principal, key_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes:
        api_key.name = changes["name"]
    if "permissions" in changes:
        assert body.permissions is not None
        api_key.permissions = _grants(body.permissions)
    if "expires_at" in changes:
        api_key.expires_at = body.expires_at
    session.flush()
    audit.describe(
        session,
        resource_type="api_keys",
        resource_id=api_key.id,
        organization_id=api_key.organization_id,
        changed=sorted(changes),
        **_audit_values(api_key),
    )
    return _reads(session, [api_key])[0]


def revoke_key(session: Session, principal: Principal, key_id: str) -> None:
    """The key stops authenticating at once; it stays listed with `include_revoked`."""
    api_key = get_key(session, principal, key_id, "delete")
    api_key.revoked_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="api_keys",
        resource_id=api_key.id,
        organization_id=api_key.organization_id,
        name=api_key.name,
        prefix=api_key.prefix,
    )


# --- who acted: keys named by other domains' records ---------------------------------------
def api_keys_by_id(session: Session, ids: Iterable[str | None]) -> dict[str, ApiKey]:
    """The keys among ``ids`` (None and repeats ignored), revoked ones included, in one
    query: how other domains name the key that created or changed something."""
    wanted = {key_id for key_id in ids if key_id}
    if not wanted:
        return {}
    return {key.id: key for key in session.scalars(select(ApiKey).where(ApiKey.id.in_(wanted)))}


# --- routes ------------------------------------------------------------------------------
router = APIRouter(prefix="/api/v1", tags=["api_keys"])


@router.get(
    "/organizations/{org_id}/api-keys",
    response_model=Page[ApiKeyRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_api_keys(
    org_id: OrganizationId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    include_revoked: Annotated[bool, Query(description="Include revoked keys.")] = False,
) -> Page[ApiKeyRead]:
    """The organisation's API keys, newest first; the keys themselves are never shown again."""
    return list_keys(session, principal, org_id, params, include_revoked=include_revoked)


@router.post(
    "/organizations/{org_id}/api-keys",
    status_code=201,
    response_model=Envelope[ApiKeyCreated],
    responses=error_responses(401, 403, 404, 422, 429),
)
def create_api_key(
    org_id: OrganizationId, body: ApiKeyCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ApiKeyCreated]:
    """Create an API key; the full key is in this response only."""
    return Envelope(data=create_key(session, principal, org_id, body))


@router.put(
    "/api-keys/{key_id}",
    status_code=200,
    response_model=Envelope[ApiKeyRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def update_api_key(
    key_id: ApiKeyId, body: ApiKeyUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ApiKeyRead]:
    """Rename an API key, replace its permissions or change its expiry."""
    return Envelope(data=update_key(session, principal, key_id, body))


@router.delete("/api-keys/{key_id}", status_code=204, responses=error_responses(401, 403, 404, 422, 429))
def delete_api_key(key_id: ApiKeyId, principal: CurrentPrincipal, session: SessionDep) -> None:
    """Revoke an API key: it stops working at once."""
    revoke_key(session, principal, key_id)
