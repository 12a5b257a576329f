"""Request and response shapes of experiment tracking.

Metric values are doubles; JSON has no NaN or infinity, so they travel as the
strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` both ways (the bare tokens
``NaN``/``Infinity`` that MLflow's and Python's JSON writers emit are accepted too).
"""

from __future__ import annotations

import json
import math
import posixpath
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN
from maestro.identity.schemas import UserRef
from maestro.schemas import JsonDepth, StrictModel, Visible
from maestro.tracking.models import ArtifactType, ExperimentStatus, Lifecycle, RunStatus

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_CONFIG_BYTES = 64 * 1024
MAX_KEYS_PER_REQUEST = 1000  # params or tags in one request
MAX_COMPARED_RUNS = 50
MAX_SEARCH_EXPERIMENTS = 100

NonFinite = Literal["NaN", "Infinity", "-Infinity"]
NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
MetricValue = Annotated[
    float | NonFinite,
    Field(description='A number, or "NaN", "Infinity" or "-Infinity".'),
]


def metric_value(value: float | None) -> float | NonFinite:
    """A stored value as JSON can carry it (NULL is how NaN is stored)."""
    if value is None or value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def path_safe_key(value: str) -> str:
    """Keys may become file names in MLflow's artifact layout, so like MLflow we
    refuse those that would resolve to another name (``a/../b``, ``/a``, ``a//b``)."""
    if posixpath.normpath(value) != value or value.startswith("/"):
        raise ValueError("must not contain '..' or '.' segments, empty segments or a leading '/'")
    return value


# MLflow's rule for parameter, metric and tag names: letters, digits, _ - . / : and spaces.
KEY_PATTERN = r"^[\w.\- /:]+$"
Key = Annotated[
    str, StringConstraints(max_length=250, pattern=KEY_PATTERN), AfterValidator(path_safe_key), Visible
]
# Metric names follow the same rule, checked once per distinct name (``metrics.check_names``)
# rather than once per point: a batch of 10,000 points rarely has more than a few names.
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=250)]
NoNul = r"^[^\x00]*$"
# Names, descriptions and tag values never hold invisible or direction-changing characters.
TagValue = Annotated[str, StringConstraints(max_length=8000, pattern=NoNul), Visible]
ExperimentTagValue = Annotated[str, StringConstraints(max_length=5000, pattern=NoNul), Visible]
Printable = r"^[^\x00-\x1f\x7f]+$"
ExperimentName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=Printable), Visible
]
Description = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"),
    Visible,
]
Owner = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=Printable), Visible
]
RunName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=250, pattern=r"^[^\x00-\x1f\x7f]*$"), Visible
]
IdRef = Annotated[str, StringConstraints(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
Direction = Literal["max", "min"]


def _config(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (ValueError, RecursionError) as exc:
        raise ValueError("must be plain JSON (no NaN or infinity, not nested too deeply)") from exc
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"at most {MAX_CONFIG_BYTES} bytes of JSON")
    if "\\u0000" in json.dumps(value):
        raise ValueError("must not contain NUL characters")
    return value


Config = Annotated[
    dict[str, Any],
    JsonDepth,
    AfterValidator(_config),
    Field(
        description="Free JSON, such as a parameter grid. `primary_metric` (a metric name) and "
        "`primary_metric_direction` (`max` or `min`) choose how the best run is picked."
    ),
]


def param_text(value: Any) -> str:
    """Parameters are strings, as in MLflow; other JSON values are stored as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _param_values(values: dict[str, Any]) -> dict[str, str]:
    texts = {key: param_text(value) for key, value in values.items()}
    for key, text in texts.items():
        if len(text) > 6000:
            raise ValueError(f"the value of {key!r} is longer than 6000 characters")
        if "\x00" in text:
            raise ValueError(f"the value of {key!r} contains a NUL character")
    return texts


Params = Annotated[
    dict[Key, Any],
    JsonDepth,
    Field(
        max_length=MAX_KEYS_PER_REQUEST,
        description="Name → value; values other than strings are stored as JSON.",
    ),
    AfterValidator(_param_values),
]
Tags = Annotated[dict[Key, TagValue], Field(max_length=MAX_KEYS_PER_REQUEST)]


# --- experiments ---------------------------------------------------------------------------
class ExperimentCreate(StrictModel):
    name: ExperimentName = Field(
        examples=["Feature Engineering Experiment"], description="Unique within the project."
    )
    description: Description | None = Field(None, examples=["Testing new feature combinations"])
    model_id: IdRef | None = Field(None, description="A model of the same project.")
    config: Config = Field(
        default_factory=dict, examples=[{"max_depth": [3, 5, 7], "primary_metric": "accuracy"}]
    )
    tags: Annotated[dict[Key, ExperimentTagValue], Field(max_length=100)] = Field(default_factory=dict)


def _tracker_name(value: str) -> str:
    return value.lower()


class TrackedExperimentCreate(StrictModel):
    """The experiment tracker's shape: a name of letters, digits, `_` and `-` (stored in
    lowercase), an owner, and the project it belongs to."""

    project_id: IdRef
    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$"),
        AfterValidator(_tracker_name),
    ] = Field(examples=["hyperparameter_search_v1"])
    owner: Owner | None = Field(None, description="Who is responsible; defaults to the caller's email.")
    description: Annotated[str, StringConstraints(max_length=500, pattern=NoNul), Visible] | None = None
    model_id: IdRef | None = None
    config: Config = Field(default_factory=dict)


class ExperimentUpdate(StrictModel):
    """Only the fields sent change. ``status`` may be set only on an experiment without
    runs; once it has runs, its status follows them (409 otherwise)."""

    name: ExperimentName | None = Field(None, description="Not null.")
    description: Description | None = None
    model_id: IdRef | None = Field(None, description="Null detaches the model.")
    config: Config | None = Field(None, description="Replaces the whole config; not null.")
    owner: Owner | None = None
    status: ExperimentStatus | None = Field(
        None, description="Not null; only for an experiment without runs."
    )

    @field_validator("name", "config", "status")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value


class BestRunSummary(BaseModel):
    id: str = Field(examples=["run_01jd8x6q2v0000000000000000"])
    run_name: str
    metric: str = Field(description="The metric the run is best by.", examples=["accuracy"])
    direction: Direction
    value: MetricValue
    metrics: dict[str, MetricValue] = Field(
        description="The run's latest value of every metric.",
        examples=[{"accuracy": 0.951, "val_accuracy": 0.943}],
    )


class ExperimentRead(BaseModel):
    id: str = Field(examples=["exp_01jd8x6q2v0000000000000000"])
    project_id: str
    name: str
    description: str | None = None
    status: ExperimentStatus = Field(
        description="`created` without runs; then `running` while any run is scheduled or running, "
        "else `completed` when at least one run completed, else `failed`."
    )
    model_id: str | None = None
    config: dict[str, Any]
    owner: str | None = None
    tags: dict[str, str]
    lifecycle_stage: Lifecycle
    run_count: int
    best_run: BestRunSummary | None = Field(
        description="The best run by `config.primary_metric` (else the first metric in alphabetical order)."
    )
    created_by: UserRef | None = Field(None, description="Null when created with an API key.")
    started_at: datetime | None = Field(description="When the first run started.")
    completed_at: datetime | None = Field(description="When the last run ended, once none is running.")
    duration_seconds: float | None
    created_at: datetime
    updated_at: datetime


class RunSummary(BaseModel):
    id: str
    run_name: str
    status: RunStatus
    started_at: datetime | None
    ended_at: datetime | None


class ExperimentDetail(ExperimentRead):
    runs: list[RunSummary] = Field(description="The 100 most recently created runs.")


# --- runs ----------------------------------------------------------------------------------
class RunCreate(StrictModel):
    run_name: RunName | None = Field(None, examples=["run_001"], description="Generated when omitted.")
    parameters: Params = Field(default_factory=dict, examples=[{"max_depth": 5, "learning_rate": 0.1}])
    tags: Tags = Field(default_factory=dict)
    status: Literal[RunStatus.running, RunStatus.scheduled] = Field(
        RunStatus.running, description="A running run starts now (or at `start_time`)."
    )
    start_time: datetime | None = None


class RunRead(BaseModel):
    id: str = Field(examples=["run_01jd8x6q2v0000000000000000"])
    experiment_id: str
    run_name: str
    status: RunStatus
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None
    user: str | None = Field(description="Who ran it, as text (MLflow's user id).")
    created_by: UserRef | None = None
    lifecycle_stage: Lifecycle
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, MetricValue] = Field(description="The latest value of each metric.")
    created_at: datetime


class RunStatusUpdate(StrictModel):
    status: RunStatus
    end_time: datetime | None = Field(None, description="When it ended; now when omitted.")


class ParamsLog(StrictModel):
    params: Params


class TagsLog(StrictModel):
    tags: Tags


class KeysLogged(BaseModel):
    run_id: str
    keys: list[str] = Field(description="The keys logged, in alphabetical order.")


class MetricIn(BaseModel):
    name: MetricName = Field(examples=["accuracy"], json_schema_extra={"pattern": KEY_PATTERN})
    value: MetricValue
    step: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] = 0
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP_MS)] | None = Field(
        None, description="Epoch milliseconds; the time of the request when omitted."
    )


class MetricsLog(BaseModel):
    metrics: Annotated[list[MetricIn], Field(min_length=1, max_length=100_000)] = Field(
        description="The points to log; at most MAESTRO_MAX_METRIC_BATCH (10,000 by default)."
    )


class MetricsLogged(BaseModel):
    run_id: str
    logged: int = Field(description="Points stored.")
    keys: list[str] = Field(description="The metrics they belong to, in alphabetical order.")


class LatestMetricRead(BaseModel):
    name: str
    value: MetricValue
    step: int
    timestamp: int = Field(description="Epoch milliseconds.")


class MetricPointRead(BaseModel):
    step: int
    value: MetricValue
    timestamp: int = Field(description="Epoch milliseconds.")


class MetricHistory(BaseModel):
    name: str
    total_points: int = Field(description="Points logged for this metric.")
    downsampled: bool = Field(
        description="True when `max_points` thinned the series: the first and last points, and in each "
        "of max_points/2 - 1 equal step ranges its lowest and highest value."
    )
    points: list[MetricPointRead] = Field(description="In step order.")
    has_next: bool
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the following points.")


# --- artifacts -----------------------------------------------------------------------------
class ArtifactRead(BaseModel):
    id: str = Field(examples=["artifact_01jd8x6q2v0000000000000000"])
    run_id: str
    path: str = Field(examples=["plots/roc.png"])
    artifact_type: ArtifactType
    description: str | None = None
    size_bytes: int
    sha256: str
    content_type: str | None = Field(description="As the client sent it; downloads are served as octets.")
    created_by: UserRef | None = None
    created_at: datetime


# --- search, comparison, best run ----------------------------------------------------------
RunView = Literal["active_only", "deleted_only", "all"]


class RunSearch(StrictModel):
    filter: Annotated[str, StringConstraints(max_length=4000, pattern=NoNul)] = Field(
        "",
        examples=["metrics.accuracy > 0.9 and params.optimizer = 'adam'"],
        description="Conditions on `metrics.`, `params.`, `tags.` and `attributes.` (status, run_name, "
        "start_time, end_time, created_by, run_id) joined by `and`/`or`, with parentheses. Operators "
        "= != < <= > >= (numbers and times), = != LIKE ILIKE IN NOT IN (text). Quote text with '…'; "
        "backquote keys with dots or spaces: metrics.`val loss`.",
    )
    order_by: Annotated[
        list[Annotated[str, StringConstraints(max_length=300, pattern=NoNul)]], Field(max_length=5)
    ] = Field(default_factory=list, examples=[["metrics.accuracy DESC", "attributes.start_time"]])
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    page: Annotated[int, Field(ge=1, le=100_000)] | None = None
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        None, description="`next_cursor` of the previous page."
    )
    run_view_type: RunView = "active_only"


class ProjectRunSearch(RunSearch):
    experiment_ids: Annotated[list[IdRef], Field(max_length=MAX_SEARCH_EXPERIMENTS)] | None = Field(
        None, description="Experiments of the project to search; all of them when omitted."
    )


class ComparedRun(BaseModel):
    id: str
    run_name: str
    status: RunStatus
    params: dict[str, str | None] = Field(
        description="Every compared parameter; null where this run has none."
    )
    metrics: dict[str, MetricValue | None] = Field(
        description="Every compared metric's latest value, or null."
    )


class RunComparison(BaseModel):
    param_keys: list[str]
    metric_keys: list[str]
    differing_params: list[str] = Field(description="Parameters whose values are not the same in every run.")
    runs: list[ComparedRun] = Field(description="In the order asked for.")


class BestRunRead(BaseModel):
    metric: str
    direction: Direction
    value: MetricValue
    run: RunRead
