"""Monitoring routes: a deployment's performance over time, the ground truth sent for its
predictions, its reference data, and drift against it (now, on request as a job, and the
stored history)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, QueueDep, SessionDep, SettingsDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.api.heavy import HeavyDep, owners_of
from maestro.api.params import DeploymentId, utc_query
from maestro.monitoring import reference, reports, service
from maestro.monitoring.models import SEGMENT_MAX_LENGTH
from maestro.monitoring.schemas import (
    DriftHistory,
    DriftRead,
    DriftReportCreate,
    DriftReportRequested,
    Granularity,
    GroundTruthBody,
    GroundTruthResult,
    MonitoringMetrics,
    ReferenceRead,
    ReferenceSet,
    SegmentRead,
    SegmentSet,
)

router = APIRouter(prefix="/api/v1", tags=["monitoring"])

SegmentQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=SEGMENT_MAX_LENGTH,
        description="One segment (a value of the segment column, or `__other__`) instead of all traffic.",
    ),
]


@router.get(
    "/deployments/{deployment_id}/monitoring/metrics",
    response_model=Envelope[MonitoringMetrics],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_monitoring_metrics(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    start: Annotated[
        datetime | None, Query(description="Start (ISO 8601); default 24 hours before end.")
    ] = None,
    end: Annotated[datetime | None, Query(description="End (ISO 8601), excluded; default now.")] = None,
    granularity: Annotated[
        Granularity | None,
        Query(description="Interval of the series; by default the finest that keeps it within 300 points."),
    ] = None,
    segment: SegmentQuery = None,
) -> Envelope[MonitoringMetrics]:
    """Latency percentiles (ms), throughput (requests/s), error rate and counts over the
    window and per interval, from every serving process's per-minute counts (a minute is
    counted once it is over); accuracy and the other quality figures (``quality``) come
    from the labels sent to ``…/monitoring/ground-truth``, counted in the minute of the
    prediction, and are null without them. At most 10,000 points per series. With
    `segment`, the quality figures are that segment's; the request figures stay the
    whole deployment's."""
    return Envelope(
        data=service.metrics(
            session,
            principal,
            deployment_id,
            start=utc_query(start, "start"),
            end=utc_query(end, "end"),
            granularity=granularity,
            segment=segment,
        )
    )


@router.post(
    "/deployments/{deployment_id}/monitoring/ground-truth",
    response_model=Envelope[GroundTruthResult],
    responses=error_responses(401, 403, 404, 422, 429),
)
def post_ground_truth(
    deployment_id: DeploymentId, body: GroundTruthBody, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[GroundTruthResult]:
    """True labels for logged predictions, by the ``prediction_id`` an inference answer
    carried and the row of its request (default 0); at most 10,000 per request. Each is
    joined to what that row predicted and counted in the minute of the prediction; a
    label sent again for the same row replaces the one before (within one body, the last
    wins). Ids not logged for this deployment come back in ``unknown``; a label that does
    not fit the model (not a number for a regressor, not one of the classifier's
    classes) refuses the whole body with 422, naming the item. Needs ``monitoring:
    write`` (a developer of the project)."""
    return Envelope(data=service.send_labels(session, principal, deployment_id, body))


@router.get(
    "/deployments/{deployment_id}/monitoring/reference",
    response_model=Envelope[ReferenceRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_monitoring_reference(
    deployment_id: DeploymentId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ReferenceRead]:
    """The deployment's reference data and its status (`none` until one is set); once
    `ready`, the profiled columns."""
    return Envelope(data=reference.get_reference(session, principal, deployment_id))


@router.put(
    "/deployments/{deployment_id}/monitoring/reference",
    status_code=202,
    response_model=Envelope[ReferenceRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def set_monitoring_reference(
    deployment_id: DeploymentId,
    body: ReferenceSet,
    principal: CurrentPrincipal,
    session: SessionDep,
    queue: QueueDep,
) -> Envelope[ReferenceRead]:
    """Set what the deployment's traffic is compared with: a dataset of its project
    (`dataset_file_id`, optionally with the `prediction_column`), the training data its
    deployed version's model card names (`training_data: true`), or a window of its own
    traffic (`reference_start`, `reference_end`). A job profiles it once (follow
    `job_id`, or this resource's `status`); it replaces any reference set before."""
    return Envelope(data=reference.set_reference(session, principal, queue, deployment_id, body))


@router.get(
    "/deployments/{deployment_id}/monitoring/drift",
    response_model=Envelope[DriftRead],
    responses=error_responses(401, 403, 404, 409, 422, 429, 503),
)
def get_monitoring_drift(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    heavy: HeavyDep,
    start: Annotated[
        datetime | None, Query(description="Start (ISO 8601); default 24 hours before end.")
    ] = None,
    end: Annotated[datetime | None, Query(description="End (ISO 8601), excluded; default now.")] = None,
    reference_start: Annotated[
        datetime | None,
        Query(description="Compare with this window of traffic instead of the reference data."),
    ] = None,
    reference_end: Annotated[datetime | None, Query(description="End of that window, excluded.")] = None,
    segment: SegmentQuery = None,
) -> Envelope[DriftRead]:
    """Per input column: the test, statistic, p-value or distance, threshold, verdict,
    null-rate change and unseen-category rate; the predictions' drift; and the dataset's
    (share of drifted columns against the threshold). Whole UTC hours are compared;
    windows of at most 92 days. 409 while the deployment has no reference data ready.
    With `segment`, that segment's traffic is compared with the whole reference (or with
    the segment's traffic in the reference window)."""
    with heavy.slot(owners_of(principal)):  # merging a long window's hours takes seconds of CPU
        found = reports.drift(
            session,
            principal,
            deployment_id,
            threshold=settings.monitoring_dataset_drift_share,
            start=utc_query(start, "start"),
            end=utc_query(end, "end"),
            reference_start=utc_query(reference_start, "reference_start"),
            reference_end=utc_query(reference_end, "reference_end"),
            segment=segment,
        )
    return Envelope(data=found)


@router.post(
    "/deployments/{deployment_id}/monitoring/drift",
    status_code=202,
    response_model=Envelope[DriftReportRequested],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def request_monitoring_drift_report(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    queue: QueueDep,
    body: DriftReportCreate | None = None,
) -> Envelope[DriftReportRequested]:
    """Compute and store a drift report of the window (default: the last 24 hours) as a
    job; follow it at `GET /api/v1/jobs/{job_id}`, and find the report in the history."""
    return Envelope(data=reports.request_report(session, principal, queue, deployment_id, body))


@router.get(
    "/deployments/{deployment_id}/monitoring/drift/history",
    response_model=Envelope[DriftHistory],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_monitoring_drift_history(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    start: Annotated[
        datetime | None, Query(description="Start (ISO 8601); default 7 days before end.")
    ] = None,
    end: Annotated[datetime | None, Query(description="End (ISO 8601), excluded; default now.")] = None,
    column: Annotated[
        str | None, Query(min_length=1, max_length=300, description="Only this column's series.")
    ] = None,
    segment: SegmentQuery = None,
) -> Envelope[DriftHistory]:
    """The stored drift reports whose windows start in the window, oldest first: one
    series for the dataset and one per column. At most 2,000 reports."""
    return Envelope(
        data=reports.history(
            session,
            principal,
            deployment_id,
            start=utc_query(start, "start"),
            end=utc_query(end, "end"),
            column=column,
            segment=segment,
        )
    )


@router.get(
    "/deployments/{deployment_id}/monitoring/segment",
    response_model=Envelope[SegmentRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_monitoring_segment(
    deployment_id: DeploymentId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[SegmentRead]:
    """The deployment's segment column (null when none), the values kept apart so far,
    and the segments a query may name."""
    return Envelope(data=service.get_segment(session, principal, deployment_id))


@router.put(
    "/deployments/{deployment_id}/monitoring/segment",
    response_model=Envelope[SegmentRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def set_monitoring_segment(
    deployment_id: DeploymentId, body: SegmentSet, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[SegmentRead]:
    """Name one of the deployed version's input columns (`{"column": …}`, null for none)
    whose values segment the deployment's profiles, quality and drift from now on: its
    10 most frequent values, fixed as traffic is folded, and `__other__`. Setting another
    column, or none, discards the per-segment data kept so far. Needs `monitoring: write`."""
    return Envelope(data=service.set_segment(session, principal, deployment_id, body))
