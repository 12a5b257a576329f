from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from maestro.api.deps import SessionDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.jobs import service
from maestro.jobs.schemas import JobRead

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(max_length=64, description="The job's id.")]


@router.get("/{job_id}", response_model=Envelope[JobRead], responses=error_responses(401, 404, 422))
def get_job(job_id: JobId, session: SessionDep) -> Envelope[JobRead]:
    """Status, progress and result of a background job."""
    return Envelope(data=JobRead.model_validate(service.get_job(session, job_id)))
