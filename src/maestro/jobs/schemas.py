from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from maestro.jobs.models import JobStatus


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["job_01jd8x6q2v0000000000000000"])
    kind: str = Field(examples=["maintenance.cleanup"])
    status: JobStatus
    organization_id: str | None = None
    project_id: str | None = None
    progress: float = Field(ge=0, le=1, description="Fraction done, from 0 to 1.")
    message: str | None = Field(None, description="What the job is doing now, or why it was requeued.")
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
