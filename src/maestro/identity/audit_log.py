"""Reading the audit log: every state-changing request and every denied
authorisation in an organisation, newest first, for its admins."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParams, PageParamsDep, paginate
from maestro.api.params import ID_PATTERN, OrganizationId
from maestro.errors import ValidationFailed
from maestro.identity.api_keys import as_utc
from maestro.identity.models import AuditLog
from maestro.identity.rbac import Principal, Target, authorize


# --- schemas -----------------------------------------------------------------------------
class AuditLogRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    actor_type: str = Field(description="`user`, `api_key` or `anonymous`.")
    actor_id: str | None
    action: str = Field(description="The operation, as `{tag}:{operation}`.", examples=["auth:login"])
    resource_type: str | None
    resource_id: str | None
    outcome: str = Field(description="`success` or `denied`.")
    status_code: int | None
    method: str | None
    path: str | None
    ip: str | None
    request_id: str | None
    details: dict[str, Any]


_TEXT = r"^[^\x00-\x1f\x7f]+$"


class AuditLogFilters:
    def __init__(
        self,
        actor_id: Annotated[
            str | None, Query(max_length=40, pattern=ID_PATTERN, description="Only this actor's entries.")
        ] = None,
        action: Annotated[
            str | None,
            Query(max_length=100, pattern=_TEXT, description="Exact operation, e.g. `auth:login`."),
        ] = None,
        resource_type: Annotated[
            str | None, Query(max_length=50, pattern=_TEXT, description="e.g. `api_keys`, `projects`.")
        ] = None,
        outcome: Annotated[
            Literal["success", "denied"] | None, Query(description="Only this outcome.")
        ] = None,
        since: Annotated[
            datetime | None, Query(description="Entries at or after this time (ISO 8601; UTC if no zone).")
        ] = None,
        until: Annotated[
            datetime | None, Query(description="Entries before this time (ISO 8601; UTC if no zone).")
        ] = None,
    ) -> None:
        self.actor_id = actor_id
        self.action = action
        self.resource_type = resource_type
        self.outcome = outcome
        self.since = _utc("since", since)
        self.until = _utc("until", until)
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValidationFailed(
                "`since` must not be later than `until`", details=[("until", "earlier than since")]
            )


def _utc(field: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return as_utc(value)
    except ValueError as exc:
        raise ValidationFailed("Invalid input parameters", details=[(field, str(exc))]) from exc


# --- service -----------------------------------------------------------------------------
def list_entries(
    session: Session, principal: Principal, organization_id: str, filters: AuditLogFilters, params: PageParams
) -> Page[AuditLogRead]:
    authorize(session, principal, "read", Target("audit_logs", organization_id))
    statement = select(AuditLog).where(AuditLog.organization_id == organization_id)
    for column, value in (
        (AuditLog.actor_id, filters.actor_id),
        (AuditLog.action, filters.action),
        (AuditLog.resource_type, filters.resource_type),
        (AuditLog.outcome, filters.outcome),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if filters.since is not None:
        statement = statement.where(AuditLog.created_at >= filters.since)
    if filters.until is not None:
        statement = statement.where(AuditLog.created_at < filters.until)

    def to_items(rows: Sequence[AuditLog]) -> list[AuditLogRead]:
        return [AuditLogRead.model_validate(row) for row in rows]

    return paginate(
        session, statement, params, sort_column=AuditLog.created_at, id_column=AuditLog.id, to_item=to_items
    )


# --- routes ------------------------------------------------------------------------------
router = APIRouter(prefix="/api/v1", tags=["audit_logs"])


@router.get(
    "/organizations/{org_id}/audit-logs",
    response_model=Page[AuditLogRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_audit_logs(
    org_id: OrganizationId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    filters: Annotated[AuditLogFilters, Depends()],
) -> Page[AuditLogRead]:
    """The organisation's audit log, newest first, optionally filtered."""
    return list_entries(session, principal, org_id, filters, params)
