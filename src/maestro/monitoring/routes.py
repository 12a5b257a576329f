"""Monitoring routes: a deployment's performance over time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.api.params import DeploymentId, utc_query
from maestro.monitoring import service
from maestro.monitoring.schemas import Granularity, MonitoringMetrics

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
    counted once it is over); accuracy comes from ground truth and is null until labels
    exist. At most 10,000 points per series."""
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
