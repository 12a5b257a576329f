"""Reading deployments: their details and listings, history, log, and request metrics
over time from the per-minute counters."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Select, func, or_, select
from sqlalchemy.orm import Session

from maestro.api.request_metrics import LATENCY_BUCKETS_MS
from maestro.db import (
    utcnow,
)
from maestro.deployments.models import (
    LEVEL_RANK,
    Deployment,
    DeploymentEvent,
    DeploymentMinute,
    DeploymentRevision,
    DeploymentStatus,
    Environment,
    InstanceType,
    LogLevel,
)
from maestro.deployments.schemas import (
    METRIC_NAMES,
    Actor,
    ActorType,
    DeploymentDetail,
    DeploymentLogRead,
    DeploymentMetrics,
    DeploymentRead,
    DeploymentRevisionRead,
    Granularity,
    MetricName,
    MetricPoint,
    ModelVersionRef,
    RevisionAction,
)
from maestro.deployments.service import (
    GRANULARITY_SECONDS,
    HISTORY_SHOWN,
    MAX_POINTS,
    config_read,
    get_deployment,
)
from maestro.deployments.state import ServingState
from maestro.errors import ValidationFailed
from maestro.identity.actors import actors
from maestro.identity.rbac import Principal
from maestro.projects.models import Project
from maestro.registry.models import ModelVersion, RegisteredModel


# --- reading -----------------------------------------------------------------------------------
def effective_status(deployment: Deployment) -> DeploymentStatus:
    if deployment.model_version_id is None:
        return DeploymentStatus.failed
    return DeploymentStatus(deployment.status)


def deployments_query(
    project: Project,
    *,
    environment: Environment | None = None,
    status: DeploymentStatus | None = None,
    model_id: str | None = None,
) -> Select[Deployment]:
    statement = select(Deployment).where(Deployment.project_id == project.id)
    if environment is not None:
        statement = statement.where(Deployment.environment == environment)
    if status is DeploymentStatus.failed:
        statement = statement.where(
            or_(Deployment.model_version_id.is_(None), Deployment.status == DeploymentStatus.failed)
        )
    elif status is not None:
        statement = statement.where(Deployment.status == status, Deployment.model_version_id.is_not(None))
    if model_id is not None:
        statement = statement.where(Deployment.model_id == model_id)
    return statement


def endpoint_url(public_url: str | None, name: str) -> str:
    path = f"/api/v1/inference/{name}"
    return f"{public_url.rstrip('/')}{path}" if public_url else path


def deployment_reads(
    session: Session, serving: ServingState, rows: Sequence[Deployment]
) -> list[DeploymentRead]:
    """Reads for a page of deployments, with versions, creators and request counts in
    one query each."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    version_ids = {row.model_version_id for row in rows if row.model_version_id}
    versions = {
        version.id: (version, name)
        for version, name in session.execute(
            select(ModelVersion, RegisteredModel.name)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(ModelVersion.id.in_(version_ids))
        )
    }
    since = utcnow() - timedelta(hours=24)
    counts = dict(
        session.execute(
            select(DeploymentMinute.deployment_id, func.sum(DeploymentMinute.request_count))
            .where(DeploymentMinute.deployment_id.in_(ids), DeploymentMinute.minute >= since)
            .group_by(DeploymentMinute.deployment_id)
        ).all()
    )
    # A deployment created with an API key has no creating user; its "created" revision
    # names the key.
    by_key = dict(
        session.execute(
            select(DeploymentRevision.deployment_id, DeploymentRevision.actor_id).where(
                DeploymentRevision.deployment_id.in_([row.id for row in rows if not row.created_by_id]),
                DeploymentRevision.action == "created",
                DeploymentRevision.actor_type == "api_key",
            )
        ).all()
    )
    creators = actors(session, ((row.created_by_id, by_key.get(row.id)) for row in rows))
    public_url = serving.settings.public_url
    reads = []
    for row in rows:
        version_ref = None
        if row.model_version_id in versions:
            version, model_name = versions[row.model_version_id]
            version_ref = ModelVersionRef(
                id=version.id, model_id=version.model_id, model_name=model_name, version=version.version
            )
        status = effective_status(row)
        reads.append(
            DeploymentRead(
                id=row.id,
                name=row.name,
                project_id=row.project_id,
                environment=Environment(row.environment),
                status=status,
                endpoint_url=endpoint_url(public_url, row.name),
                model_version=version_ref,
                instance_type=InstanceType(row.instance_type),
                min_instances=row.min_instances,
                max_instances=row.max_instances,
                current_instances=1 if status is DeploymentStatus.active else 0,
                auto_scaling=row.auto_scaling,
                deployment_config=config_read(row.deployment_config),
                health_status=serving.health(row.model_version_id, status),
                serving=(serving.describe(row.id) if status is DeploymentStatus.active else None)
                or row.serving,
                deployed_at=row.deployed_at,
                last_request_at=row.last_request_at,
                request_count_24h=int(counts.get(row.id) or 0),
                created_by=creators.ref(row.created_by_id, by_key.get(row.id)),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
        )
    return reads


def _actor_ids(revision: DeploymentRevision) -> tuple[str | None, str | None]:
    """(user id, API key id) of a revision's actor."""
    if revision.actor_type == "api_key":
        return None, revision.actor_id
    return revision.actor_id, None


def history(session: Session, deployment: Deployment) -> list[DeploymentRevisionRead]:
    rows = session.execute(
        select(DeploymentRevision, RegisteredModel.id, RegisteredModel.name)
        .outerjoin(ModelVersion, ModelVersion.id == DeploymentRevision.model_version_id)
        .outerjoin(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(DeploymentRevision.deployment_id == deployment.id)
        .order_by(DeploymentRevision.created_at.desc(), DeploymentRevision.id.desc())
        .limit(HISTORY_SHOWN)
    ).all()
    named = actors(session, (_actor_ids(r.DeploymentRevision) for r in rows))
    reads = []
    for revision, model_id, model_name in rows:
        ref = named.ref(*_actor_ids(revision))
        reads.append(
            DeploymentRevisionRead(
                action=cast(RevisionAction, revision.action),
                model_version=ModelVersionRef(
                    id=revision.model_version_id,
                    model_id=model_id,
                    model_name=model_name,
                    version=revision.version,
                ),
                previous_version_id=revision.previous_version_id,
                reason=revision.reason,
                actor=Actor(
                    type=cast(ActorType, revision.actor_type),
                    id=revision.actor_id,
                    name=ref.name if ref is not None else None,
                    prefix=ref.prefix if ref is not None else None,
                ),
                created_at=revision.created_at,
            )
        )
    return reads


def deployment_detail(session: Session, serving: ServingState, deployment: Deployment) -> DeploymentDetail:
    read = deployment_reads(session, serving, [deployment])[0]
    return DeploymentDetail(**read.model_dump(), history=history(session, deployment))


def deployment_logs(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    level: LogLevel | None,
    limit: int,
) -> list[DeploymentLogRead]:
    """The deployment's log, newest first; ``level``: that level and more severe ones."""
    deployment = get_deployment(session, principal, deployment_id, "read")
    statement = select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment.id)
    if since is not None:
        statement = statement.where(DeploymentEvent.created_at >= since)
    if until is not None:
        statement = statement.where(DeploymentEvent.created_at <= until)
    if level is not None:
        levels = [str(name) for name, rank in LEVEL_RANK.items() if rank >= LEVEL_RANK[level]]
        statement = statement.where(DeploymentEvent.level.in_(levels))
    rows = session.scalars(
        statement.order_by(DeploymentEvent.created_at.desc(), DeploymentEvent.id.desc()).limit(limit)
    )
    return [
        DeploymentLogRead(
            id=row.id,
            timestamp=row.created_at,
            level=LogLevel(row.level),
            event=row.event,
            message=row.message,
            details=row.details or {},
        )
        for row in rows
    ]


# --- metrics -------------------------------------------------------------------------------------
class RequestTotals:
    """Requests of any number of per-minute rows added up; latency percentiles merge
    through the shared histogram buckets."""

    __slots__ = ("buckets", "errors", "latency_max", "latency_sum", "predictions", "requests")

    def __init__(self) -> None:
        self.requests = self.errors = self.predictions = 0
        self.latency_sum = self.latency_max = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def add(self, row: Row[Any]) -> None:
        self.requests += row.request_count
        self.errors += row.error_count
        self.predictions += row.prediction_count
        self.latency_sum += row.latency_sum_ms
        self.latency_max = max(self.latency_max, row.latency_max_ms)
        for index, count in enumerate((row.latency_buckets or [])[: len(self.buckets)]):
            self.buckets[index] += int(count)

    def percentile(self, q: float) -> float | None:
        """Interpolated within the histogram bucket that holds it, as Prometheus does;
        never more than the slowest request seen."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank, seen = q * total, 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0.0
                if index >= len(LATENCY_BUCKETS_MS):
                    return round(self.latency_max, 3)
                high = LATENCY_BUCKETS_MS[index]
                value = low + (high - low) * (rank - seen) / count
                return round(min(value, self.latency_max), 3)
            seen += count
        return round(self.latency_max, 3)  # pragma: no cover - the loop always returns

    def values(self, names: Sequence[str], seconds: float) -> dict[str, int | float | None]:
        known = self.requests > 0
        every: dict[str, int | float | None] = {
            "request_count": self.requests,
            "error_count": self.errors,
            "error_rate": round(self.errors / self.requests, 6) if known else None,
            "prediction_count": self.predictions,
            "latency_mean": round(self.latency_sum / self.requests, 3) if known else None,
            "latency_p50": self.percentile(0.50),
            "latency_p95": self.percentile(0.95),
            "latency_p99": self.percentile(0.99),
            "latency_max": round(self.latency_max, 3) if known else None,
            "throughput": round(self.requests / seconds, 6) if seconds > 0 else None,
        }
        return {name: every[name] for name in names}


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


_MINUTE_COLUMNS = (
    DeploymentMinute.minute,
    DeploymentMinute.request_count,
    DeploymentMinute.error_count,
    DeploymentMinute.prediction_count,
    DeploymentMinute.latency_sum_ms,
    DeploymentMinute.latency_max_ms,
    DeploymentMinute.latency_buckets,
)
_STREAMED_ROWS = 2000


def request_totals(
    session: Session, deployment_id: str, *, start: datetime, end: datetime, step: int | None = None
) -> tuple[RequestTotals, dict[int, RequestTotals]]:
    """The deployment's requests in the minutes that start in [start, end), every
    process's rows added up: over the whole window and, given ``step`` (seconds), per
    interval aligned to multiples of it in UTC, keyed by the interval's index from the
    one holding ``start`` (empty ones absent). Rows are streamed, so memory grows with
    the intervals asked for, never with the minutes read."""
    rows = session.execute(
        select(*_MINUTE_COLUMNS)
        .where(
            DeploymentMinute.deployment_id == deployment_id,
            DeploymentMinute.minute >= start,
            DeploymentMinute.minute < end,
        )
        .execution_options(yield_per=_STREAMED_ROWS)
    )
    overall = RequestTotals()
    intervals: dict[int, RequestTotals] = defaultdict(RequestTotals)
    first = math.floor(_epoch(start) / step) * step if step else 0.0
    for row in rows:
        overall.add(row)
        if step:
            intervals[int((_epoch(row.minute) - first) // step)].add(row)
    return overall, dict(intervals)


def deployment_metrics(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    names: Sequence[MetricName] | None,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity,
) -> DeploymentMetrics:
    """Request metrics per interval, from the minutes every process wrote; intervals
    are aligned to multiples of the granularity (UTC), empty ones included."""
    deployment = get_deployment(session, principal, deployment_id, "read")
    step = GRANULARITY_SECONDS[granularity]
    chosen = list(dict.fromkeys(names)) if names else list(METRIC_NAMES)
    end_at = _epoch(end) if end is not None else utcnow().timestamp()
    start_at = _epoch(start) if start is not None else end_at - 60 * step
    if start_at >= end_at:
        raise ValidationFailed(
            "start_time must be before end_time", details=[("start_time", "not before end_time")]
        )
    first = math.floor(start_at / step) * step
    points = math.ceil((end_at - first) / step)
    if points > MAX_POINTS:
        raise ValidationFailed(
            f"At most {MAX_POINTS} intervals per request; widen the granularity or narrow the window",
            details=[("granularity", f"{points} intervals of {granularity}")],
        )
    window_start = datetime.fromtimestamp(first, UTC)
    window_end = datetime.fromtimestamp(end_at, UTC)
    overall, intervals = request_totals(session, deployment.id, start=window_start, end=window_end, step=step)
    series = [
        MetricPoint(
            timestamp=datetime.fromtimestamp(first + index * step, UTC),
            values=intervals.get(index, RequestTotals()).values(chosen, step),
        )
        for index in range(points)
    ]
    return DeploymentMetrics(
        deployment_id=deployment.id,
        granularity=granularity,
        start_time=window_start,
        end_time=window_end,
        metrics=chosen,
        series=series,
        totals=overall.values(chosen, end_at - first),
    )
