"""Projects: creation, visibility-filtered listing, updates and project membership."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maestro.db import flush_unique, new_id
from maestro.errors import Conflict, NotFound
from maestro.identity import audit
from maestro.identity.models import Membership, Organization, ProjectMember, Role, Visibility
from maestro.identity.rbac import Action, Principal, ProjectScope, Target, authorize, organization_role
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.projects import sources
from maestro.projects.models import Project
from maestro.projects.schemas import (
    ProjectCreate,
    ProjectMemberCreate,
    ProjectMemberRead,
    ProjectMemberUpdate,
    ProjectRead,
    ProjectUpdate,
)
from maestro.storage import ArtifactStore, delete_after_commit

SLUG_MAX_LENGTH = 60


def project_slug(name: str) -> str:
    """Lowercase words joined by dashes; a name with no letters or digits gets a
    generated slug so it still has one."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_MAX_LENGTH].strip("-")
    return slug or f"project-{new_id('x')[-8:]}"


# --- loading -----------------------------------------------------------------------------
def get_organization(session: Session, organization_id: str) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("No such organization")
    return organization


def get_project(session: Session, project_id: str) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("No such project")
    return project


def get_visible_project(session: Session, principal: Principal, project_id: str, action: Action) -> Project:
    """The project, once ``principal`` may perform ``action`` on it (404 when invisible)."""
    project = get_project(session, project_id)
    authorize(session, principal, action, Target("projects", project.organization_id, project))
    return project


def authorize_in_project(
    session: Session,
    principal: Principal,
    kind: str,
    action: Action,
    project: ProjectScope,
    *,
    missing: str | None = None,
) -> None:
    """May ``principal`` perform ``action`` on the project's ``kind`` of resources
    (``"models"``, ``"experiments"``, ``"deployments"``…)? Raises, 404 when the project
    is not visible to it, unless ``missing`` names what to call absent."""
    authorize(session, principal, action, Target(kind, project.organization_id, project), missing=missing)


def project_for(
    session: Session, principal: Principal, kind: str, project_id: str, action: Action
) -> Project:
    """The project, once ``principal`` may perform ``action`` on its ``kind`` of resources."""
    project = get_project(session, project_id)
    authorize_in_project(session, principal, kind, action, project)
    return project


# --- reading -----------------------------------------------------------------------------
def _counts(session: Session, project_ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """(models, experiments, deployments) per project, for a whole page at once, from
    the counters those domains register (experiments the MLflow client deleted, kept
    for restoring, are not counted)."""
    if not project_ids:
        return {}
    models, experiments, deployments = (
        sources.counts(session, name, "project", project_ids)
        for name in ("models", "experiments", "deployments")
    )
    return {
        id_: (models.get(id_, 0), experiments.get(id_, 0), deployments.get(id_, 0)) for id_ in project_ids
    }


def project_reads(session: Session, projects: Sequence[Project]) -> list[ProjectRead]:
    """Read models for a page of projects: creators and counts in one query each."""
    creators = users_by_id(session, (p.created_by_id for p in projects))
    counts = _counts(session, [p.id for p in projects])
    reads = []
    for project in projects:
        models, experiments, deployments = counts.get(project.id, (0, 0, 0))
        reads.append(
            ProjectRead(
                id=project.id,
                name=project.name,
                description=project.description,
                slug=project.slug,
                visibility=Visibility(project.visibility),
                model_count=models,
                experiment_count=experiments,
                deployment_count=deployments,
                created_by=user_ref(creators.get(project.created_by_id or "")),
                created_at=project.created_at,
                updated_at=project.updated_at,
            )
        )
    return reads


def project_read(session: Session, project: Project) -> ProjectRead:
    return project_reads(session, [project])[0]


def visible_projects(
    session: Session,
    principal: Principal,
    organization_id: str,
    *,
    visibility: Visibility | None = None,
    search: str | None = None,
) -> Select[Project]:
    """The projects of an organisation that ``principal`` may read, as one query.

    Mirrors ``rbac.project_role``: organisation admins and the organisation's API keys
    (with `projects: read`) see every project; other members see `organization` and
    `public` projects and the private ones they belong to; anyone else signed in
    sees `public` projects and those they are a member of. An API key of another
    organisation sees nothing, so the organisation answers 404 for it."""
    get_organization(session, organization_id)
    statement = select(Project).where(Project.organization_id == organization_id)

    if principal.kind == "api_key":
        authorize(session, principal, "read", Target("projects", organization_id))
    else:
        role = organization_role(session, principal, organization_id)
        if role is not None:
            authorize(session, principal, "read", Target("projects", organization_id))
        if role is not Role.admin:
            is_member = exists().where(
                ProjectMember.project_id == Project.id, ProjectMember.user_id == principal.user_id
            )
            readable = (
                [Visibility.organization, Visibility.public] if role is not None else [Visibility.public]
            )
            statement = statement.where(or_(Project.visibility.in_(readable), is_member))

    if visibility is not None:
        statement = statement.where(Project.visibility == visibility)
    if search:
        statement = statement.where(
            or_(
                Project.name.icontains(search, autoescape=True),
                Project.description.icontains(search, autoescape=True),
            )
        )
    return statement


# --- changing projects -------------------------------------------------------------------
def _ensure_unique(session: Session, organization_id: str, name: str, slug: str, *, but: str | None) -> None:
    clash = select(Project.id).where(
        Project.organization_id == organization_id,
        or_(Project.slug == slug, func.lower(Project.name) == name.lower()),
    )
    if but is not None:
        clash = clash.where(Project.id != but)
    if session.scalar(clash.limit(1)) is not None:
        raise Conflict(
            "A project with this name already exists in the organization",
            details=[("name", "already used in this organization")],
        )


def _flush_unique(session: Session) -> None:
    flush_unique(
        session,
        Conflict(
            "A project with this name already exists in the organization",
            details=[("name", "already used in this organization")],
        ),
    )


def create_project(
    session: Session, principal: Principal, organization_id: str, body: ProjectCreate
) -> Project:
    """A new project; a user who creates one becomes its admin."""
    get_organization(session, organization_id)
    authorize(session, principal, "write", Target("projects", organization_id))
    slug = project_slug(body.name)
    _ensure_unique(session, organization_id, body.name, slug, but=None)
    project = Project(
        organization_id=organization_id,
        name=body.name,
        slug=slug,
        description=body.description or None,
        visibility=body.visibility,
        created_by_id=principal.user_id,
    )
    session.add(project)
    _flush_unique(session)
    if principal.user_id is not None:
        session.add(ProjectMember(project_id=project.id, user_id=principal.user_id, role=Role.admin))
        session.flush()
    audit.describe(
        session,
        resource_type="projects",
        resource_id=project.id,
        organization_id=organization_id,
        name=project.name,
        visibility=project.visibility,
    )
    return project


def update_project(session: Session, principal: Principal, project_id: str, body: ProjectUpdate) -> Project:
    project = get_visible_project(session, principal, project_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != project.name:
        slug = project_slug(changes["name"])
        _ensure_unique(session, project.organization_id, changes["name"], slug, but=project.id)
        project.name = changes["name"]
        project.slug = slug
    if "description" in changes:
        project.description = changes["description"] or None
    if "visibility" in changes:
        project.visibility = changes["visibility"]
    _flush_unique(session)
    audit.describe(
        session,
        resource_type="projects",
        resource_id=project.id,
        organization_id=project.organization_id,
        changed=sorted(changes),
    )
    return project


def delete_project(session: Session, principal: Principal, project_id: str, store: ArtifactStore) -> None:
    """Delete a project with everything in it (its rows cascade); its files are removed
    from the store once the deletion has committed."""
    project = get_visible_project(session, principal, project_id, "delete")
    keys = sources.stored_keys(session, project_id=project.id)
    audit.describe(
        session,
        resource_type="projects",
        resource_id=project.id,
        organization_id=project.organization_id,
        name=project.name,
    )
    session.delete(project)  # members and the project's contents go with it (ON DELETE CASCADE)
    session.flush()
    delete_after_commit(session, store, keys)


# --- members -----------------------------------------------------------------------------
def members_query(project: Project) -> Select[ProjectMember]:
    return select(ProjectMember).where(ProjectMember.project_id == project.id)


def member_reads(session: Session, members: Sequence[ProjectMember]) -> list[ProjectMemberRead]:
    users = users_by_id(session, (m.user_id for m in members))
    return [
        ProjectMemberRead(
            user_id=member.user_id,
            email=users[member.user_id].email,
            first_name=users[member.user_id].first_name,
            last_name=users[member.user_id].last_name,
            role=Role(member.role),
            added_at=member.added_at,
        )
        for member in members
        if member.user_id in users
    ]


def _get_member(session: Session, project: Project, user_id: str) -> ProjectMember:
    member = session.scalar(
        select(ProjectMember).where(ProjectMember.project_id == project.id, ProjectMember.user_id == user_id)
    )
    if member is None:
        raise NotFound("This user is not a member of the project")
    return member


def _authorize_membership_change(session: Session, principal: Principal, project_id: str) -> Project:
    project = get_project(session, project_id)
    authorize(session, principal, "write", Target("members", project.organization_id, project))
    return project


def add_member(
    session: Session, principal: Principal, project_id: str, body: ProjectMemberCreate
) -> ProjectMember:
    """Add a member of the project's organisation to the project. Users of other
    organisations answer 404, as if they did not exist."""
    project = _authorize_membership_change(session, principal, project_id)
    in_organization = session.scalar(
        select(Membership.id).where(
            Membership.organization_id == project.organization_id, Membership.user_id == body.user_id
        )
    )
    if in_organization is None:
        raise NotFound("No such user in this organization", details=[("user_id", "not found")])
    already = session.scalar(
        select(ProjectMember.id).where(
            ProjectMember.project_id == project.id, ProjectMember.user_id == body.user_id
        )
    )
    if already is not None:
        raise Conflict(
            "This user is already a member of the project", details=[("user_id", "already a member")]
        )
    member = ProjectMember(project_id=project.id, user_id=body.user_id, role=body.role)
    session.add(member)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict("This user is already a member of the project") from exc
    audit.describe(
        session,
        resource_type="project_members",
        resource_id=project.id,
        organization_id=project.organization_id,
        user_id=body.user_id,
        role=body.role,
    )
    return member


def update_member(
    session: Session, principal: Principal, project_id: str, user_id: str, body: ProjectMemberUpdate
) -> ProjectMember:
    project = _authorize_membership_change(session, principal, project_id)
    member = _get_member(session, project, user_id)
    previous = member.role
    member.role = body.role
    session.flush()
    audit.describe(
        session,
        resource_type="project_members",
        resource_id=project.id,
        organization_id=project.organization_id,
        user_id=user_id,
        role=body.role,
        previous_role=previous,
    )
    return member


def remove_member(session: Session, principal: Principal, project_id: str, user_id: str) -> None:
    project = get_project(session, project_id)
    authorize(session, principal, "delete", Target("members", project.organization_id, project))
    member = _get_member(session, project, user_id)
    session.delete(member)
    session.flush()
    audit.describe(
        session,
        resource_type="project_members",
        resource_id=project.id,
        organization_id=project.organization_id,
        user_id=user_id,
    )
