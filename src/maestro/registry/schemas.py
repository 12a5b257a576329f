"""Request and response shapes of the model registry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from maestro.identity.schemas import StrictModel, UserRef
from maestro.registry.models import ModelType, Stage

TAG_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
MAX_TAGS = 100  # per model


def _usable_name(value: str) -> str:
    """Names are used in paths (`…/models/by-name/{name}`), so no slashes, and never
    only dots, which a URL would resolve away."""
    if "/" in value or "\\" in value:
        raise ValueError("must not contain / or \\")
    if set(value) == {"."}:
        raise ValueError("must not consist of dots only")
    return value


# Control characters (NUL above all, which PostgreSQL cannot store) have no place in
# names or labels; descriptions may span lines.
ModelName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(_usable_name),
]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
]
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
TagKeys = Annotated[
    list[TagKey],
    Field(max_length=MAX_TAGS, description="Tag keys (labels without a value)."),
]


class ModelCreate(StrictModel):
    name: ModelName = Field(
        examples=["Churn Prediction Model"], description="Unique within the project; no slashes."
    )
    description: Description | None = Field(None, examples=["Predicts customer churn probability"])
    model_type: ModelType
    framework: Label | None = Field(None, examples=["scikit-learn"])
    task_type: Label | None = Field(None, examples=["binary_classification"])
    tags: TagKeys = Field(default_factory=list, examples=[["churn", "customer", "retention"]])

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ModelUpdate(StrictModel):
    """Only the fields sent are changed; `description`, `framework` and `task_type` may be
    null to clear them. `tags` replaces the set of tag keys: keys not listed are removed,
    new ones are added without a value, and listed keys keep their values."""

    name: ModelName | None = Field(None, description="New name, unique within the project; not null.")
    description: Description | None = None
    model_type: ModelType | None = Field(None, description="Not null.")
    framework: Label | None = None
    task_type: Label | None = None
    tags: TagKeys | None = Field(None, description="Not null.")

    @field_validator("name", "model_type", "tags")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return list(dict.fromkeys(value)) if isinstance(value, list) else value


class LatestVersion(BaseModel):
    version: str = Field(examples=["1.2.0"])
    stage: Stage
    performance_metrics: dict[str, Any] = Field(examples=[{"accuracy": 0.947}])


class ModelRead(BaseModel):
    id: str = Field(examples=["model_01jd8x6q2v0000000000000000"])
    name: str
    description: str | None = None
    model_type: ModelType
    framework: str | None = None
    task_type: str | None = None
    tags: list[str] = Field(description="The model's tag keys, in alphabetical order.")
    version_count: int
    latest_version: LatestVersion | None = Field(description="The most recently created version, if any.")
    created_by: UserRef | None = Field(None, description="Null when created with an API key.")
    created_at: datetime
    updated_at: datetime


class TagSet(StrictModel):
    value: TagValue = Field("", description="May be empty: a label without a value.")


class TagRead(BaseModel):
    key: str = Field(examples=["team"])
    value: str = Field(examples=["growth"])
