from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from maestro.api.params import ID_PATTERN
from maestro.identity.models import Role, Visibility
from maestro.identity.schemas import UserRef
from maestro.schemas import StrictModel, Visible

# Control characters (NUL above all, which PostgreSQL cannot store) have no place in
# names; descriptions may span lines. Neither may hold invisible or direction-changing
# characters (`Visible`).
ProjectName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
    Visible,
]


class ProjectCreate(StrictModel):
    name: ProjectName = Field(examples=["Recommendation Engine"])
    description: Description | None = Field(None, examples=["Product recommendation models"])
    visibility: Visibility = Field(
        Visibility.private,
        description="`private`: project members and organisation admins; `organization`: every member "
        "of the organisation; `public`: every signed-in user.",
    )


class ProjectUpdate(StrictModel):
    """Only the fields sent are changed; `description: null` clears the description."""

    name: ProjectName = Field(None, examples=["Recommendation Engine"])  # type: ignore[assignment]  # None: left out; null is refused
    description: Description | None = None
    visibility: Visibility = Field(None)  # type: ignore[assignment]  # None: left out; null is refused


class ProjectRead(BaseModel):
    id: str = Field(examples=["proj_01jd8x6q2v0000000000000000"])
    name: str
    description: str | None = None
    slug: str = Field(description="Derived from the name; unique within the organisation.")
    visibility: Visibility
    model_count: int = 0
    experiment_count: int = 0
    deployment_count: int = 0
    created_by: UserRef | None = Field(None, description="Null when created with an API key.")
    created_at: datetime
    updated_at: datetime


class ProjectMemberCreate(StrictModel):
    user_id: Annotated[
        str,
        Field(min_length=1, max_length=40, pattern=ID_PATTERN, description="A member of the organisation."),
    ]
    role: Role = Field(description="Role in this project; it may narrow or widen the organisation role.")


class ProjectMemberUpdate(StrictModel):
    role: Role


class ProjectMemberRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: str
    email: str
    first_name: str
    last_name: str
    role: Role
    added_at: datetime
