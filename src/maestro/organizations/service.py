"""Organisations, their members and invitations.

Routes authorise before calling in here, except where the rule depends on the data
(a member removing themselves); these functions enforce the invariants that hold
whoever asks: an organisation always keeps at least one admin, an invitation is
used once, by the person it was sent to, before it expires.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maestro.config import Settings
from maestro.db import matched_rows, utcnow
from maestro.errors import Conflict, NotFound, PermissionDenied
from maestro.identity import audit, security
from maestro.identity import service as identity_service
from maestro.identity.models import Membership, Organization, Plan, ProjectMember, Role, User
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.organizations.models import Invitation
from maestro.organizations.schemas import (
    InvitationCreate,
    InvitationCreated,
    InvitationRead,
    MemberRead,
    OrganizationCreate,
    OrganizationRead,
    OrganizationUpdate,
)
from maestro.projects import sources
from maestro.projects.models import Project
from maestro.storage import ArtifactStore, delete_after_commit

LAST_ADMIN_MESSAGE = "An organization must keep at least one admin; make another member admin first"


# --- reading -------------------------------------------------------------------------------
def get_organization(session: Session, organization_id: str) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("No such organization")
    return organization


def organization_for(
    session: Session, principal: Principal, organization_id: str, kind: str, action: Action
) -> Organization:
    """The organisation, once ``principal`` may perform ``action`` on its ``kind`` of
    resources (``"organizations"``, ``"members"``, ``"invitations"``); 404 when invisible."""
    organization = get_organization(session, organization_id)
    authorize(session, principal, action, Target(kind, organization.id))
    return organization


def organizations_query_for(session: Session, principal: Principal) -> Select[Organization]:
    """The organisations ``principal`` may list: a member's own, or an API key's one
    organisation once the key may read it."""
    if principal.user_id is None and principal.organization_id is not None:
        authorize(session, principal, "read", Target("organizations", principal.organization_id))
    return organizations_query(principal)


def _member_counts(session: Session, organization_ids: Sequence[str]) -> dict[str, int]:
    if not organization_ids:
        return {}
    rows = session.execute(
        select(Membership.organization_id, func.count())
        .where(Membership.organization_id.in_(organization_ids))
        .group_by(Membership.organization_id)
    ).all()
    return {organization_id: count for organization_id, count in rows}


def _model_counts(session: Session, organization_ids: Sequence[str]) -> dict[str, int]:
    """Registered models per organisation, in one grouped query."""
    counts = dict.fromkeys(organization_ids, 0)
    counts.update(sources.counts(session, "models", "organization", organization_ids))
    return counts


def _roles(session: Session, principal: Principal, organization_ids: Sequence[str]) -> dict[str, Role]:
    if principal.user_id is None or not organization_ids:
        return {}
    rows = session.execute(
        select(Membership.organization_id, Membership.role).where(
            Membership.organization_id.in_(organization_ids), Membership.user_id == principal.user_id
        )
    ).all()
    return {organization_id: Role(role) for organization_id, role in rows}


def organization_reads(
    session: Session, principal: Principal, organizations: Sequence[Organization]
) -> list[OrganizationRead]:
    """Read models for a page of organisations, with counts and the caller's role
    loaded for the whole page at once."""
    ids = [organization.id for organization in organizations]
    members = _member_counts(session, ids)
    models = _model_counts(session, ids)
    roles = _roles(session, principal, ids)
    return [
        OrganizationRead(
            id=organization.id,
            name=organization.name,
            slug=organization.slug,
            description=organization.description,
            role=roles.get(organization.id),
            subscription_plan=Plan(organization.subscription_plan),
            member_count=members.get(organization.id, 0),
            model_count=models.get(organization.id, 0),
            created_at=organization.created_at,
            updated_at=organization.updated_at,
        )
        for organization in organizations
    ]


def organization_read(session: Session, principal: Principal, organization: Organization) -> OrganizationRead:
    return organization_reads(session, principal, [organization])[0]


def organizations_query(principal: Principal) -> Select[Organization]:
    """The organisations a caller may list: a user's memberships, an API key's own."""
    if principal.user_id is not None:
        return (
            select(Organization)
            .join(Membership, Membership.organization_id == Organization.id)
            .where(Membership.user_id == principal.user_id)
        )
    return select(Organization).where(Organization.id == principal.organization_id)


# --- organisations -------------------------------------------------------------------------
def _require_user(session: Session, principal: Principal, kind: str, doing: str) -> User:
    """The calling user; an API key is refused, and the refusal goes on record."""
    if principal.user_id is None:
        if principal.organization_id is not None:
            audit.note_denied(session, principal, "write", Target(kind, principal.organization_id))
        raise PermissionDenied(f"Only users can {doing}; API keys cannot")
    return identity_service.get_user(session, principal.user_id)


def create_organization(
    session: Session, settings: Settings, principal: Principal, body: OrganizationCreate
) -> Organization:
    owner = _require_user(session, principal, "organizations", "create organizations")
    organization = identity_service.create_organization(session, settings, name=body.name, owner=owner)
    organization.description = body.description
    session.flush()
    audit.describe(
        session,
        resource_type="organizations",
        resource_id=organization.id,
        organization_id=organization.id,
        name=organization.name,
    )
    return organization


def update_organization(
    session: Session, organization: Organization, body: OrganizationUpdate
) -> Organization:
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        setattr(organization, field, value)
    session.flush()
    audit.describe(
        session,
        resource_type="organizations",
        resource_id=organization.id,
        organization_id=organization.id,
        changed=sorted(changes),
    )
    return organization


def delete_organization(
    session: Session, principal: Principal, organization: Organization, store: ArtifactStore
) -> None:
    """Everything the organisation owns goes with it (the database cascades, files are
    removed from the store after the commit), including its audit history; the row
    recording the deletion itself is kept outside the organisation so it survives."""
    organization_id, name = organization.id, organization.name
    delete_after_commit(session, store, sources.stored_keys(session, organization_id=organization_id))
    session.execute(delete(Organization).where(Organization.id == organization_id))
    if principal.organization_id == organization_id:
        # The caller no longer acts in an organisation that does not exist.
        principal.organization_id = None
        principal.org_role = None
    audit.describe(
        session,
        resource_type="organizations",
        resource_id=organization_id,
        deleted_organization_id=organization_id,
        name=name,
    )


# --- members -------------------------------------------------------------------------------
def members_query(organization_id: str, role: Role | None) -> Select[Membership]:
    statement = select(Membership).where(Membership.organization_id == organization_id)
    if role is not None:
        statement = statement.where(Membership.role == role)
    return statement


def member_reads(session: Session, memberships: Sequence[Membership]) -> list[MemberRead]:
    users = users_by_id(session, (membership.user_id for membership in memberships))
    return [_member_read(users[membership.user_id], membership) for membership in memberships]


def _member_read(user: User, membership: Membership) -> MemberRead:
    return MemberRead(
        id=user.id,
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        role=Role(membership.role),
        avatar_url=user.avatar_url,
        last_login_at=user.last_login_at,
        joined_at=membership.joined_at,
    )


def _membership(session: Session, organization_id: str, user_id: str) -> Membership:
    membership = session.scalar(
        select(Membership).where(Membership.organization_id == organization_id, Membership.user_id == user_id)
    )
    if membership is None:
        raise NotFound("No such member in this organization")
    return membership


def _admin_count(session: Session, organization_id: str) -> int:
    """Admins of the organisation, with their rows locked on PostgreSQL so two admins
    demoting or removing each other at once cannot leave none (SQLite serialises
    writers already)."""
    admins = session.scalars(
        select(Membership.id)
        .where(Membership.organization_id == organization_id, Membership.role == Role.admin)
        .with_for_update()
    ).all()
    return len(admins)


def update_member_role(session: Session, organization_id: str, user_id: str, role: Role) -> MemberRead:
    membership = _membership(session, organization_id, user_id)
    previous = Role(membership.role)
    if previous is Role.admin and role is not Role.admin and _admin_count(session, organization_id) <= 1:
        raise Conflict(LAST_ADMIN_MESSAGE, details=[("role", "the last admin cannot be demoted")])
    membership.role = role
    session.flush()
    audit.describe(
        session,
        resource_type="members",
        resource_id=user_id,
        organization_id=organization_id,
        previous_role=previous.value,
        role=role.value,
    )
    return _member_read(identity_service.get_user(session, user_id), membership)


def remove_member(session: Session, organization_id: str, user_id: str) -> None:
    """Remove a member, their project memberships in the organisation's projects, and
    the organisation as their default if it was."""
    membership = _membership(session, organization_id, user_id)
    role = membership.role
    if role == Role.admin and _admin_count(session, organization_id) <= 1:
        raise Conflict(LAST_ADMIN_MESSAGE, details=[("user_id", "the last admin cannot be removed")])
    session.delete(membership)
    session.execute(
        delete(ProjectMember).where(
            ProjectMember.user_id == user_id,
            ProjectMember.project_id.in_(
                select(Project.id).where(Project.organization_id == organization_id)
            ),
        )
    )
    session.execute(
        update(User)
        .where(User.id == user_id, User.current_organization_id == organization_id)
        .values(current_organization_id=None)
    )
    session.flush()
    audit.describe(
        session,
        resource_type="members",
        resource_id=user_id,
        organization_id=organization_id,
        role=role,
    )


# --- invitations ---------------------------------------------------------------------------
def invite(
    session: Session, settings: Settings, principal: Principal, organization_id: str, body: InvitationCreate
) -> InvitationCreated:
    """A new invitation whose token is returned once and stored only as a hash. A
    second invitation to the same address replaces a pending one."""
    already_member = session.scalar(
        select(Membership.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == organization_id, User.email == body.email)
    )
    if already_member is not None:
        raise Conflict(
            "This person is already a member of the organization", details=[("email", "already a member")]
        )
    session.execute(
        delete(Invitation).where(
            Invitation.organization_id == organization_id,
            Invitation.email == body.email,
            Invitation.accepted_at.is_(None),
        )
    )
    token = security.new_invitation_token()
    now = utcnow()
    invitation = Invitation(
        organization_id=organization_id,
        email=body.email,
        role=body.role,
        token_hash=security.sha256_hex(token),
        invited_by_id=principal.user_id,
        created_at=now,
        expires_at=now + timedelta(hours=settings.invitation_ttl_hours),
    )
    session.add(invitation)
    session.flush()
    audit.describe(
        session,
        resource_type="invitations",
        resource_id=invitation.id,
        organization_id=organization_id,
        email=body.email,
        role=body.role.value,
    )
    return InvitationCreated(
        id=invitation.id,
        email=invitation.email,
        role=body.role,
        expires_at=invitation.expires_at,
        created_at=invitation.created_at,
        invite_token=token,
    )


def pending_invitations_query(organization_id: str) -> Select[Invitation]:
    """Invitations of the organisation not yet accepted and not yet expired."""
    return select(Invitation).where(
        Invitation.organization_id == organization_id,
        Invitation.accepted_at.is_(None),
        Invitation.expires_at > utcnow(),
    )


def invitation_reads(session: Session, invitations: Sequence[Invitation]) -> list[InvitationRead]:
    inviters = users_by_id(session, (invitation.invited_by_id for invitation in invitations))
    return [
        InvitationRead(
            id=invitation.id,
            email=invitation.email,
            role=Role(invitation.role),
            invited_by=user_ref(inviters.get(invitation.invited_by_id or "")),
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
        )
        for invitation in invitations
    ]


def cancel_invitation(session: Session, organization_id: str, invitation_id: str) -> None:
    """Cancel a pending invitation: its token stops working. An accepted one, or one
    of another organisation, answers like an unknown one."""
    cancelled = session.execute(
        delete(Invitation)
        .where(
            Invitation.id == invitation_id,
            Invitation.organization_id == organization_id,
            Invitation.accepted_at.is_(None),
        )
        .execution_options(synchronize_session=False)
    )
    if matched_rows(cancelled) != 1:
        raise NotFound("No such pending invitation")
    audit.describe(
        session, resource_type="invitations", resource_id=invitation_id, organization_id=organization_id
    )


def accept_invitation(session: Session, principal: Principal, token: str) -> Organization:
    """Join the organisation an invitation is for, with the invited role."""
    user = _require_user(session, principal, "invitations", "accept invitations")
    invitation = session.scalar(select(Invitation).where(Invitation.token_hash == security.sha256_hex(token)))
    if invitation is None:
        raise NotFound("No invitation matches this token")
    if invitation.accepted_at is not None:
        raise NotFound("This invitation has already been used")
    if invitation.expires_at <= utcnow():
        raise NotFound("This invitation has expired; ask an admin of the organization for a new one")
    if invitation.email.lower() != user.email.lower():
        audit.note_denied(session, principal, "write", Target("invitations", invitation.organization_id))
        raise PermissionDenied("This invitation was sent to another email address")
    is_member = session.scalar(
        select(Membership.id).where(
            Membership.organization_id == invitation.organization_id, Membership.user_id == user.id
        )
    )
    if is_member is not None:
        raise Conflict("You are already a member of this organization")
    spent = session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id, Invitation.accepted_at.is_(None))
        .values(accepted_at=utcnow(), accepted_by_id=user.id)
        .execution_options(synchronize_session=False)
    )
    if matched_rows(spent) != 1:  # accepted concurrently
        raise NotFound("This invitation has already been used")
    session.add(Membership(organization_id=invitation.organization_id, user_id=user.id, role=invitation.role))
    if user.current_organization_id is None:
        user.current_organization_id = invitation.organization_id
    try:
        session.flush()
    except IntegrityError as exc:  # joined concurrently through another invitation
        raise Conflict("You are already a member of this organization") from exc
    audit.describe(
        session,
        resource_type="invitations",
        resource_id=invitation.id,
        organization_id=invitation.organization_id,
        role=invitation.role,
    )
    return get_organization(session, invitation.organization_id)
