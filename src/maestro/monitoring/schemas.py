"""Monitoring's bodies: a deployment's performance over a window and per interval, and
the ground truth (true labels) sent for its logged predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints

from maestro.schemas import StrictModel

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
