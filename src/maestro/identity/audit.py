"""The audit log: one row for every state-changing request, written in the request's
own transaction, and one for every denied authorisation, written even though the
request's transaction rolls back.

Services describe what they changed with ``describe``; the request's session
dependency writes the row when the request succeeds (``record_success``) or records
denials when it fails (``record_denials``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from maestro.api.context import current_request_id
from maestro.db import new_id, utcnow
from maestro.identity.models import AuditLog

# Authorisation notes its denials on the session (``note_denied``, re-exported for the
# services that deny on their own); this module writes them.
from maestro.identity.rbac import DENIALS as _DENIALS
from maestro.identity.rbac import Principal, note_denied

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["describe", "discard", "note_denied", "record_denials", "record_success"]

_INSERT = insert(AuditLog.__table__)
_DESCRIPTION = "audit_description"


@dataclass
class Description:
    resource_type: str | None = None
    resource_id: str | None = None
    organization_id: str | None = None
    actor_id: str | None = None
    actor_type: str | None = None
    outcome: str | None = None  # when a request answers a failure it still commits (refresh reuse)
    status_code: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def describe(
    session: Session,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    organization_id: str | None = None,
    actor_id: str | None = None,
    actor_type: str | None = None,
    outcome: str | None = None,
    status_code: int | None = None,
    **details: Any,
) -> None:
    """Say what the current request changed; later calls fill in what earlier ones left."""
    description: Description = session.info.setdefault(_DESCRIPTION, Description())
    for name, value in (
        ("resource_type", resource_type),
        ("resource_id", resource_id),
        ("organization_id", organization_id),
        ("actor_id", actor_id),
        ("actor_type", actor_type),
        ("outcome", outcome),
        ("status_code", status_code),
    ):
        if value is not None:
            setattr(description, name, value)
    description.details.update({key: value for key, value in details.items() if value is not None})


def _request_facts(request: Request | None) -> dict[str, Any]:
    if request is None:
        return {"request_id": current_request_id()}
    client = request.client
    return {
        "method": request.method,
        "path": request.url.path[:500],
        "ip": client.host if client else None,
        "request_id": current_request_id(),
    }


def _operation(request: Request | None) -> str:
    route = request.scope.get("route") if request is not None else None
    if route is not None and getattr(route, "tags", None):
        return f"{route.tags[0]}:{route.name}"
    return "unknown"


def record_success(session: Session, request: Request | None, status_code: int | None = None) -> None:
    principal: Principal | None = getattr(request.state, "principal", None) if request is not None else None
    description: Description = session.info.pop(_DESCRIPTION, None) or Description()
    path_params = dict(request.path_params) if request is not None else {}
    organization_id = description.organization_id or (principal.organization_id if principal else None)
    # A Core insert, not an ORM object: the row is written once and never read back in
    # the request, and a flush of one object costs several times the insert itself.
    session.execute(
        _INSERT,
        {
            "id": new_id(AuditLog.id_prefix),
            "created_at": utcnow(),
            "organization_id": organization_id,
            "actor_type": description.actor_type or (principal.kind if principal else "anonymous"),
            "actor_id": description.actor_id or (principal.id if principal else None),
            "action": _operation(request),
            "resource_type": description.resource_type,
            "resource_id": description.resource_id or next(iter(path_params.values()), None),
            "outcome": description.outcome or "success",
            "status_code": description.status_code or status_code,
            "details": description.details,
            **_request_facts(request),
        },
    )


def record_denials(session: Session, request: Request | None) -> bool:
    """Write rows for the denials noted during a failed request; True if any."""
    denials = session.info.pop(_DENIALS, [])
    for denial in denials:
        principal: Principal = denial["principal"]
        session.add(
            AuditLog(
                organization_id=denial["organization_id"] if denial["visible"] else principal.organization_id,
                actor_type=principal.kind,
                actor_id=principal.id,
                action=_operation(request),
                resource_type=denial["resource_type"],
                resource_id=denial["project_id"],
                outcome="denied",
                status_code=None,
                details={"attempted": denial["action"], "target_organization_id": denial["organization_id"]},
                **_request_facts(request),
            )
        )
    return bool(denials)


def discard(session: Session) -> None:
    session.info.pop(_DESCRIPTION, None)
    session.info.pop(_DENIALS, None)
