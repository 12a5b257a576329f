"""What an instance administrator does to organisations: list them with their plan
and size, and change a plan. A plan is read with the principal on every credential
check, and a change empties the credential cache of this process at once (other
processes follow within MAESTRO_AUTH_CACHE_SECONDS); the organisation's request count
is kept across plans, so the new limit applies to the next request."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from maestro.identity import audit
from maestro.identity.models import Membership, Organization, Plan
from maestro.organizations.schemas import OrganizationAdminRead
from maestro.organizations.service import get_organization


def organizations_query(plan: Plan | None) -> Select[Organization]:
    statement = select(Organization)
    if plan is not None:
        statement = statement.where(Organization.subscription_plan == plan.value)
    return statement


def organization_admin_reads(
    session: Session, organizations: Sequence[Organization]
) -> list[OrganizationAdminRead]:
    ids = [organization.id for organization in organizations]
    counts: dict[str, int] = {}
    if ids:
        rows = session.execute(
            select(Membership.organization_id, func.count())
            .where(Membership.organization_id.in_(ids))
            .group_by(Membership.organization_id)
        ).all()
        counts = {organization_id: count for organization_id, count in rows}
    return [
        OrganizationAdminRead(
            id=organization.id,
            name=organization.name,
            slug=organization.slug,
            subscription_plan=Plan(organization.subscription_plan),
            member_count=counts.get(organization.id, 0),
            created_at=organization.created_at,
        )
        for organization in organizations
    ]


def change_plan(session: Session, organization_id: str, plan: Plan) -> Organization:
    organization = get_organization(session, organization_id)
    previous = organization.subscription_plan
    organization.subscription_plan = plan.value
    session.flush()
    audit.describe(
        session,
        resource_type="organizations",
        resource_id=organization.id,
        organization_id=organization.id,
        previous_plan=previous,
        plan=plan.value,
    )
    return organization
