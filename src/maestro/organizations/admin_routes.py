"""Instance administration, under /api/v1/admin: organisations and their plans,
accounts, failed sign-ins. Only an instance administrator may call these routes;
anyone else signed in gets 403 (there is nothing here to hide with a 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import OrganizationId, UserId
from maestro.identity import administration
from maestro.identity.models import FailedSignIn, Organization, Plan, User
from maestro.identity.rbac import required_instance_admin
from maestro.identity.schemas import AccountRead, FailedSignInRead
from maestro.organizations import instance_admin
from maestro.organizations.schemas import OrganizationAdminRead, PlanUpdate

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get(
    "/organizations",
    response_model=Page[OrganizationAdminRead],
    responses=error_responses(401, 403, 422, 429),
)
def list_organizations(
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    plan: Annotated[Plan | None, Query(description="Only organisations on this plan.")] = None,
) -> Page[OrganizationAdminRead]:
    """Every organisation of the installation, oldest first, with its plan and member count."""
    required_instance_admin(principal)
    return paginate(
        session,
        instance_admin.organizations_query(plan),
        params,
        sort_column=Organization.created_at,
        id_column=Organization.id,
        order="asc",
        to_item=lambda rows: instance_admin.organization_admin_reads(session, rows),
    )


@router.put(
    "/organizations/{org_id}/plan",
    response_model=Envelope[OrganizationAdminRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def change_plan(
    org_id: OrganizationId, body: PlanUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[OrganizationAdminRead]:
    """Put an organisation on another plan; its new limit applies to its next request."""
    required_instance_admin(principal)
    organization = instance_admin.change_plan(session, org_id, body.plan)
    return Envelope(data=instance_admin.organization_admin_reads(session, [organization])[0])


@router.get("/users", response_model=Page[AccountRead], responses=error_responses(401, 403, 422, 429))
def list_users(
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    active: Annotated[bool | None, Query(description="Only active (true) or deactivated (false).")] = None,
) -> Page[AccountRead]:
    """Every account of the installation, oldest first."""
    required_instance_admin(principal)
    return paginate(
        session,
        administration.accounts_query(active),
        params,
        sort_column=User.created_at,
        id_column=User.id,
        order="asc",
        to_item=lambda rows: [administration.account_read(user) for user in rows],
    )


@router.post(
    "/users/{user_id}/deactivate",
    response_model=Envelope[AccountRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def deactivate_user(
    user_id: UserId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AccountRead]:
    """Deactivate an account: its sessions end and the API keys it created stop
    working at once; it cannot sign in until reactivated."""
    required_instance_admin(principal)
    user = administration.set_active(session, principal, user_id, active=False)
    return Envelope(data=administration.account_read(user))


@router.post(
    "/users/{user_id}/reactivate",
    response_model=Envelope[AccountRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def reactivate_user(
    user_id: UserId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AccountRead]:
    """Reactivate an account: it may sign in again, and its API keys work again."""
    required_instance_admin(principal)
    user = administration.set_active(session, principal, user_id, active=True)
    return Envelope(data=administration.account_read(user))


@router.get(
    "/failed-sign-ins",
    response_model=Page[FailedSignInRead],
    responses=error_responses(401, 403, 422, 429),
)
def list_failed_sign_ins(
    principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[FailedSignInRead]:
    """Refused sign-ins (POST /api/v1/auth/login), newest first."""
    required_instance_admin(principal)
    return paginate(
        session,
        administration.failed_sign_ins_query(),
        params,
        sort_column=FailedSignIn.created_at,
        id_column=FailedSignIn.id,
        to_item=lambda rows: [FailedSignInRead.model_validate(row, from_attributes=True) for row in rows],
    )
