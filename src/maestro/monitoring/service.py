"""A deployment's monitored quantities, named once: alert rules call ``quantity`` with a
name from ``QUANTITIES``, and ``GET …/monitoring/metrics`` shows the same figures over a
window and per interval. Request figures come from the per-minute counters serving
writes (``deployments.reading.request_totals``); a minute counts in the window its start
lies in. Accuracy and the other quality figures come from ground truth (labels sent for
logged predictions, ``ground_truth``), counted in the minute of the prediction. Drift
quantities follow a pattern rather than fixed names (``reports.DRIFT_QUANTITIES``):
``dataset_drift_share`` and ``drift.<column>``, computed by ``monitoring.reports``.

With a ``segment`` (a value of the deployment's segment column, ``segments``), the
quality and drift figures are that segment's; the request figures (counts, error rate,
throughput, latency) come from per-minute counters that know no segments, and stay the
whole deployment's."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from maestro.db import utcnow
from maestro.deployments import reading
from maestro.deployments.models import Deployment
from maestro.deployments.service import NO_SUCH_DEPLOYMENT
from maestro.errors import NotFound, ValidationFailed
from maestro.identity.rbac import Action, Principal
from maestro.monitoring import ground_truth, reports, segments
from maestro.monitoring.quality import QUALITY_QUANTITIES, Figures
from maestro.monitoring.reference import version_features
from maestro.monitoring.schemas import (
    CurrentMetrics,
    Granularity,
    GroundTruthBody,
    GroundTruthResult,
    MetricsPoint,
    MonitoringMetrics,
    QualityMetrics,
    SegmentRead,
    SegmentSet,
)
from maestro.projects import service as projects_service

GRANULARITY_SECONDS: dict[Granularity, int] = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_POINTS = 300  # the default granularity keeps a series at most this long
MAX_POINTS = 10_000

Measure = Callable[[reading.RequestTotals, float], int | float | None]


def _from_requests(name: str) -> Measure:
    return lambda totals, seconds: totals.values([name], seconds)[name]


# Every quantity of a window of ``seconds`` from its added-up requests.
_MEASURES: dict[str, Measure] = {
    "request_count": _from_requests("request_count"),
    "error_count": _from_requests("error_count"),
    "prediction_count": _from_requests("prediction_count"),
    "throughput_rps": lambda totals, seconds: totals.values(["throughput"], seconds)["throughput"] or 0.0,
    "error_rate": _from_requests("error_rate"),
    "latency_p50": _from_requests("latency_p50"),
    "latency_p95": _from_requests("latency_p95"),
    "latency_p99": _from_requests("latency_p99"),
}
# Request figures, then the quality figures from ground truth (``quality``).
QUANTITIES: tuple[str, ...] = (*_MEASURES, *QUALITY_QUANTITIES)


def _measured(totals: reading.RequestTotals, seconds: float) -> dict[str, int | float | None]:
    return {name: measure(totals, seconds) for name, measure in _MEASURES.items()}


def _deployment(
    session: Session, principal: Principal | None, deployment_id: str, action: Action = "read"
) -> Deployment:
    """The deployment, once ``principal`` may read (or ``action``) its project's
    monitoring (the same roles as for deployments; an API key needs ``monitoring:
    read``, or ``write`` to send labels); another tenant's answers like an unknown one.
    Without a principal, as the platform's own evaluations read it."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    if principal is not None:
        project = projects_service.get_project(session, deployment.project_id)
        projects_service.authorize_in_project(
            session, principal, "monitoring", action, project, missing=NO_SUCH_DEPLOYMENT
        )
    return deployment


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ordered(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise ValidationFailed("start must be before end", details=[("start", "not before end")])
    return start, end


def quantity(
    session: Session,
    principal: Principal | None,
    deployment_id: str,
    name: str,
    start: datetime,
    end: datetime,
    *,
    segment: str | None = None,
) -> float | None:
    """One named quantity of the deployment over [start, end); None where it is
    undefined (rates and latencies without requests, quality without labels or for the
    other kind of model, drift without reference data). With ``segment``, quality and
    drift are that segment's; request figures are the whole deployment's."""
    if reports.is_drift_quantity(name):
        return reports.drift_quantity(session, principal, deployment_id, name, start, end, segment=segment)
    measure = _MEASURES.get(name)
    if measure is None and name not in QUALITY_QUANTITIES:
        raise ValidationFailed(
            f"Unknown monitored quantity {name!r}; known: "
            f"{', '.join((*QUANTITIES, *reports.DRIFT_QUANTITIES))}",
            details=[("name", "unknown quantity")],
        )
    start, end = _ordered(start, end)
    deployment = _deployment(session, principal, deployment_id)
    key = segments.checked_segment(session, deployment.id, segment)
    if measure is None:
        value = ground_truth.quality_figures(session, deployment.id, start, end, segment=key)[0][name]
    else:
        overall, _ = reading.request_totals(session, deployment.id, start=start, end=end)
        value = measure(overall, (end - start).total_seconds())
    return None if value is None else float(value)


def _with_quality(measured: dict[str, int | float | None], figures: Figures) -> dict[str, object]:
    quality = QualityMetrics.model_validate(figures)
    return {**measured, "accuracy": figures["accuracy"], "quality": quality}


def _default_granularity(seconds: float) -> Granularity:
    for name, step in GRANULARITY_SECONDS.items():
        if math.ceil(seconds / step) + 1 <= DEFAULT_POINTS:
            return name
    return "1d"


def metrics(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    granularity: Granularity | None = None,
    segment: str | None = None,
) -> MonitoringMetrics:
    """The quantities over the window (by default the last 24 hours) and per interval
    aligned to the granularity in UTC, each interval counting only its part inside the
    window; the granularity by default keeps the series within ``DEFAULT_POINTS``. With
    ``segment``, the quality figures are that segment's."""
    end = _utc(end) if end is not None else utcnow()
    start = _utc(start) if start is not None else end - DEFAULT_WINDOW
    start, end = _ordered(start, end)
    window = (end - start).total_seconds()
    granularity = granularity or _default_granularity(window)
    step = GRANULARITY_SECONDS[granularity]
    first = math.floor(start.timestamp() / step) * step
    points = math.ceil((end.timestamp() - first) / step)
    if points > MAX_POINTS:
        raise ValidationFailed(
            f"At most {MAX_POINTS} points per series; this window has {points} at {granularity}: "
            "choose a coarser granularity or a shorter window",
            details=[("granularity", f"{points} points of {granularity}, more than {MAX_POINTS}")],
        )
    deployment = _deployment(session, principal, deployment_id)
    key = segments.checked_segment(session, deployment.id, segment)
    overall, intervals = reading.request_totals(session, deployment.id, start=start, end=end, step=step)
    quality, quality_intervals = ground_truth.quality_figures(
        session, deployment.id, start, end, first=first, step=step, segment=key
    )
    empty = reading.RequestTotals()
    series = []
    for index in range(points):
        opens = first + index * step
        inside = min(end.timestamp(), opens + step) - max(start.timestamp(), opens)
        measured = _with_quality(_measured(intervals.get(index, empty), inside), quality_intervals[index])
        series.append(
            MetricsPoint.model_validate({**measured, "timestamp": datetime.fromtimestamp(opens, UTC)})
        )
    return MonitoringMetrics(
        start=start,
        end=end,
        granularity=granularity,
        segment=key or None,
        current_metrics=CurrentMetrics.model_validate(_with_quality(_measured(overall, window), quality)),
        time_series=series,
    )


def send_labels(
    session: Session, principal: Principal, deployment_id: str, body: GroundTruthBody
) -> GroundTruthResult:
    """Join true labels to the deployment's logged predictions (``monitoring: write``)."""
    deployment = _deployment(session, principal, deployment_id, "write")
    return ground_truth.record_labels(session, deployment.id, body.items)


# --- the segment column ----------------------------------------------------------------------
def _segment_read(session: Session, deployment_id: str) -> SegmentRead:
    found = segments.segmenting(session, deployment_id)
    if found is None:
        return SegmentRead(deployment_id=deployment_id, column=None, values=[], segments=[], since=None)
    return SegmentRead(
        deployment_id=deployment_id,
        column=found.column,
        values=list(found.values),
        segments=list(found.known),
        since=found.since,
    )


def get_segment(session: Session, principal: Principal, deployment_id: str) -> SegmentRead:
    deployment = _deployment(session, principal, deployment_id)
    return _segment_read(session, deployment.id)


def set_segment(session: Session, principal: Principal, deployment_id: str, body: SegmentSet) -> SegmentRead:
    """Name the input column whose values segment the deployment's monitoring (or none);
    422 for a column the deployed version does not take (``monitoring: write``)."""
    deployment = _deployment(session, principal, deployment_id, "write")
    if body.column is not None:
        features = version_features(session, deployment) or []
        if body.column not in features:
            known = ", ".join(features) if features else "none declared"
            raise ValidationFailed(
                f"{body.column[:100]!r} is not an input column of the deployed version; known: {known}"[
                    :1000
                ],
                details=[("column", f"known: {known}"[:1000])],
            )
    segments.set_column(session, deployment.id, body.column)
    return _segment_read(session, deployment.id)
