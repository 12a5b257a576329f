"""Monitoring routes: a deployment's performance over time, and the ground truth sent
for its predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.api.params import DeploymentId, utc_query
from maestro.monitoring import service
from maestro.monitoring.schemas import Granularity, GroundTruthBody, GroundTruthResult, MonitoringMetrics

router = APIRouter(prefix="/api/v1", tags=["monitoring"])


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
) -> Envelope[MonitoringMetrics]:
    """Latency percentiles (ms), throughput (requests/s), error rate and counts over the
    window and per interval, from every serving process's per-minute counts (a minute is
    counted once it is over); accuracy and the other quality figures (``quality``) come
    from the labels sent to ``…/monitoring/ground-truth``, counted in the minute of the
    prediction, and are null without them. At most 10,000 points per series."""
    return Envelope(
        data=service.metrics(
            session,
            principal,
            deployment_id,
            start=utc_query(start, "start"),
            end=utc_query(end, "end"),
            granularity=granularity,
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
