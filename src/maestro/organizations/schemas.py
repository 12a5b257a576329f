"""Request and response shapes of organisations, their members and invitations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, field_validator

from maestro.identity.models import Plan, Role
from maestro.identity.schemas import Email, UserRef
from maestro.schemas import StrictModel, Visible

# Names are one line of visible text; descriptions may span lines. Neither may hold
# control characters, nor invisible or direction-changing ones (`Visible`).
OrganizationName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
    Visible,
]


class OrganizationCreate(StrictModel):
    name: OrganizationName
    description: Description | None = None


class OrganizationUpdate(StrictModel):
    """Only what an admin may change; the slug and the plan are not client-settable."""

    name: OrganizationName | None = Field(None, description="New name; cannot be null.")
    description: Description | None = Field(None, description="New description; null clears it.")

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("name cannot be null")
        return value


class OrganizationRead(BaseModel):
    id: str
    name: str
    slug: str
    description: str | None = None
    role: Role | None = Field(
        description="Your role in the organisation; null when the caller is an API key."
    )
    subscription_plan: Plan
    member_count: int
    model_count: int
    created_at: datetime
    updated_at: datetime


class MemberRead(BaseModel):
    id: str = Field(description="The user's id.")
    email: str
    first_name: str
    last_name: str
    role: Role
    avatar_url: str | None = None
    last_login_at: datetime | None = None
    joined_at: datetime


class MemberRoleUpdate(StrictModel):
    role: Role


class InvitationCreate(StrictModel):
    email: Email
    role: Role = Role.viewer


class InvitationCreated(BaseModel):
    id: str
    email: str
    role: Role
    expires_at: datetime
    created_at: datetime
    invite_token: str = Field(
        description="Give this to the invitee to accept with POST /api/v1/invitations/accept. "
        "Shown only once."
    )


class InvitationAccept(StrictModel):
    token: Annotated[str, Field(min_length=1, max_length=200)]


class InvitationRead(BaseModel):
    """A pending invitation (never its token, which is shown only when it is made)."""

    id: str
    email: str
    role: Role
    invited_by: UserRef | None = None
    created_at: datetime
    expires_at: datetime


class PlanUpdate(StrictModel):
    plan: Plan


class OrganizationAdminRead(BaseModel):
    """An organisation as an instance administrator sees it."""

    id: str
    name: str
    slug: str
    subscription_plan: Plan
    member_count: int
    created_at: datetime
