"""What a caller of the name-addressed API can see: the projects of the organisation the
request acts in that it may read, the models listed there, and the project a model
registered without one goes to."""

from __future__ import annotations

from sqlalchemy import Select, false, select
from sqlalchemy.orm import Session

from maestro.errors import ValidationFailed
from maestro.identity.rbac import Principal, Target, authorize
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.registry import filters
from maestro.registry.models import RegisteredModel


def readable_projects(session: Session, principal: Principal) -> Select[Project] | None:
    """The projects of the organisation the request acts in that the principal can see
    (an API key: every project of its organisation; its grants are checked per model),
    or None when it acts in none. Names are resolved and models listed among these."""
    organization_id = principal.organization_id
    if organization_id is None:
        return None
    if principal.kind == "api_key":
        return select(Project).where(Project.organization_id == organization_id)
    return projects_service.visible_projects(session, principal, organization_id)


def readable_models(
    session: Session, principal: Principal, filter_string: str | None
) -> Select[RegisteredModel]:
    """The models of every project of the acting organisation that the principal may
    read, matching ``filter_string`` (``registry.filters``; 422 when malformed)."""
    conditions = filters.parse(filter_string or "")
    projects = readable_projects(session, principal)
    if projects is None:
        return select(RegisteredModel).where(false())
    if principal.kind == "api_key" and principal.organization_id is not None:
        authorize(session, principal, "read", Target("models", principal.organization_id))
    statement = select(RegisteredModel).where(
        RegisteredModel.project_id.in_(projects.with_only_columns(Project.id).order_by(None))
    )
    dialect = session.get_bind().dialect.name
    return statement.where(*filters.where(conditions, dialect))


def project_to_register_in(session: Session, principal: Principal, *choices: str | None) -> str:
    """The project a model registered by name goes to: the one named (the body's
    ``project_id``, the ``X-Maestro-Project`` header; they must agree), else the
    caller's only project; 422 saying how to choose otherwise."""
    named = {choice for choice in choices if choice}
    if len(named) > 1:
        raise ValidationFailed(
            "project_id and the X-Maestro-Project header name different projects; send one",
            details=[("project_id", "differs from the X-Maestro-Project header")],
        )
    if named:
        return named.pop()
    projects = readable_projects(session, principal)
    ids = (
        list(session.scalars(projects.with_only_columns(Project.id).order_by(None).limit(2)))
        if projects is not None
        else []
    )
    if len(ids) == 1:
        return ids[0]
    seen = "no project" if not ids else "several projects"
    raise ValidationFailed(
        f"Choose the project: you can see {seen}; send project_id in the body "
        "or the project's id in the X-Maestro-Project header",
        details=[("project_id", f"required when you can see {seen}")],
    )
