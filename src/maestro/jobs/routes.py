from __future__ import annotations

from fastapi import APIRouter

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope
from maestro.api.errors import error_responses
from maestro.api.params import JobId
from maestro.errors import NotFound
from maestro.identity.rbac import Target, authorize
from maestro.jobs import service
from maestro.jobs.schemas import JobRead
from maestro.projects.models import Project

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=Envelope[JobRead], responses=error_responses(401, 403, 404, 422))
def get_job(job_id: JobId, principal: CurrentPrincipal, session: SessionDep) -> Envelope[JobRead]:
    """Status, progress and result of a background job of your organisation."""
    job = service.get_job(session, job_id)
    if job.organization_id is None:  # a system job: operators read it with `maestro jobs show`
        raise NotFound("No such job")
    project = session.get(Project, job.project_id) if job.project_id else None
    authorize(session, principal, "read", Target("jobs", job.organization_id, project), missing="No such job")
    return Envelope(data=JobRead.model_validate(job))
