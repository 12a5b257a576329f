from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)

from maestro.identity.models import Role
from maestro.schemas import StrictModel, Visible

Name = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100), Visible]


def _normalise_email(value: str) -> str:
    return value.strip().lower()


Email = Annotated[EmailStr, Field(max_length=320), AfterValidator(_normalise_email)]
Password = Annotated[str, Field(min_length=8, max_length=256, description="At least 8 characters.")]


class UserRef(BaseModel):
    """Who created or changed something, as list responses show it."""

    id: str
    name: str


class ActorRef(UserRef):
    """Who created or changed something: a person, or an API key named by its name and
    the first characters of the key (``prefix``)."""

    kind: Literal["user", "api_key"] = "user"
    prefix: str | None = Field(None, description="An API key's visible prefix; null for a person.")


class RegisterRequest(StrictModel):
    email: Email
    password: Password
    first_name: Name = ""
    last_name: Name = ""
    organization_name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Visible] | None
    ) = Field(None, description="Name of the organisation created for you; defaults to your name.")


class LoginRequest(StrictModel):
    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=256)]


class RefreshRequest(StrictModel):
    refresh_token: Annotated[str, Field(max_length=200)]


class CurrentOrganization(BaseModel):
    id: str
    name: str
    role: Role


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    first_name: str
    last_name: str
    avatar_url: str | None = None
    current_organization: CurrentOrganization | None = None
    last_login_at: datetime | None = None
    created_at: datetime


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    user: UserRead


class MeUpdate(StrictModel):
    first_name: Name | None = None
    last_name: Name | None = None
    avatar_url: Annotated[str, Field(max_length=500, pattern=r"^https://")] | None = None
    current_organization: Annotated[str, Field(max_length=40)] | None = Field(
        None, description="Organisation to act in by default (you must be a member)."
    )


def user_ref(user: Any) -> UserRef | None:
    return UserRef(id=user.id, name=user.full_name) if user is not None else None


class PasswordChange(StrictModel):
    current_password: Annotated[str, Field(max_length=256)]
    new_password: Password


class AccountRead(BaseModel):
    """An account as an instance administrator sees it."""

    id: str
    email: str
    first_name: str
    last_name: str
    is_active: bool
    is_instance_admin: bool
    last_login_at: datetime | None = None
    created_at: datetime


class FailedSignInRead(BaseModel):
    id: str
    created_at: datetime
    email: str = Field(description="The email as it was typed (at most 320 characters).")
    ip: str | None = Field(description="The client address the server saw.")
    reason: str = Field(description="unknown_email, wrong_password or account_disabled.")
