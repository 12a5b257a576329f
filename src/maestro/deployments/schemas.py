"""Request and response shapes of deployments and inference.

Inference bodies are not parsed by these models (rows go straight from orjson to numpy);
the inference models here describe the contract in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN
from maestro.deployments.models import DeploymentStatus, Environment, InstanceType, LogLevel
from maestro.identity.schemas import ActorRef
from maestro.schemas import StrictModel, Visible

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
DeploymentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=NAME_PATTERN),
    Field(
        description="Lowercase letters, digits and hyphens, 1 to 63 characters, starting and ending with "
        "a letter or digit (a DNS label); unique within the organisation.",
        examples=["churn-api-staging"],
    ),
]
ObjectId = Annotated[str, StringConstraints(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
    Visible,
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EnvValue = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")]
MAX_ENV_VARS = 100


class ResourceLimits(StrictModel):
    memory: (
        Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")]
        | None
    ) = Field(None, examples=["2Gi"], description="Memory per instance, as Kubernetes writes it.")
    cpu: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}(\.[0-9]{1,6})?m?$")] | None = Field(
        None, examples=["1000m"], description="CPU per instance, in cores or millicores."
    )


class DeploymentConfig(StrictModel):
    """Recorded with the deployment for the orchestrator that runs its instances; this
    server runs every deployment in its own process and does not apply them itself."""

    env_vars: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENV_VARS,
        examples=[{"MODEL_THRESHOLD": "0.5"}],
        description="Write-only secrets: stored encrypted, and every read shows each name with "
        '"********" for its value. On an update, leaving env_vars out keeps them, and a value sent '
        'back as "********" keeps the stored one.',
    )
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)


def _check_instances(minimum: int | None, maximum: int | None) -> None:
    if minimum is not None and maximum is not None and maximum < minimum:
        raise ValueError("max_instances must be at least min_instances")


class DeploymentCreate(StrictModel):
    name: DeploymentName
    model_version_id: ObjectId = Field(examples=["version_01jd8x6q2v0000000000000000"])
    environment: Environment = Environment.development
    instance_type: InstanceType = InstanceType.small
    min_instances: int = Field(1, ge=0, le=100)
    max_instances: int = Field(1, ge=1, le=1000)
    auto_scaling: bool = False
    deployment_config: DeploymentConfig = Field(default_factory=DeploymentConfig)
    reason: Reason | None = Field(None, description="Why, for the deployment's history.")

    @model_validator(mode="after")
    def _instances(self) -> DeploymentCreate:
        _check_instances(self.min_instances, self.max_instances)
        return self


class DeploymentUpdate(StrictModel):
    """Only the fields sent change. A new `model_version_id` is a deploy: the version is
    loaded and warmed before traffic moves to it, and if it cannot be loaded the
    deployment keeps serving what it served. `status` stops (`inactive`) or restarts
    (`active`) serving."""

    name: DeploymentName | None = None
    model_version_id: ObjectId | None = None
    environment: Environment | None = None
    status: Literal["active", "inactive"] | None = None
    instance_type: InstanceType | None = None
    min_instances: int | None = Field(None, ge=0, le=100)
    max_instances: int | None = Field(None, ge=1, le=1000)
    auto_scaling: bool | None = None
    deployment_config: DeploymentConfig | None = None
    reason: Reason | None = Field(None, description="Why, for the deployment's history.")

    @field_validator(
        "name",
        "model_version_id",
        "environment",
        "status",
        "instance_type",
        "min_instances",
        "max_instances",
        "auto_scaling",
        "deployment_config",
    )
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value

    @model_validator(mode="after")
    def _instances(self) -> DeploymentUpdate:
        _check_instances(self.min_instances, self.max_instances)
        return self


class RollbackRequest(StrictModel):
    target_version_id: ObjectId | None = Field(
        None, description="The version to serve again; by default the one served before the current one."
    )
    reason: Reason | None = Field(None, examples=["Performance issues with current version"])


class ModelVersionRef(BaseModel):
    id: str | None = Field(description="Null once the version was deleted from the registry.")
    model_id: str | None = None
    model_name: str | None = None
    version: str = Field(examples=["1.2.0"])


ActorType = Literal["user", "api_key"]
RevisionAction = Literal["created", "deployed", "rolled_back"]
HealthStatus = Literal["healthy", "unhealthy", "unknown"]
Granularity = Literal["1m", "5m", "1h", "1d"]
FeatureType = Literal["float", "integer", "boolean"]
InputSource = Literal["model_schema", "model", "generated"]


class Actor(BaseModel):
    type: ActorType
    id: str | None
    name: str | None = Field(None, description="The user's name, or the API key's; null once deleted.")
    prefix: str | None = Field(None, description="An API key's visible prefix; null for a person.")


class DeploymentRevisionRead(BaseModel):
    action: RevisionAction
    model_version: ModelVersionRef
    previous_version_id: str | None
    reason: str | None
    actor: Actor
    created_at: datetime


class DeploymentRead(BaseModel):
    id: str = Field(examples=["deploy_01jd8x6q2v0000000000000000"])
    name: str
    project_id: str
    environment: Environment
    status: DeploymentStatus
    endpoint_url: str = Field(
        description="Where to send predictions: absolute when the server knows its public URL."
    )
    model_version: ModelVersionRef | None
    instance_type: InstanceType
    min_instances: int
    max_instances: int
    current_instances: int = Field(
        description="Instances serving it: every Maestro process serves every active deployment as one "
        "instance, so this is 1 while active and 0 otherwise."
    )
    auto_scaling: bool
    deployment_config: DeploymentConfig
    health_status: HealthStatus = Field(
        description="As this process sees it: healthy once its model is loaded and warmed, unhealthy when "
        "it cannot be loaded or is gone, unknown before its first request here."
    )
    serving: dict[str, Any] | None = Field(
        description="What answers: the format, the runtime (e.g. ONNX converted from skops, or the "
        "original and why), the input schema and classes."
    )
    deployed_at: datetime | None
    last_request_at: datetime | None
    request_count_24h: int
    created_by: ActorRef | None = Field(
        None, description="The person or API key that created it; null once deleted."
    )
    created_at: datetime
    updated_at: datetime


class DeploymentDetail(DeploymentRead):
    history: list[DeploymentRevisionRead] = Field(
        description="Which version served from when, who deployed it and why; newest first, at most 50."
    )


class DeploymentLogRead(BaseModel):
    id: str
    timestamp: datetime
    level: LogLevel
    event: str = Field(examples=["deployed"])
    message: str
    details: dict[str, Any]


MetricName = Literal[
    "request_count",
    "error_count",
    "error_rate",
    "prediction_count",
    "latency_mean",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "latency_max",
    "throughput",
]
METRIC_NAMES: tuple[MetricName, ...] = get_args(MetricName)


class MetricPoint(BaseModel):
    timestamp: datetime = Field(description="Start of the interval.")
    values: dict[str, int | float | None] = Field(
        description="Each requested metric: counts, error_rate (0..1), latencies in milliseconds, "
        "throughput in requests per second. Null where the interval had no requests."
    )


class DeploymentMetrics(BaseModel):
    deployment_id: str
    granularity: Granularity
    start_time: datetime
    end_time: datetime
    metrics: list[MetricName]
    series: list[MetricPoint]
    totals: dict[str, int | float | None] = Field(description="The same metrics over the whole window.")


# --- inference -----------------------------------------------------------------------------
Label = str | int | float | bool


class Prediction(BaseModel):
    prediction: Label = Field(
        description="The class (named by the version's model_schema class_labels when declared), "
        "or the value of a regressor."
    )
    probabilities: dict[str, float] | None = Field(
        None,
        description="Probability of each class, keyed as predictions name the classes (classifiers that "
        "give them).",
    )
    confidence: float | None = Field(None, description="The probability of the predicted class.")


class ModelInfo(BaseModel):
    deployment: str
    model_id: str | None
    model_name: str | None
    version: str
    version_id: str
    prediction_id: str = Field(examples=["pred_01jd8x6q2v0000000000000000"])


class InferenceMetadata(BaseModel):
    latency_ms: float
    timestamp: datetime
    request_id: str


class InferenceResponse(BaseModel):
    success: Literal[True] = True
    predictions: list[Prediction]
    model_info: ModelInfo
    metadata: InferenceMetadata


INFERENCE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["instances"],
    "additionalProperties": False,
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "description": "Rows: objects of named features (see …/schema), or lists of values in the "
            "schema's order.",
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": {"type": ["number", "boolean"]},
                    },
                    {"type": "array", "items": {"type": ["number", "boolean"]}},
                ]
            },
        }
    },
    "example": {"instances": [{"amount": 1250.0, "time_of_day": 14, "day_of_week": 2}]},
}


class InferenceHealth(BaseModel):
    deployment: str
    status: Literal["healthy"]
    version: str
    version_id: str
    serving: str = Field(examples=["onnx (converted from skops)"])
    loaded_seconds_ago: float | None


class FeatureRead(BaseModel):
    name: str
    type: FeatureType


class OutputSchema(BaseModel):
    prediction: Literal["label", "value"] = Field(description="A class label, or a regressor's value.")
    classes: list[Label] | None
    class_labels: list[str] | None = Field(
        None,
        description="What predictions and probability keys call the classes, in the classes' order: "
        "the version's model_schema class_labels when declared, else each class as text.",
    )
    probabilities: bool


class InferenceSchema(BaseModel):
    deployment: str
    model_id: str | None
    version: str
    version_id: str
    inputs: list[FeatureRead]
    input_source: InputSource = Field(
        description="Where the feature names come from: the version's model_schema, the model file, or "
        "generated (f0, f1, …) when neither names them."
    )
    outputs: OutputSchema
    max_rows: int = Field(description="Rows one request may carry here.")
    max_batch_rows: int = Field(description="Rows one …/batch request may carry.")
    example: dict[str, Any] = Field(description="A request body of one row.")


# --- async batch prediction ----------------------------------------------------------------
OutputFormat = Literal["csv", "parquet"]


class BatchJobCreate(StrictModel):
    """Predict a dataset uploaded with POST /api/v1/upload/datasets."""

    file_id: ObjectId = Field(examples=["file_01jd8x6q2v0000000000000000"])
    output_format: OutputFormat = "csv"


class BatchJobRead(BaseModel):
    job_id: str
    status: str = Field(examples=["queued"])
    deployment: str
    model_version: ModelVersionRef
    input_file_id: str
    output_format: OutputFormat
    status_url: str = Field(description="GET it for progress and, once finished, the result.")
    result_url: str = Field(description="Where the predictions file downloads once the job succeeded.")
