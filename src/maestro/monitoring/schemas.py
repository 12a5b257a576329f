"""Monitoring's bodies: a deployment's performance over a window and per interval; the
ground truth (true labels) sent for its logged predictions; its reference data, drift
over a window and the history of drift reports (and the bodies that set a reference and
ask for a report)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints, model_validator

from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN
from maestro.schemas import StrictModel, Visible

Granularity = Literal["1m", "5m", "1h", "1d"]

ACCURACY = (
    "Accuracy of a classifier from ground truth (labels sent for logged predictions); null without "
    "labels, and for a regressor."
)
_CLASSIFIER = (
    "From the labelled rows' confusion counts (scikit-learn's zero_division=0); null for a regressor."
)
_REGRESSOR = "From the labelled rows' error sums; null for a classifier."


class QualityMetrics(BaseModel):
    """Model quality from ground truth: the labelled rows of the predictions made in the
    window (or interval), merged from per-minute counts before computing."""

    label_count: int = Field(description="Labelled rows of predictions made in the window.")
    label_coverage: float | None = Field(
        description="Labelled rows / logged prediction rows over the whole UTC hours the window touches "
        "(0..1); null without logged rows."
    )
    precision_macro: float | None = Field(description=_CLASSIFIER)
    recall_macro: float | None = Field(description=_CLASSIFIER)
    f1_macro: float | None = Field(description=_CLASSIFIER)
    precision_weighted: float | None = Field(description=_CLASSIFIER + " Weighted by each class's support.")
    recall_weighted: float | None = Field(description=_CLASSIFIER + " Weighted by each class's support.")
    f1_weighted: float | None = Field(description=_CLASSIFIER + " Weighted by each class's support.")
    roc_auc: float | None = Field(
        description="ROC AUC from 1,000-bin score histograms (binary: the second class; more classes: the "
        "one-vs-rest mean); null without probabilities, or without both outcomes labelled."
    )
    roc_auc_max_error: float | None = Field(
        description="How far roc_auc can be from the exact AUC at most (pairs of scores sharing a bin)."
    )
    log_loss: float | None = Field(
        description="Mean log loss of the rows with probabilities (clipped to [2.2e-16, 1 - 2.2e-16])."
    )
    mae: float | None = Field(description="Mean absolute error. " + _REGRESSOR)
    rmse: float | None = Field(description="Root mean squared error. " + _REGRESSOR)
    mape: float | None = Field(
        description="Mean absolute percentage error as a fraction, over rows whose actual value is not 0. "
        + _REGRESSOR
    )
    r2: float | None = Field(description="R²; null with fewer than two rows or constant actual values.")


LATENCY = "Milliseconds, interpolated in the latency histogram bucket that holds it; null without requests."


class CurrentMetrics(BaseModel):
    accuracy: float | None = Field(description=ACCURACY)
    latency_p95: float | None = Field(description=LATENCY)
    throughput_rps: float = Field(description="Requests per second over the window.")
    error_rate: float | None = Field(description="Failed requests / requests (0..1); null without requests.")
    request_count: int
    error_count: int
    prediction_count: int = Field(description="Rows predicted by successful requests.")
    latency_p50: float | None = Field(description=LATENCY)
    latency_p99: float | None = Field(description=LATENCY)
    quality: QualityMetrics


class MetricsPoint(BaseModel):
    timestamp: datetime = Field(description="Start of the interval (UTC, aligned to the granularity).")
    accuracy: float | None = Field(description=ACCURACY)
    latency_p95: float | None = Field(description=LATENCY)
    throughput_rps: float = Field(
        description="Requests per second over the part of the interval in the window."
    )
    error_rate: float | None = Field(description="Failed requests / requests (0..1); null without requests.")
    request_count: int
    quality: QualityMetrics


class MonitoringMetrics(BaseModel):
    start: datetime
    end: datetime
    granularity: Granularity
    segment: str | None = Field(
        None,
        description="The segment these figures are of (a value of the segment column); null: all traffic.",
    )
    current_metrics: CurrentMetrics = Field(description="The whole window.")
    time_series: list[MetricsPoint] = Field(description="One point per interval, empty ones included.")


# --- ground truth ------------------------------------------------------------------------
MAX_LABELS = 10_000  # items of one ground-truth body
ActualLabel = Annotated[
    StrictBool
    | StrictInt
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | Annotated[str, StringConstraints(min_length=1, max_length=1000)],
    Field(
        description="The true outcome: a class name (or the class as the model gives it: a number, a "
        "boolean) for a classifier, a number for a regressor.",
        examples=["churn"],
    ),
]


class GroundTruthItem(StrictModel):
    prediction_id: Annotated[str, StringConstraints(min_length=1, max_length=40)] = Field(
        description="The prediction_id an inference answer carried.", examples=["pred_01jd8x…"]
    )
    actual: ActualLabel
    row: Annotated[int, Field(strict=True, ge=0)] = Field(
        0, description="Which row of the request (0 for its first; batch requests have many)."
    )


class GroundTruthBody(StrictModel):
    items: list[GroundTruthItem] = Field(max_length=MAX_LABELS, description="At most 10,000 labels.")


class UnknownPrediction(BaseModel):
    prediction_id: str
    row: int


class GroundTruthResult(BaseModel):
    matched: int = Field(
        description="Rows labelled (each prediction id and row once; the last label sent wins)."
    )
    updated: int = Field(description="Of those, rows whose earlier label was replaced.")
    unknown_count: int
    unknown: list[UnknownPrediction] = Field(
        description="Prediction ids and rows not logged for this deployment (never served here, not "
        "sampled, not written yet, or past the served rows), each once, in the order sent."
    )


# --- reference data and drift ------------------------------------------------------------------
ReferenceSource = Literal["dataset", "training_data", "traffic"]
ReferenceStatus = Literal["none", "pending", "building", "ready", "failed"]
Verdict = Literal["ok", "warning", "drift", "insufficient_data"]
DriftTest = Literal["ks", "wasserstein", "chi2", "z", "jensen_shannon", "none"]
FileId = Annotated[str, StringConstraints(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=300), Visible]


class ReferenceSet(StrictModel):
    """One of: a dataset file of the deployment's project (``dataset_file_id``), the
    training data the deployed version's model card names (``training_data``), or a
    window of the deployment's own traffic (``reference_start`` and ``reference_end``)."""

    dataset_file_id: FileId | None = Field(
        None, description="A dataset uploaded to the deployment's project.", examples=["file_01jd8x6q2v"]
    )
    training_data: bool = Field(
        False,
        description="Use the dataset file the deployed version's model card names as its training data "
        "(`training_data.source`).",
    )
    reference_start: datetime | None = Field(None, description="Start of a window of served traffic.")
    reference_end: datetime | None = Field(
        None, description="End of that window (excluded; not in the future)."
    )
    prediction_column: ColumnName | None = Field(
        None,
        description="A column of the dataset holding what the model answers (labels or values), compared "
        "with the served predictions.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceSet:
        window = self.reference_start is not None or self.reference_end is not None
        chosen = sum((self.dataset_file_id is not None, self.training_data, window))
        if chosen != 1:
            raise ValueError(
                "give exactly one of dataset_file_id, training_data: true, "
                "or reference_start and reference_end"
            )
        if window and (self.reference_start is None or self.reference_end is None):
            raise ValueError("a traffic window needs both reference_start and reference_end")
        if window and self.prediction_column is not None:
            raise ValueError(
                "prediction_column names a column of a dataset; a traffic window has the predictions"
            )
        return self


class ReferenceColumn(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    rows: int = Field(description="Rows profiled, missing values included.")
    null_count: int


class ReferenceRead(BaseModel):
    deployment_id: str
    status: ReferenceStatus = Field(
        description="none: no reference set; pending or building: its profile is being built by the job; "
        "ready: drift can be computed; failed: see error, and set it again."
    )
    source: ReferenceSource | None = None
    dataset_file_id: str | None = Field(
        None, description="Null for a traffic window, or once the file is deleted."
    )
    model_version_id: str | None = Field(
        None, description="The version whose model card named the training data."
    )
    prediction_column: str | None = None
    reference_start: datetime | None = None
    reference_end: datetime | None = None
    rows: int | None = Field(None, description="Rows in the reference, once built.")
    columns: list[ReferenceColumn] = Field(
        default_factory=list, description="The profiled columns, once built."
    )
    skipped_columns: list[list[str]] = Field(
        default_factory=list, description="Columns of the dataset left out, each with the reason."
    )
    error: str | None = None
    job_id: str | None = Field(None, description="The job building the profile: GET /api/v1/jobs/{job_id}.")
    set_at: datetime | None = None
    built_at: datetime | None = None


class ColumnDriftRead(BaseModel):
    column: str
    kind: Literal["numeric", "categorical"]
    test: DriftTest = Field(
        description="ks or wasserstein for numbers, chi2, z or jensen_shannon for categories (and numbers "
        "with at most 5 distinct values); none when there were too few values."
    )
    statistic: float | None = Field(
        description="KS distance, Wasserstein distance over the reference's standard deviation, chi², |z| or "
        "Jensen-Shannon distance; null without a test (or an infinite distance: a constant reference)."
    )
    p_value: float | None = Field(description="For ks, chi2 and z; null for the distances.")
    threshold: float | None = Field(
        description="Drift when p_value < threshold (tests) or statistic >= threshold."
    )
    drifted: bool
    warning: bool = Field(description="A distance past half its threshold, short of drift.")
    verdict: Verdict
    n_reference: int = Field(description="Non-missing values in the reference.")
    n_current: int = Field(description="Non-missing values in the window.")
    null_rate_reference: float
    null_rate_current: float
    null_rate_change: float = Field(description="null_rate_current - null_rate_reference.")
    null_rate_drifted: bool
    unseen_rate: float | None = Field(
        description="Categories: share of the window's values never seen in the reference."
    )
    important: bool = Field(False, description="One of the model's most important features.")


class DatasetDriftRead(BaseModel):
    drifted: bool = Field(description="share_drifted reached threshold.")
    share_drifted: float | None = Field(
        description="Drifted input columns / judged input columns; null if none judged."
    )
    threshold: float = Field(description="MAESTRO_MONITORING_DATASET_DRIFT_SHARE.")
    judged_columns: int
    drifted_columns: int
    any_drift_corrected: bool = Field(
        description="Some column drifted by its distance, or some test stays significant after a Bonferroni "
        "correction (p < 0.05 / number of tests)."
    )


class DriftReferenceRef(BaseModel):
    source: ReferenceSource | Literal["override"]
    dataset_file_id: str | None = None
    reference_start: datetime | None = None
    reference_end: datetime | None = None
    rows: int | None = None


class DriftRead(BaseModel):
    deployment_id: str
    start: datetime
    end: datetime
    covered_start: datetime = Field(description="Whole UTC hours are compared: the first hour's start.")
    covered_end: datetime = Field(description="The last hour's end.")
    segment: str | None = Field(
        None,
        description="The segment these figures are of (a value of the segment column); null: all traffic.",
    )
    reference: DriftReferenceRef
    dataset_drift: DatasetDriftRead
    columns: list[ColumnDriftRead] = Field(description="Every input column of the reference, by name.")
    prediction_drift: ColumnDriftRead | None = Field(
        description="The served predictions (`__prediction__`); null when the reference has none."
    )
    probability_drift: list[ColumnDriftRead] = Field(
        description="Each class's probability (traffic references)."
    )
    important_features: list[str] = Field(
        description="The model's most important features, from `feature_importances` in the version's "
        "model_schema or training_metrics; empty when unknown."
    )
    warnings: list[str]


class DriftReportCreate(StrictModel):
    start: datetime | None = Field(None, description="Default: 24 hours before end.")
    end: datetime | None = Field(None, description="Default: now.")


class DriftReportRequested(BaseModel):
    job_id: str
    status: str = Field(examples=["queued"])
    deployment_id: str
    start: datetime
    end: datetime
    status_url: str


class DatasetDriftPoint(BaseModel):
    window_start: datetime
    window_end: datetime
    share_drifted: float | None
    dataset_drift: bool
    judged_columns: int
    drifted_columns: int
    trigger: Literal["scheduled", "requested"]


class ColumnDriftPoint(BaseModel):
    window_start: datetime
    window_end: datetime
    test: DriftTest
    statistic: float | None
    p_value: float | None
    threshold: float | None
    verdict: Verdict
    drifted: bool
    n_current: int


class ColumnDriftSeries(BaseModel):
    column: str
    points: list[ColumnDriftPoint]


class DriftHistory(BaseModel):
    deployment_id: str
    start: datetime
    end: datetime
    segment: str | None = Field(
        None,
        description="The segment these figures are of (a value of the segment column); null: all traffic.",
    )
    dataset: list[DatasetDriftPoint] = Field(description="One point per stored report, oldest first.")
    columns: list[ColumnDriftSeries] = Field(description="One series per column (or only `column`).")


# --- segments ----------------------------------------------------------------------------
class SegmentSet(StrictModel):
    column: ColumnName | None = Field(
        description="One of the deployed version's input columns; null to stop segmenting.",
        examples=["support_calls"],
    )


class SegmentRead(BaseModel):
    deployment_id: str
    column: str | None = Field(description="The segment column; null when none is set.")
    values: list[str] = Field(
        description="The values kept apart (at most 10, fixed as traffic is folded), as text: a number in "
        "its shortest form, a missing value as `__null__`."
    )
    segments: list[str] = Field(
        description="What `segment` may name in a query: the values, then `__other__` (every other value)."
    )
    since: datetime | None = Field(description="When the column was set: earlier traffic is in no segment.")
