from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


FINISHED_STATUSES = (JobStatus.succeeded, JobStatus.failed)


class Job(IdMixin, TimestampMixin, Base):
    __tablename__ = "jobs"
    id_prefix = "job"

    kind: Mapped[str] = mapped_column(String(100))
    # Jobs submitted for a tenant belong to its organisation (and project); system
    # jobs such as maintenance have neither and are visible to operators only.
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    created_by_id: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str | None] = mapped_column(String(500))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    worker: Mapped[str | None] = mapped_column(String(200))
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
        Index("ix_jobs_kind_created_at", "kind", "created_at"),
    )
