"""Who may do what: one function, ``authorize``, answers every question.

A principal is a user (with a role in each organisation they belong to, and possibly
a role in a project) or an API key (scoped to one organisation, with permissions per
resource kind). A resource the principal may not even see answers 404, never 403,
so ids of other tenants leak nothing; a visible resource the principal may not
change answers 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.errors import NotFound, PermissionDenied
from maestro.identity.models import Membership, ProjectMember, Role, Visibility

Action = Literal["read", "write", "delete"]
ACTIONS: tuple[Action, ...] = ("read", "write", "delete")

# Resource kinds an API key can be granted, each with actions read/write/delete.
API_KEY_RESOURCES = (
    "organizations",
    "projects",
    "models",
    "experiments",
    "deployments",
    "inference",
    "monitoring",
    "webhooks",
    "alerts",
    "notification_channels",
    "files",
    "jobs",
)
# Kinds only a person may touch: a key must never mint keys or change who has access.
USER_ONLY_RESOURCES = ("members", "api_keys", "audit_logs", "invitations")

# Where denials are noted on a session, for the audit log to write.
DENIALS = "audit_denials"

_RANK = {Role.viewer: 1, Role.developer: 2, Role.admin: 3}

# Least organisation role needed, for resources that belong to the organisation itself.
ORGANIZATION_RULES: dict[tuple[str, Action], Role] = {
    ("organizations", "read"): Role.viewer,
    ("organizations", "write"): Role.admin,
    ("organizations", "delete"): Role.admin,
    ("members", "read"): Role.viewer,
    ("members", "write"): Role.admin,
    ("members", "delete"): Role.admin,
    ("invitations", "read"): Role.admin,
    ("invitations", "write"): Role.admin,
    ("invitations", "delete"): Role.admin,
    ("api_keys", "read"): Role.admin,
    ("api_keys", "write"): Role.admin,
    ("api_keys", "delete"): Role.admin,
    ("audit_logs", "read"): Role.admin,
    ("webhooks", "read"): Role.admin,
    ("webhooks", "write"): Role.admin,
    ("webhooks", "delete"): Role.admin,
    ("alerts", "read"): Role.viewer,
    ("alerts", "write"): Role.developer,  # acknowledge, resolve, silence
    ("alerts", "delete"): Role.developer,
    ("notification_channels", "read"): Role.admin,
    ("notification_channels", "write"): Role.admin,
    ("notification_channels", "delete"): Role.admin,
    ("projects", "read"): Role.viewer,
    ("projects", "write"): Role.developer,  # create a project in the organisation
    ("jobs", "read"): Role.viewer,  # organisation-wide jobs, such as imports
}

# Least effective project role needed inside a project; anything unlisted follows
# the default: read needs viewer, write and delete need developer.
PROJECT_RULES: dict[tuple[str, Action], Role] = {
    ("projects", "write"): Role.admin,
    ("projects", "delete"): Role.admin,
    ("members", "write"): Role.admin,
    ("members", "delete"): Role.admin,
}
_PROJECT_DEFAULT: dict[Action, Role] = {
    "read": Role.viewer,
    "write": Role.developer,
    "delete": Role.developer,
}


@dataclass
class Principal:
    kind: Literal["user", "api_key"]
    id: str
    organization_id: str | None  # the organisation this request acts in
    org_role: Role | None = None  # a user's role there
    user_id: str | None = None
    session_id: str | None = None
    permissions: dict[str, list[str]] = field(default_factory=dict)  # an API key's grants
    plan: str | None = None
    is_instance_admin: bool = False  # a user who administers the whole installation

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


class ProjectScope(Protocol):
    """What authorisation reads of a project (a ``maestro.projects.models.Project``);
    projects sit above identity, so identity names only the attributes it needs."""

    @property
    def id(self) -> str: ...
    @property
    def organization_id(self) -> str: ...
    @property
    def visibility(self) -> str: ...


@dataclass(frozen=True)
class Target:
    """What an action is about: a kind of resource, the organisation that owns it and,
    for anything inside a project, the project."""

    kind: str
    organization_id: str
    project: ProjectScope | None = None


def organization_role(session: Session, principal: Principal, organization_id: str) -> Role | None:
    if principal.user_id is None:
        return None
    if organization_id == principal.organization_id and principal.org_role is not None:
        return principal.org_role
    role = session.scalar(
        select(Membership.role).where(
            Membership.organization_id == organization_id, Membership.user_id == principal.user_id
        )
    )
    return Role(role) if role else None


def project_role(session: Session, principal: Principal, project: ProjectScope) -> Role | None:
    """The role a user effectively holds in a project, or None when it is invisible.

    Organisation admins administer every project. A project member holds their
    project role, which may narrow or widen their organisation role. Other members
    of the organisation keep their organisation role in `organization` and `public`
    projects. Anyone signed in may read a `public` project.
    """
    org_role = organization_role(session, principal, project.organization_id)
    if org_role is Role.admin:
        return Role.admin
    if principal.user_id is not None:
        member_role = session.scalar(
            select(ProjectMember.role).where(
                ProjectMember.project_id == project.id, ProjectMember.user_id == principal.user_id
            )
        )
        if member_role:
            return Role(member_role)
    if org_role is not None and project.visibility in (Visibility.organization, Visibility.public):
        return org_role
    if project.visibility == Visibility.public:
        return Role.viewer
    return None


def _check(principal: Principal, session: Session, action: Action, target: Target) -> tuple[bool, bool]:
    """(visible, allowed)."""
    if principal.kind == "api_key":
        if target.organization_id != principal.organization_id:
            return False, False
        if target.kind in USER_ONLY_RESOURCES:
            return True, False
        return True, action in principal.permissions.get(target.kind, [])

    if target.project is None:
        role = organization_role(session, principal, target.organization_id)
        if role is None:
            return False, False
        needed = ORGANIZATION_RULES.get((target.kind, action))
        return True, needed is not None and _RANK[role] >= _RANK[needed]

    role = project_role(session, principal, target.project)
    if role is None:
        return False, False
    needed = PROJECT_RULES.get((target.kind, action), _PROJECT_DEFAULT[action])
    return True, _RANK[role] >= _RANK[needed]


def can(session: Session, principal: Principal, action: Action, target: Target) -> bool:
    return _check(principal, session, action, target)[1]


def note_denied(
    session: Session, principal: Principal, action: Action, target: Target, *, visible: bool = True
) -> None:
    """``visible``: whether the principal may see the target at all. A probe of
    another tenant's id is logged in the prober's own organisation, never in the
    target's (which may not even exist). The audit log writes a row for each when the
    request fails (``audit.record_denials``)."""
    session.info.setdefault(DENIALS, []).append(
        {
            "visible": visible,
            "principal": principal,
            "action": action,
            "resource_type": target.kind,
            "organization_id": target.organization_id,
            "project_id": target.project.id if target.project is not None else None,
        }
    )


def authorize(
    session: Session, principal: Principal, action: Action, target: Target, *, missing: str | None = None
) -> None:
    """Raise unless ``principal`` may perform ``action`` on ``target``. A denial is
    noted on the session so the audit log records it even though the request's
    transaction rolls back.

    An invisible target answers exactly as a missing one would: ``missing`` is the
    message the caller uses when the addressed object does not exist (by default
    that of the project or organisation holding it), so not even the wording tells
    another tenant's ids apart from unknown ones."""
    visible, allowed = _check(principal, session, action, target)
    if allowed:
        return
    note_denied(session, principal, action, target, visible=visible)
    if not visible:
        raise NotFound(
            missing or ("No such project" if target.project is not None else "No such organization")
        )
    raise PermissionDenied(denial_message(session, principal, action, target))


def denial_message(session: Session, principal: Principal, action: Action, target: Target) -> str:
    """What a 403 says: the permission an API key lacks, or the role an action needs."""
    kind = target.kind.replace("_", " ")
    if principal.kind == "api_key":
        if target.kind in USER_ONLY_RESOURCES:
            return f"Only a person may {action} {kind}; API keys cannot"
        return f"This API key lacks {target.kind}: {action}"
    if target.project is None:
        role = organization_role(session, principal, target.organization_id)
        needed = ORGANIZATION_RULES.get((target.kind, action))
        where = "in this organization"
    else:
        role = project_role(session, principal, target.project)
        needed = PROJECT_RULES.get((target.kind, action), _PROJECT_DEFAULT[action])
        where = "in this project"
    if needed is None:
        return f"Nobody may {action} {kind} {where}"
    yours = role.value if role is not None else "none"
    return f"To {action} {kind} {where} you need the {needed.value} role; yours is {yours}"


def required_instance_admin(principal: Principal) -> None:
    """Raise unless the caller is a person who administers the installation."""
    if principal.kind != "user" or not principal.is_instance_admin:
        raise PermissionDenied("Only an instance administrator may do this")


# --- the permission a route needs of an API key, from its path and method ------------------
# Path segments naming a kind of resource; the last one in a route's path is what the
# route acts on (``/projects/{id}/models`` → models, ``/experiments/{id}/runs`` →
# experiments). Used where a route's own check has not run yet: a request whose body
# is invalid is refused for a missing permission before it is told what is wrong.
_SEGMENT_KINDS = {
    "organizations": "organizations",
    "projects": "projects",
    "models": "models",
    "model-cards": "models",
    "experiments": "experiments",
    "runs": "experiments",
    "deployments": "deployments",
    "inference": "inference",
    "monitoring": "monitoring",
    "webhooks": "webhooks",
    "alerts": "alerts",
    "alert-rules": "monitoring",
    "alert-silences": "alerts",
    "notification-channels": "notification_channels",
    "files": "files",
    "datasets": "files",
    "jobs": "jobs",
    "users": "members",
    "members": "members",
    "api-keys": "api_keys",
    "audit-logs": "audit_logs",
    "invitations": "invitations",
    "invite": "invitations",
}
# Routes whose permission the rule above does not give.
_ROUTE_SCOPES: dict[tuple[str, str], tuple[str, Action]] = {
    ("GET", "/api/v1/projects/{project_id}/members"): ("projects", "read"),
    ("DELETE", "/api/v1/models/{model_id}/tags/{key}"): ("models", "write"),
    ("DELETE", "/api/v1/models/{model_id}/aliases/{alias}"): ("models", "write"),
    ("DELETE", "/api/v1/models/{model_id}/versions/{version}/tags/{key}"): ("models", "write"),
    ("DELETE", "/api/v1/models/{model_id}/tags"): ("models", "write"),
    ("DELETE", "/api/v1/models/{model_id}/versions/{version}/tags"): ("models", "write"),
    ("POST", "/api/v1/upload/models"): ("files", "write"),
    ("GET", "/api/v1/deployments/{deployment_id}/monitoring/alerts"): ("monitoring", "read"),
    ("POST", "/api/v1/deployments/{deployment_id}/monitoring/alerts"): ("monitoring", "write"),
    ("POST", "/api/v1/inference/{deployment_name}"): ("inference", "read"),
    ("POST", "/api/v1/inference/{deployment_name}/batch"): ("inference", "read"),
}


def route_scope(path: str, method: str, *, reads_only: bool) -> tuple[str, Action] | None:
    """(kind, action) an API key needs for a route of the platform API, or None when
    the path names no kind (the route then decides alone)."""
    method = method.upper()
    if (method, path) in _ROUTE_SCOPES:
        return _ROUTE_SCOPES[method, path]
    if not path.startswith("/api/v1/") or path.startswith("/api/v1/admin/"):
        return None
    kinds = [_SEGMENT_KINDS[part] for part in path.split("/") if part in _SEGMENT_KINDS]
    if not kinds:
        return None
    action: Action
    if method in ("GET", "HEAD") or reads_only:
        action = "read"
    elif method == "DELETE":
        action = "delete"
    else:
        action = "write"
    return kinds[-1], action


def api_key_lacks(principal: Principal, scope: tuple[str, Action]) -> str | None:
    """Why an API key may not use a route needing ``scope``; None when it may (or is no key)."""
    if principal.kind != "api_key":
        return None
    kind, action = scope
    if kind in USER_ONLY_RESOURCES:
        return f"Only a person may {action} {kind.replace('_', ' ')}; API keys cannot"
    if action not in principal.permissions.get(kind, []):
        return f"This API key lacks {kind}: {action}"
    return None
