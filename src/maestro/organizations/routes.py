from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep, SettingsDep, StoreDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import InvitationId, OrganizationId, UserId
from maestro.identity.models import Membership, Organization, Role
from maestro.organizations import service
from maestro.organizations.models import Invitation
from maestro.organizations.schemas import (
    InvitationAccept,
    InvitationCreate,
    InvitationCreated,
    InvitationRead,
    MemberRead,
    MemberRoleUpdate,
    OrganizationCreate,
    OrganizationRead,
    OrganizationUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["organizations"])


@router.get(
    "/organizations", response_model=Page[OrganizationRead], responses=error_responses(401, 403, 422, 429)
)
def list_organizations(
    principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[OrganizationRead]:
    """Organizations you are a member of, with your role in each (an API key sees its own)."""
    return paginate(
        session,
        service.organizations_query_for(session, principal),
        params,
        sort_column=Organization.created_at,
        id_column=Organization.id,
        order="asc",
        to_item=lambda rows: service.organization_reads(session, principal, rows),
    )


@router.post(
    "/organizations",
    status_code=201,
    response_model=Envelope[OrganizationRead],
    responses=error_responses(401, 403, 422, 429),
)
def create_organization(
    body: OrganizationCreate, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> Envelope[OrganizationRead]:
    """Create an organization with you as its first admin (users only, not API keys)."""
    organization = service.create_organization(session, settings, principal, body)
    return Envelope(data=service.organization_read(session, principal, organization))


@router.get(
    "/organizations/{org_id}",
    response_model=Envelope[OrganizationRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_organization(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[OrganizationRead]:
    """An organization you belong to, with member and model counts and your role."""
    organization = service.organization_for(session, principal, org_id, "organizations", "read")
    return Envelope(data=service.organization_read(session, principal, organization))


@router.put(
    "/organizations/{org_id}",
    response_model=Envelope[OrganizationRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def update_organization(
    org_id: OrganizationId, body: OrganizationUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[OrganizationRead]:
    """Rename an organization or change its description (admins only)."""
    organization = service.organization_for(session, principal, org_id, "organizations", "write")
    organization = service.update_organization(session, organization, body)
    return Envelope(data=service.organization_read(session, principal, organization))


@router.delete("/organizations/{org_id}", status_code=204, responses=error_responses(401, 403, 404, 422, 429))
def delete_organization(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> None:
    """Delete an organization and everything in it, files included (admins only)."""
    organization = service.organization_for(session, principal, org_id, "organizations", "delete")
    service.delete_organization(session, principal, organization, store)


@router.get(
    "/organizations/{org_id}/users",
    response_model=Page[MemberRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_members(
    org_id: OrganizationId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    role: Annotated[Role | None, Query(description="Only members with this role.")] = None,
) -> Page[MemberRead]:
    """Members of an organization with their roles, oldest member first."""
    organization = service.organization_for(session, principal, org_id, "members", "read")
    return paginate(
        session,
        service.members_query(organization.id, role),
        params,
        sort_column=Membership.joined_at,
        id_column=Membership.id,
        order="asc",
        to_item=lambda rows: service.member_reads(session, rows),
    )


@router.post(
    "/organizations/{org_id}/users/invite",
    status_code=201,
    response_model=Envelope[InvitationCreated],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def invite_member(
    org_id: OrganizationId,
    body: InvitationCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[InvitationCreated]:
    """Invite someone by email (admins only); the invitation token is returned once."""
    organization = service.organization_for(session, principal, org_id, "invitations", "write")
    return Envelope(data=service.invite(session, settings, principal, organization.id, body))


@router.get(
    "/organizations/{org_id}/invitations",
    response_model=Page[InvitationRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_invitations(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[InvitationRead]:
    """Pending invitations of an organization, newest first (admins only)."""
    organization = service.organization_for(session, principal, org_id, "invitations", "read")
    return paginate(
        session,
        service.pending_invitations_query(organization.id),
        params,
        sort_column=Invitation.created_at,
        id_column=Invitation.id,
        to_item=lambda rows: service.invitation_reads(session, rows),
    )


@router.delete(
    "/organizations/{org_id}/invitations/{invitation_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def cancel_invitation(
    org_id: OrganizationId, invitation_id: InvitationId, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Cancel a pending invitation (admins only): its token stops working at once."""
    organization = service.organization_for(session, principal, org_id, "invitations", "delete")
    service.cancel_invitation(session, organization.id, invitation_id)


@router.post(
    "/invitations/accept",
    response_model=Envelope[OrganizationRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def accept_invitation(
    body: InvitationAccept, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[OrganizationRead]:
    """Join an organization with an invitation token sent to your email address."""
    organization = service.accept_invitation(session, principal, body.token)
    return Envelope(data=service.organization_read(session, principal, organization))


@router.put(
    "/organizations/{org_id}/users/{user_id}/role",
    response_model=Envelope[MemberRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def update_member_role(
    org_id: OrganizationId,
    user_id: UserId,
    body: MemberRoleUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[MemberRead]:
    """Change a member's role (admins only); the last admin cannot be demoted."""
    organization = service.organization_for(session, principal, org_id, "members", "write")
    return Envelope(data=service.update_member_role(session, organization.id, user_id, body.role))


@router.delete(
    "/organizations/{org_id}/users/{user_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def remove_member(
    org_id: OrganizationId, user_id: UserId, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Remove a member (admins), or leave an organization yourself; the last admin stays."""
    leaving = principal.user_id is not None and principal.user_id == user_id
    organization = service.organization_for(
        session, principal, org_id, "members", "read" if leaving else "delete"
    )
    service.remove_member(session, organization.id, user_id)
