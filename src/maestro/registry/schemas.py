"""Request and response shapes of the model registry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from maestro.identity.schemas import StrictModel, UserRef
from maestro.registry.formats import ModelFormat
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


# --- versions ------------------------------------------------------------------------------
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})"
    r"(-[0-9A-Za-z-]{1,20}(\.[0-9A-Za-z-]{1,20}){0,4})?$"
)
SemVer = Annotated[str, StringConstraints(max_length=50, pattern=SEMVER_PATTERN)]
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,49}$"
Requirements = Annotated[
    str, StringConstraints(max_length=20_000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")
]


class VersionCreate(StrictModel):
    """The form fields of a version upload, beside the file itself."""

    version: SemVer | None = Field(
        None, description="Semantic version; the next patch of the highest version when omitted."
    )
    stage: Stage = Stage.development
    description: Description | None = None
    performance_metrics: dict[str, Any] = Field(default_factory=dict)
    training_metrics: dict[str, Any] = Field(default_factory=dict)
    model_schema: dict[str, Any] | None = None
    requirements: Requirements | None = None
    format: ModelFormat | None = Field(
        None, description="The format the file claims to be; refused (422) when its bytes say otherwise."
    )


class VersionRead(BaseModel):
    id: str = Field(examples=["version_01jd8x6q2v0000000000000000"])
    model_id: str
    version: str = Field(examples=["1.2.0"])
    stage: Stage
    description: str | None = None
    model_file_path: str | None = Field(description="The file's key in the artifact store.")
    model_size_bytes: int | None
    sha256: str | None
    format: str | None = Field(description="Recognised from the file's bytes: " + ", ".join(ModelFormat))
    trusted: bool = Field(description="Set by an organisation admin; needed before a pickle or joblib loads.")
    performance_metrics: dict[str, Any]
    training_metrics: dict[str, Any]
    model_schema: dict[str, Any] | None = None
    requirements: str | None = None
    created_by: UserRef | None = Field(None, description="Null when uploaded with an API key.")
    created_at: datetime


class StageChange(StrictModel):
    stage: Stage
    description: Description | None = None
    archive_existing_versions: bool = Field(
        False, description="When promoting to production, archive the model's other production versions."
    )


class TrustChange(StrictModel):
    trusted: bool


class AliasSet(StrictModel):
    version: SemVer


class AliasRead(BaseModel):
    alias: str = Field(examples=["champion"])
    version: VersionRead
