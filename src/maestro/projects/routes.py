from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep, StoreDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import OrganizationId, ProjectId, UserId
from maestro.identity.models import ProjectMember, Visibility
from maestro.projects import service
from maestro.projects.models import Project
from maestro.projects.schemas import (
    ProjectCreate,
    ProjectMemberCreate,
    ProjectMemberRead,
    ProjectMemberUpdate,
    ProjectRead,
    ProjectUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["projects"])


@router.get(
    "/organizations/{org_id}/projects",
    response_model=Page[ProjectRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_projects(
    org_id: OrganizationId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    visibility: Annotated[Visibility | None, Query(description="Only projects with this visibility.")] = None,
    search: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00]*$",
            description="Case-insensitive text in the name or description.",
        ),
    ] = None,
) -> Page[ProjectRead]:
    """Projects of the organization that you can see, newest first."""
    statement = service.visible_projects(session, principal, org_id, visibility=visibility, search=search)
    return paginate(
        session,
        statement,
        params,
        sort_column=Project.created_at,
        id_column=Project.id,
        order="desc",
        to_item=lambda rows: service.project_reads(session, rows),
    )


@router.post(
    "/organizations/{org_id}/projects",
    status_code=201,
    response_model=Envelope[ProjectRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def create_project(
    org_id: OrganizationId, body: ProjectCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ProjectRead]:
    """Create a project in the organization; you become its admin."""
    project = service.create_project(session, principal, org_id, body)
    return Envelope(data=service.project_read(session, project))


@router.get(
    "/projects/{project_id}",
    response_model=Envelope[ProjectRead],
    responses=error_responses(401, 404, 422, 429),
)
def get_project(
    project_id: ProjectId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ProjectRead]:
    """A project's details."""
    project = service.get_visible_project(session, principal, project_id, "read")
    return Envelope(data=service.project_read(session, project))


@router.put(
    "/projects/{project_id}",
    response_model=Envelope[ProjectRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def update_project(
    project_id: ProjectId, body: ProjectUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ProjectRead]:
    """Change a project's name, description or visibility (project admins)."""
    project = service.update_project(session, principal, project_id, body)
    return Envelope(data=service.project_read(session, project))


@router.delete(
    "/projects/{project_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_project(
    project_id: ProjectId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> None:
    """Delete a project and everything in it, files included (project admins)."""
    service.delete_project(session, principal, project_id, store)


@router.get(
    "/projects/{project_id}/members",
    response_model=Page[ProjectMemberRead],
    responses=error_responses(401, 404, 422, 429),
)
def list_project_members(
    project_id: ProjectId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[ProjectMemberRead]:
    """Members of a project with their project roles, in the order they were added."""
    project = service.get_visible_project(session, principal, project_id, "read")
    return paginate(
        session,
        service.members_query(project),
        params,
        sort_column=ProjectMember.added_at,
        id_column=ProjectMember.id,
        order="asc",
        to_item=lambda rows: service.member_reads(session, rows),
    )


@router.post(
    "/projects/{project_id}/members",
    status_code=201,
    response_model=Envelope[ProjectMemberRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def add_project_member(
    project_id: ProjectId, body: ProjectMemberCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ProjectMemberRead]:
    """Add a member of the organization to the project (project admins)."""
    member = service.add_member(session, principal, project_id, body)
    return Envelope(data=service.member_reads(session, [member])[0])


@router.put(
    "/projects/{project_id}/members/{user_id}",
    response_model=Envelope[ProjectMemberRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def update_project_member(
    project_id: ProjectId,
    user_id: UserId,
    body: ProjectMemberUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[ProjectMemberRead]:
    """Change a member's role in the project (project admins)."""
    member = service.update_member(session, principal, project_id, user_id, body)
    return Envelope(data=service.member_reads(session, [member])[0])


@router.delete(
    "/projects/{project_id}/members/{user_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def remove_project_member(
    project_id: ProjectId, user_id: UserId, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Remove a member from the project (project admins)."""
    service.remove_member(session, principal, project_id, user_id)
