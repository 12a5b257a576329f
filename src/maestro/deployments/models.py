"""Tables of deployments and inference: deployments, the history of which version each
served, each deployment's own event log, the prediction log monitoring reads, the
per-minute request aggregates behind ``…/metrics``, and the one-row generation counter
that tells every serving process a deployment changed somewhere."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class Environment(StrEnum):
    development = "development"
    staging = "staging"
    production = "production"


class DeploymentStatus(StrEnum):
    active = "active"  # serving
    inactive = "inactive"  # stopped by its owners; answers 503 until activated again
    failed = "failed"  # its version is gone (deleted from the registry)


class InstanceType(StrEnum):
    small = "small"
    medium = "medium"
    large = "large"
    xlarge = "xlarge"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warn = "warn"
    error = "error"


LEVEL_RANK = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3}


class Deployment(IdMixin, TimestampMixin, Base):
    """A model version served under a name unique within its organisation."""

    __tablename__ = "deployments"
    id_prefix = "deploy"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    environment: Mapped[str] = mapped_column(String(20), default=Environment.development)
    status: Mapped[str] = mapped_column(String(20), default=DeploymentStatus.active)
    # Null once the version (or its model) is deleted from the registry.
    model_id: Mapped[str | None] = mapped_column(ForeignKey("registered_models.id", ondelete="SET NULL"))
    model_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    instance_type: Mapped[str] = mapped_column(String(20), default=InstanceType.small)
    min_instances: Mapped[int] = mapped_column(default=1)
    max_instances: Mapped[int] = mapped_column(default=1)
    auto_scaling: Mapped[bool] = mapped_column(default=False)
    # Environment variable values shown masked; the values themselves are sealed below.
    deployment_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    env_vars_encrypted: Mapped[str | None] = mapped_column(Text)  # Fernet (deployment_secrets)
    # What answers, as the deploying process loaded it (the runtime's describe()).
    serving: Mapped[dict[str, Any] | None]
    deployed_at: Mapped[datetime | None]
    last_request_at: Mapped[datetime | None]
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("organization_id", "name"),
        Index("ix_deployments_project_id_created_at", "project_id", "created_at"),
        Index("ix_deployments_model_version_id", "model_version_id"),
    )


class DeploymentRevision(IdMixin, Base):
    """One change of the version a deployment serves: which, who, why and when."""

    __tablename__ = "deployment_revisions"
    id_prefix = "deprev"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(20))  # created, deployed, rolled_back
    model_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    version: Mapped[str] = mapped_column(String(50))  # kept when the version row is deleted
    previous_version_id: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(2000))
    actor_type: Mapped[str] = mapped_column(String(20))  # user or api_key
    actor_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_deployment_revisions_deployment_id_created_at", "deployment_id", "created_at"),
    )


class DeploymentEvent(IdMixin, Base):
    """A line of a deployment's own log: lifecycle changes, load failures, request errors."""

    __tablename__ = "deployment_events"
    id_prefix = "dlog"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(10))
    event: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(String(2000))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_deployment_events_deployment_id_created_at", "deployment_id", "created_at"),)


class PredictionLog(IdMixin, Base):
    """A served request (sampled): what came in, what went out, how long it took.
    An answered request keeps its rows in ``payload``: the feature names, predictions
    and class names as a small JSON header, the input matrix and the probabilities as
    raw float64 (``payloads``), a third of the bytes of JSON and no formatting per
    number for the writer. Logs written before it hold JSON ``inputs`` (``{"columns":
    [...], "rows": [[...]]}``, or earlier a list of records) and ``outputs`` (the
    response's answers) instead; ``predictions.logged_predictions`` reads every form
    alike. A failed request has neither, only ``error``. The rows are cut to the first
    ``MAX_LOGGED_ROWS``; ``row_count`` is the request's real size."""

    __tablename__ = "prediction_logs"
    id_prefix = "pred"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    model_version_id: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(128))
    inputs: Mapped[list[Any] | None]
    outputs: Mapped[list[Any] | None]
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    row_count: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float]
    status_code: Mapped[int]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_prediction_logs_deployment_id_created_at", "deployment_id", "created_at"),)


class DeploymentMinute(IdMixin, Base):
    """Requests of one minute as one serving process counted them. A process writes a
    minute once it is over (and what it holds at shutdown), so a minute may have one row
    per process; readers add them up. ``latency_buckets`` counts requests per bucket of
    ``metrics.LATENCY_BUCKETS`` (the last one unbounded), so percentiles merge."""

    __tablename__ = "deployment_minutes"
    id_prefix = "dmin"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    minute: Mapped[datetime]
    request_count: Mapped[int] = mapped_column(BigInteger, default=0)
    error_count: Mapped[int] = mapped_column(BigInteger, default=0)
    prediction_count: Mapped[int] = mapped_column(BigInteger, default=0)  # rows predicted
    latency_sum_ms: Mapped[float] = mapped_column(default=0.0)
    latency_max_ms: Mapped[float] = mapped_column(default=0.0)
    latency_buckets: Mapped[list[Any]] = mapped_column(default=list)

    __table_args__ = (Index("ix_deployment_minutes_deployment_id_minute", "deployment_id", "minute"),)


class ServingGeneration(Base):
    """One row counting deployment changes; serving processes poll it to notice changes
    made by other processes without reading every deployment."""

    __tablename__ = "serving_generation"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
