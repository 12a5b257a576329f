"""Request and response shapes of the model registry."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator, model_validator

from maestro.identity.schemas import ActorRef
from maestro.registry.models import ModelType, Stage
from maestro.runtimes.formats import ModelFormat
from maestro.schemas import JsonDepth, StrictModel, Visible

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
# names or labels; descriptions may span lines. No text may hold invisible or
# direction-changing characters (`Visible`).
ModelName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(_usable_name),
    Visible,
]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
    Visible,
]
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$"), Visible]
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
    created_by: ActorRef | None = Field(None, description="Null when its creator has been deleted.")
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
    str, StringConstraints(max_length=20_000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"), Visible
]
Document = Annotated[dict[str, Any], JsonDepth]  # free-form JSON, stored as sent


class VersionCreate(StrictModel):
    """The form fields of a version upload, beside the file itself."""

    version: SemVer | None = Field(
        None, description="Semantic version; the next patch of the highest version when omitted."
    )
    stage: Stage = Stage.development
    description: Description | None = None
    performance_metrics: Document = Field(default_factory=dict)
    training_metrics: Document = Field(default_factory=dict)
    model_schema: Document | None = None
    requirements: Requirements | None = None
    format: ModelFormat | None = Field(
        None, description="The format the file claims to be; refused (422) when its bytes say otherwise."
    )

    @field_validator("performance_metrics", "training_metrics", "model_schema")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        """JSON documents are stored as sent; NaN and infinities are not JSON, and
        PostgreSQL refuses them, so both databases refuse them here alike."""
        _check_finite(value)
        return value


def _check_finite(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("must not contain NaN or infinite numbers")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class LoadCheckRead(BaseModel):
    """How the version's file behaved when it was loaded in an isolated process."""

    status: Literal["passed", "failed"] = Field(
        description="failed: the file is refused when loaded (at upload, only for want of trust)."
    )
    reason: str | None = Field(
        None, description="Why it failed, as a stable code (e.g. invalid_model, crashed)."
    )
    message: str | None = None
    memory_bytes: int | None = Field(None, description="Memory the model took once loaded and warmed up.")
    serving: str | None = Field(None, description="What answers, e.g. `onnx (converted from skops)`.")
    sha256: str = Field(description="The file that was checked.")
    trusted: bool = Field(description="Whether it was checked as a trusted file.")
    maestro_version: str
    checked_at: str


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
    load_check: LoadCheckRead | None = Field(
        None, description="The file's load check; null until a loadable file has been checked."
    )
    created_by: ActorRef | None = Field(None, description="Null when its uploader has been deleted.")
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


# --- the name-addressed API (`/api/v1/models`, `…/stage`, `…/tags` with bodies) ------------
# A version in a path: semantic (1.2.0), or an integer N, which is N.0.0.
VERSION_REF_PATTERN = r"^(?:[0-9]{1,9}|" + SEMVER_PATTERN[1:-1] + r")$"
TagValues = Annotated[
    dict[TagKey, TagValue],
    Field(max_length=MAX_TAGS, description="Tags as an object of key/value pairs."),
]
ProjectRef = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def tag_values(tags: dict[str, str] | list[str]) -> dict[str, str]:
    """Tags in either shape as key/value pairs: a list of keys is keys without values."""
    return dict(tags) if isinstance(tags, dict) else dict.fromkeys(tags, "")


class ModelRegister(StrictModel):
    """A model registered by name, in the project named by `project_id`, the
    `X-Maestro-Project` header, or the caller's only project."""

    project_id: ProjectRef | None = Field(None, description="The project; see the header and defaults.")
    name: ModelName = Field(examples=["customer-churn"], description="Unique within the project; no slashes.")
    description: Description | None = Field(None, examples=["Predicts customer churn"])
    model_type: ModelType = ModelType.other
    framework: Label | None = None
    task_type: Label | None = None
    tags: TagValues | TagKeys = Field(
        default_factory=dict,
        examples=[{"team": "growth"}],
        description="An object of key/value pairs, or a list of keys without values.",
    )

    def create_body(self) -> ModelCreate:
        return ModelCreate(
            name=self.name,
            description=self.description,
            model_type=self.model_type,
            framework=self.framework,
            task_type=self.task_type,
            tags=list(tag_values(self.tags)),
        )


class ModelPatch(ModelUpdate):
    """Only the fields sent are changed. `tags` replaces the model's tags: an object sets
    every value given and removes keys not listed; a list of keys keeps listed values."""

    tags: TagValues | TagKeys | None = Field(None, description="Not null.")  # type: ignore[assignment]


SPEC_STAGES = {
    "none": Stage.development,
    "development": Stage.development,
    "staging": Stage.staging,
    "production": Stage.production,
    "archived": Stage.archived,
}


class StageRequest(StrictModel):
    """A stage in any case: `Staging`, `Production`, `Archived`, or `None` (which is
    `development`); the platform's lowercase names are accepted too."""

    stage: str = Field(
        max_length=20, examples=["Staging"], description="Staging, Production, Archived or None."
    )
    archive_existing_versions: bool = Field(
        False, description="When promoting to Production, archive the model's other Production versions."
    )
    description: Description | None = None

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value.lower() not in SPEC_STAGES:
            raise ValueError("must be one of Staging, Production, Archived, None (any case)")
        return value

    def change(self) -> StageChange:
        return StageChange(
            stage=SPEC_STAGES[self.stage.lower()],
            description=self.description,
            archive_existing_versions=self.archive_existing_versions,
        )


class TagPair(StrictModel):
    key: TagKey = Field(examples=["validated"])
    value: TagValue = Field("", examples=["true"], description="May be empty: a label without a value.")


class TagKeyBody(StrictModel):
    key: TagKey = Field(examples=["validated"])


# --- model cards ---------------------------------------------------------------------------
# The sections of a card that people write. Every text is bounded, so a card always
# renders (Markdown and PDF) in bounded time, and free of control characters other
# than line breaks and tabs in longer texts.
MAX_CARD_ITEMS = 50  # entries per list
MAX_CARD_CHARS = 20_000  # all the text of a card's sections together (about eight PDF pages)
CardLine = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
CardText = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=5000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"
    ),
    Visible,
]
CardList = Annotated[list[CardLine], Field(max_length=MAX_CARD_ITEMS)]


class IntendedUse(StrictModel):
    primary_uses: CardList = Field(default_factory=list, examples=[["Fraud detection in payment processing"]])
    primary_users: CardList = Field(default_factory=list, examples=[["Risk analysts"]])
    out_of_scope: CardList = Field(
        default_factory=list, examples=[["Credit scoring", "Employment decisions"]]
    )


class EthicalConsiderations(StrictModel):
    risks_and_harms: CardList = Field(default_factory=list, examples=[["Potential demographic bias"]])
    mitigations: CardList = Field(
        default_factory=list, examples=[["Regular bias audits", "Human review process"]]
    )


class DatasetReference(StrictModel):
    """The data a version was trained or evaluated on, as a reference: the data itself
    stays where it is."""

    name: CardLine | None = Field(None, examples=["Transactions 2023"])
    source: CardLine | None = Field(
        None, description="Where the data lives: a URL, a dataset id or a path.", examples=["ds_01jd8x6q2v"]
    )
    description: CardText | None = None
    size: int | None = Field(None, ge=0, le=10**15, description="Number of rows or examples.")
    preprocessing: CardList = Field(default_factory=list, examples=[["Amounts log-scaled"]])


class ModelCardSections(StrictModel):
    """The narrative sections of a version's model card; a section left out is empty."""

    intended_use: IntendedUse | None = None
    limitations: CardList | None = Field(None, examples=[["Not evaluated on transactions outside the EU"]])
    ethical_considerations: EthicalConsiderations | None = None
    training_data: DatasetReference | None = None
    evaluation_data: DatasetReference | None = None
    caveats_and_recommendations: CardList | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ModelCardSections:
        total = sum(len(text) for text in _texts(self.model_dump()))
        if total > MAX_CARD_CHARS:
            raise ValueError(f"the sections hold {total} characters together; at most {MAX_CARD_CHARS}")
        return self


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


class ModelCardRender(StrictModel):
    overrides: ModelCardSections | None = Field(
        None,
        description=(
            "Sections to use instead of the saved ones for this request only (nothing is saved). "
            "Within `intended_use`, `ethical_considerations`, `training_data` and `evaluation_data`, "
            "only the fields given replace the saved ones; null clears a section."
        ),
    )


class StageTransitionRead(BaseModel):
    from_stage: Stage | None = Field(description="Null for the stage a version was uploaded in.")
    to_stage: Stage
    description: str | None = None
    changed_by: ActorRef | None = Field(None, description="Null when whoever changed it has been deleted.")
    changed_at: datetime


JsonValue = float | int | bool | str | list[Any] | dict[str, Any] | None


class CardMetric(BaseModel):
    name: str = Field(examples=["accuracy"], description="Nested metrics are named with dots: test.accuracy.")
    value: JsonValue = Field(
        examples=[0.947], description="As recorded; a number that is not finite is given as text (NaN)."
    )


class CardSchemaField(BaseModel):
    name: str | None = Field(examples=["amount"])
    type: str | None = Field(None, examples=["float"])
    description: str | None = None


class CardSchema(BaseModel):
    """The version's input/output schema, read from `model_schema`."""

    inputs: list[CardSchemaField] | None = Field(description="Null when the schema has no list of inputs.")
    outputs: list[CardSchemaField] | None = Field(description="Null when the schema has no list of outputs.")


class CardModelDetails(BaseModel):
    id: str
    name: str
    description: str | None = None
    model_type: ModelType
    framework: str | None = None
    task_type: str | None = None
    tags: list[TagRead]


class CardVersionDetails(BaseModel):
    id: str
    version: str
    stage: Stage
    description: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    trusted: bool
    requirements: list[str] = Field(description="The version's requirements, one per line.")
    tags: list[TagRead]
    aliases: list[str] = Field(description="Aliases of the model that name this version.")
    created_by: ActorRef | None = None
    created_at: datetime


class CardLineageRef(BaseModel):
    id: str
    name: str | None = None


class CardLineage(BaseModel):
    run_id: str | None = Field(description="The training run recorded with the version, if any.")
    experiment: CardLineageRef | None = Field(
        None, description="Filled from experiment tracking once the run is tracked there; null until then."
    )
    run: CardLineageRef | None = Field(
        None, description="Filled from experiment tracking once the run is tracked there; null until then."
    )


class ModelCard(BaseModel):
    """Everything the registry knows about a version, and the sections people wrote."""

    model: CardModelDetails
    version: CardVersionDetails
    performance_metrics: list[CardMetric]
    training_metrics: list[CardMetric]
    model_schema: CardSchema | None = Field(description="Null when the version has no schema.")
    lineage: CardLineage
    stage_history: list[StageTransitionRead] = Field(description="Oldest first.")
    sections: ModelCardSections = Field(description="The narrative sections, as saved (or overridden).")
    generated_at: datetime


class CardIssue(BaseModel):
    section: str = Field(examples=["performance_metrics"])
    message: str = Field(examples=["accuracy is a probability or rate and must lie in [0, 1], not 94.7"])


class ModelCardValidation(BaseModel):
    valid: bool = Field(description="True when nothing is missing or invalid; warnings do not count.")
    missing_sections: list[str] = Field(examples=[["limitations", "model_schema.inputs"]])
    invalid_sections: list[CardIssue]
    warnings: list[str]
