"""Tables of experiment tracking: experiments with their tags, runs with their
parameters and tags, metric history with a latest-value table, and run artifacts.

The tables hold MLflow's tracking model without loss, so the MLflow REST facade
maps onto them directly: experiment names are unique per project and experiments
and runs have a lifecycle (active or deleted) beside a run's status; run times
are epoch milliseconds; parameters are immutable strings; metric values are
doubles where NULL stands for NaN (SQLite cannot store NaN, so both databases
store it the same way), and ±infinity is stored as such.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Double, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class ExperimentStatus(StrEnum):
    created = "created"  # no runs yet
    running = "running"
    completed = "completed"
    failed = "failed"


class RunStatus(StrEnum):
    scheduled = "scheduled"
    running = "running"
    completed = "completed"  # MLflow's FINISHED
    failed = "failed"
    killed = "killed"


ENDED_STATUSES = frozenset({RunStatus.completed, RunStatus.failed, RunStatus.killed})


class Lifecycle(StrEnum):
    active = "active"
    deleted = "deleted"  # MLflow's soft delete; the native API deletes for good


class ArtifactType(StrEnum):
    plot = "plot"
    model = "model"
    data = "data"
    other = "other"


class Experiment(IdMixin, TimestampMixin, Base):
    """A named set of runs in a project. ``status`` follows the runs (kept up to date
    whenever one starts, ends or is added); ``config`` is free JSON, such as a
    parameter grid and the ``primary_metric`` that picks the best run."""

    __tablename__ = "experiments"
    id_prefix = "exp"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str | None] = mapped_column(String(2000))
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("registered_models.id", ondelete="SET NULL"), index=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    owner: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default=ExperimentStatus.created)
    lifecycle_stage: Mapped[str] = mapped_column(String(20), default=Lifecycle.active)
    artifact_location: Mapped[str | None] = mapped_column(String(1000))
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index("ix_experiments_project_id_created_at", "project_id", "created_at"),
    )


class ExperimentTag(Base):
    __tablename__ = "experiment_tags"

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(5000), default="")


class Run(IdMixin, Base):
    __tablename__ = "runs"
    id_prefix = "run"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(250), default="")
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.running)
    start_time: Mapped[int | None] = mapped_column(BigInteger)  # epoch milliseconds
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    user_name: Mapped[str | None] = mapped_column(String(320))  # MLflow's user_id: who ran it, as text
    artifact_uri: Mapped[str | None] = mapped_column(String(1000))
    lifecycle_stage: Mapped[str] = mapped_column(String(20), default=Lifecycle.active)
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_runs_experiment_id_created_at", "experiment_id", "created_at"),
        Index("ix_runs_experiment_id_start_time", "experiment_id", "start_time"),
    )


class RunParam(Base):
    """A parameter: logged once; the same value again is accepted, another is refused."""

    __tablename__ = "run_params"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(6000))


class RunTag(Base):
    __tablename__ = "run_tags"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(8000), default="")


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); it is 64 bits there too.
MetricPointId = BigInteger().with_variant(Integer(), "sqlite")


class MetricPoint(Base):
    """One logged value of a metric. Written in bulk (see ``tracking.metrics``),
    never as ORM objects; the index keeps a history query a range scan."""

    __tablename__ = "run_metrics"

    id: Mapped[int] = mapped_column(MetricPointId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float | None] = mapped_column(Double())  # NULL: NaN
    timestamp: Mapped[int] = mapped_column(BigInteger)  # epoch milliseconds
    step: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_run_metrics_run_id_key_step", "run_id", "key", "step"),)


class LatestMetric(Base):
    """The value at the highest (step, timestamp) of each metric of a run, upserted in
    the same transaction as the points; what search, comparison and best run read."""

    __tablename__ = "run_latest_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    value: Mapped[float | None] = mapped_column(Double())  # NULL: NaN
    timestamp: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_run_latest_metrics_experiment_id_key_value", "experiment_id", "key", "value"),
    )


class RunArtifact(IdMixin, Base):
    """A file logged for a run. ``path`` (such as ``plots/roc.png``) is what the user
    calls it, validated and kept as metadata; the file lives under a generated key."""

    __tablename__ = "run_artifacts"
    id_prefix = "artifact"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1000))
    artifact_type: Mapped[str] = mapped_column(String(20), default=ArtifactType.other)
    description: Mapped[str | None] = mapped_column(String(2000))
    storage_key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(100))  # as sent; downloads are octet-stream
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "path"),)
