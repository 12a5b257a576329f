"""Times, messages, and loading experiments and runs with the access check (``authorize``
with the kind ``experiments``): another tenant's answer exactly like missing ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound, ValidationFailed
from maestro.identity.models import User
from maestro.identity.rbac import Action, Principal, ProjectScope, Target, authorize
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.registry.models import RegisteredModel
from maestro.tracking.models import (
    Experiment,
    Lifecycle,
    Run,
)

# --- times and names ----------------------------------------------------------------------
NO_EXPERIMENT = "No such experiment"
NO_RUN = "No such run in this experiment"
NO_ARTIFACT = "No such artifact of this run"
DUPLICATE_NAME = "An experiment with this name already exists in the project"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Metric names that are better when lower, for the best run when no direction is configured.
LOWER_IS_BETTER = ("loss", "error", "mse", "rmse", "mae", "mape", "perplexity", "latency", "cost")
RECENT_RUNS = 100


def to_datetime(ms: int | None) -> datetime | None:
    """Epoch milliseconds as a datetime; None for none, or for a time no datetime can
    hold (MLflow clients may send any 64-bit number)."""
    if ms is None:
        return None
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return None


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def check_time(moment: datetime | None, field: str) -> int | None:
    if moment is None:
        return None
    ms = to_ms(moment)
    if not 0 <= ms <= 253_402_300_799_999:
        raise ValidationFailed("Invalid time", details=[(field, "must lie between 1970 and 9999")])
    return ms


# --- loading and access --------------------------------------------------------------------
def authorize_experiments(
    session: Session,
    principal: Principal,
    action: Action,
    project: ProjectScope,
    *,
    missing: str | None = None,
) -> None:
    authorize(
        session, principal, action, Target("experiments", project.organization_id, project), missing=missing
    )


def get_project_for_experiments(
    session: Session, principal: Principal, project_id: str, action: Action
) -> Project:
    project = projects_service.get_project(session, project_id)
    authorize_experiments(session, principal, action, project)
    return project


def get_visible_experiment(
    session: Session, principal: Principal, experiment_id: str, action: Action
) -> Experiment:
    """The experiment, once ``principal`` may perform ``action`` on it (404 when invisible)."""
    row = session.execute(
        select(Experiment, Project)
        .join(Project, Project.id == Experiment.project_id)
        .where(Experiment.id == experiment_id)
    ).first()
    if row is None:
        raise NotFound(NO_EXPERIMENT)
    experiment, project = row
    authorize_experiments(session, principal, action, project, missing=NO_EXPERIMENT)
    return experiment


def get_visible_run(
    session: Session, principal: Principal, experiment_id: str, run_id: str, action: Action
) -> tuple[Experiment, Run]:
    """The run of a visible experiment, in one query when both exist."""
    row = session.execute(
        select(Experiment, Project, Run)
        .join(Project, Project.id == Experiment.project_id)
        .join(Run, Run.experiment_id == Experiment.id)
        .where(Experiment.id == experiment_id, Run.id == run_id)
    ).first()
    if row is None:
        get_visible_experiment(session, principal, experiment_id, action)  # the experiment's 404 first
        raise NotFound(NO_RUN)
    experiment, project, run = row
    authorize_experiments(session, principal, action, project, missing=NO_EXPERIMENT)
    return experiment, run


def writable_run(
    session: Session, principal: Principal, experiment_id: str, run_id: str
) -> tuple[Experiment, Run]:
    experiment, run = get_visible_run(session, principal, experiment_id, run_id, "write")
    if run.lifecycle_stage != Lifecycle.active:
        raise Conflict("This run is deleted; restore it before logging to it")
    return experiment, run


def check_model(session: Session, project: Project, model_id: str | None) -> None:
    if model_id is None:
        return
    found = session.scalar(
        select(RegisteredModel.id).where(
            RegisteredModel.id == model_id, RegisteredModel.project_id == project.id
        )
    )
    if found is None:
        raise ValidationFailed(
            "The model must belong to the experiment's project",
            details=[("model_id", "no such model in this project")],
        )


def caller_name(session: Session, principal: Principal) -> str | None:
    if principal.user_id is None:
        return None
    user = session.get(User, principal.user_id)
    return user.email if user is not None else None
