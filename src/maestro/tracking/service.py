"""Experiments, runs, parameters, tags, metrics, artifacts, search, comparison and the
best run. Access follows the experiment's project (``authorize`` with the kind
``experiments``), so project roles and visibility apply as they do to models; an
experiment or run another tenant owns answers exactly like a missing one.

An experiment's ``status`` is derived from its active runs and stored, so lists can
filter on it: ``created`` until it has a run, then ``running`` while any run is
scheduled or running, else ``completed`` if at least one run completed, else
``failed``. It is recomputed, under a lock on the experiment row, whenever a run
is added or changes status. Only an experiment without runs takes a status set by
hand (the tracker API's update).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, delete, func, or_, select, tuple_
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound, ValidationFailed
from maestro.api.pagination import TokenError, decode_token, encode_token
from maestro.db import flush_unique, run_after_commit, run_after_rollback, utcnow
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.models import User
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.registry.models import RegisteredModel
from maestro.schemas import find_invisible, invisible_message
from maestro.storage import ArtifactStore, StoredObject, delete_after_commit
from maestro.tracking import metrics as metric_store
from maestro.tracking import search
from maestro.tracking.models import (
    ENDED_STATUSES,
    ArtifactType,
    Experiment,
    ExperimentStatus,
    ExperimentTag,
    LatestMetric,
    Lifecycle,
    Run,
    RunArtifact,
    RunParam,
    RunStatus,
    RunTag,
)
from maestro.tracking.schemas import (
    MAX_COMPARED_RUNS,
    ArtifactRead,
    BestRunRead,
    BestRunSummary,
    ComparedRun,
    Direction,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentRead,
    ExperimentUpdate,
    MetricIn,
    RunComparison,
    RunCreate,
    RunRead,
    RunSearch,
    RunStatusUpdate,
    RunSummary,
    TrackedExperimentCreate,
    metric_value,
)

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


def _check_time(moment: datetime | None, field: str) -> int | None:
    if moment is None:
        return None
    ms = to_ms(moment)
    if not 0 <= ms <= 253_402_300_799_999:
        raise ValidationFailed("Invalid time", details=[(field, "must lie between 1970 and 9999")])
    return ms


# --- loading and access --------------------------------------------------------------------
def authorize_experiments(
    session: Session, principal: Principal, action: Action, project: Project, *, missing: str | None = None
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


def _writable_run(
    session: Session, principal: Principal, experiment_id: str, run_id: str
) -> tuple[Experiment, Run]:
    experiment, run = get_visible_run(session, principal, experiment_id, run_id, "write")
    if run.lifecycle_stage != Lifecycle.active:
        raise Conflict("This run is deleted; restore it before logging to it")
    return experiment, run


def _check_model(session: Session, project: Project, model_id: str | None) -> None:
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


def _caller_name(session: Session, principal: Principal) -> str | None:
    if principal.user_id is None:
        return None
    user = session.get(User, principal.user_id)
    return user.email if user is not None else None


# --- experiments: reading ------------------------------------------------------------------
def experiments_query(
    project: Project,
    *,
    status: ExperimentStatus | None = None,
    model_id: str | None = None,
    created_by: str | None = None,
    owner: str | None = None,
    search_text: str | None = None,
) -> Select[tuple[Experiment]]:
    statement = select(Experiment).where(
        Experiment.project_id == project.id, Experiment.lifecycle_stage == Lifecycle.active
    )
    return _filtered(
        statement,
        status=status,
        model_id=model_id,
        created_by=created_by,
        owner=owner,
        search_text=search_text,
    )


def _filtered(
    statement: Select[tuple[Experiment]],
    *,
    status: ExperimentStatus | None,
    model_id: str | None,
    created_by: str | None,
    owner: str | None,
    search_text: str | None,
) -> Select[tuple[Experiment]]:
    if status is not None:
        statement = statement.where(Experiment.status == status)
    if model_id is not None:
        statement = statement.where(Experiment.model_id == model_id)
    if created_by is not None:
        statement = statement.where(Experiment.created_by_id == created_by)
    if owner is not None:
        statement = statement.where(Experiment.owner == owner)
    if search_text:
        statement = statement.where(
            or_(
                Experiment.name.icontains(search_text, autoescape=True),
                Experiment.description.icontains(search_text, autoescape=True),
            )
        )
    return statement


def list_project_experiments(
    session: Session,
    principal: Principal,
    project_id: str,
    *,
    status: ExperimentStatus | None,
    model_id: str | None,
    created_by: str | None,
    search_text: str | None,
) -> Select[tuple[Experiment]]:
    project = get_project_for_experiments(session, principal, project_id, "read")
    _check_model(session, project, model_id)
    return experiments_query(
        project, status=status, model_id=model_id, created_by=created_by, search_text=search_text
    )


def readable_experiments(
    session: Session,
    principal: Principal,
    *,
    project_id: str | None,
    owner: str | None,
    status: ExperimentStatus | None,
    search_text: str | None,
) -> Select[tuple[Experiment]]:
    """Experiments of every project the caller may read in the organisation the request
    acts in (an API key's own organisation; for a person, their current one)."""
    organization_id = principal.organization_id
    if project_id is not None:
        project = get_project_for_experiments(session, principal, project_id, "read")
        statement = select(Experiment).where(Experiment.project_id == project.id)
    elif organization_id is None:
        statement = select(Experiment).where(Experiment.id.is_(None))
    elif principal.kind == "api_key":
        authorize(session, principal, "read", Target("experiments", organization_id))
        statement = select(Experiment).where(Experiment.organization_id == organization_id)
    else:
        projects = projects_service.visible_projects(session, principal, organization_id)
        statement = select(Experiment).where(
            Experiment.project_id.in_(projects.with_only_columns(Project.id).scalar_subquery())
        )
    statement = statement.where(Experiment.lifecycle_stage == Lifecycle.active)
    return _filtered(
        statement, status=status, model_id=None, created_by=None, owner=owner, search_text=search_text
    )


def _primary_metric(config: dict[str, Any]) -> tuple[str | None, Direction | None]:
    metric = config.get("primary_metric")
    direction = config.get("primary_metric_direction")
    return (
        metric if isinstance(metric, str) and metric else None,
        direction if direction in ("max", "min") else None,
    )


def default_direction(metric: str) -> Direction:
    lowered = metric.lower()
    return "min" if any(word in lowered for word in LOWER_IS_BETTER) else "max"


def _active_runs_of(experiment_ids: Sequence[str]) -> Select[tuple[str]]:
    return select(Run.id).where(
        Run.experiment_id.in_(experiment_ids), Run.lifecycle_stage == Lifecycle.active
    )


def _best_runs(
    session: Session, experiments: Sequence[Experiment]
) -> dict[str, tuple[str, Direction, str, float]]:
    """experiment id → (metric, direction, run id, value) of each experiment's best run:
    three queries for a whole page, whatever its size."""
    if not experiments:
        return {}
    choices: dict[str, tuple[str | None, Direction | None]] = {
        experiment.id: _primary_metric(experiment.config or {}) for experiment in experiments
    }
    unset = [experiment_id for experiment_id, (metric, _) in choices.items() if metric is None]
    if unset:
        for experiment_id, key in session.execute(
            select(LatestMetric.experiment_id, func.min(LatestMetric.key))
            .where(LatestMetric.experiment_id.in_(unset))
            .group_by(LatestMetric.experiment_id)
        ):
            choices[experiment_id] = (key, None)
    wanted = {
        experiment_id: (metric, direction or default_direction(metric))
        for experiment_id, (metric, direction) in choices.items()
        if metric is not None
    }
    if not wanted:
        return {}
    minimised = [experiment_id for experiment_id, (_, direction) in wanted.items() if direction == "min"]
    score = case((LatestMetric.experiment_id.in_(minimised), LatestMetric.value), else_=-LatestMetric.value)
    ranked = (
        select(
            LatestMetric.experiment_id,
            LatestMetric.run_id,
            LatestMetric.value,
            func.row_number()
            .over(partition_by=LatestMetric.experiment_id, order_by=(score, LatestMetric.run_id))
            .label("position"),
        )
        .join(Run, Run.id == LatestMetric.run_id)
        .where(
            tuple_(LatestMetric.experiment_id, LatestMetric.key).in_(
                [(experiment_id, metric) for experiment_id, (metric, _) in wanted.items()]
            ),
            LatestMetric.value.is_not(None),
            Run.lifecycle_stage == Lifecycle.active,
        )
        .subquery()
    )
    best = {}
    for experiment_id, run_id, value in session.execute(
        select(ranked.c.experiment_id, ranked.c.run_id, ranked.c.value).where(ranked.c.position == 1)
    ):
        metric, direction = wanted[experiment_id]
        best[experiment_id] = (metric, direction, run_id, value)
    return best


def experiment_reads(session: Session, experiments: Sequence[Experiment]) -> list[ExperimentRead]:
    """Read models for a page of experiments: run counts and times, best runs, tags and
    creators in a fixed number of queries."""
    ids = [experiment.id for experiment in experiments]
    if not ids:
        return []
    running = case((Run.status.in_((RunStatus.running, RunStatus.scheduled)), 1), else_=0)
    aggregates = {
        row.experiment_id: row
        for row in session.execute(
            select(
                Run.experiment_id,
                func.count().label("runs"),
                func.min(Run.start_time).label("started"),
                func.max(Run.end_time).label("ended"),
                func.sum(running).label("running"),
            )
            .where(Run.experiment_id.in_(ids), Run.lifecycle_stage == Lifecycle.active)
            .group_by(Run.experiment_id)
        )
    }
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for experiment_id, key, value in session.execute(
        select(ExperimentTag.experiment_id, ExperimentTag.key, ExperimentTag.value)
        .where(ExperimentTag.experiment_id.in_(ids))
        .order_by(ExperimentTag.key)
    ):
        tags[experiment_id][key] = value
    best = _best_runs(session, experiments)
    best_ids = [run_id for _, _, run_id, _ in best.values()]
    best_metrics = metric_store.latest_by_run(session, best_ids)
    best_names = {
        run_id: name for run_id, name in session.execute(select(Run.id, Run.name).where(Run.id.in_(best_ids)))
    }
    creators = users_by_id(session, (experiment.created_by_id for experiment in experiments))

    reads = []
    for experiment in experiments:
        aggregate = aggregates.get(experiment.id)
        started = to_datetime(aggregate.started) if aggregate else None
        completed = to_datetime(aggregate.ended) if aggregate and not aggregate.running else None
        best_run = None
        if experiment.id in best:
            metric, direction, run_id, value = best[experiment.id]
            best_run = BestRunSummary(
                id=run_id,
                run_name=best_names.get(run_id, ""),
                metric=metric,
                direction=direction,
                value=metric_value(value),
                metrics={key: metric_value(latest.value) for key, latest in best_metrics[run_id].items()},
            )
        reads.append(
            ExperimentRead(
                id=experiment.id,
                project_id=experiment.project_id,
                name=experiment.name,
                description=experiment.description,
                status=ExperimentStatus(experiment.status),
                model_id=experiment.model_id,
                config=experiment.config or {},
                owner=experiment.owner,
                tags=tags.get(experiment.id, {}),
                lifecycle_stage=Lifecycle(experiment.lifecycle_stage),
                run_count=aggregate.runs if aggregate else 0,
                best_run=best_run,
                created_by=user_ref(creators.get(experiment.created_by_id or "")),
                started_at=started,
                completed_at=completed,
                duration_seconds=(completed - started).total_seconds() if started and completed else None,
                created_at=experiment.created_at,
                updated_at=experiment.updated_at,
            )
        )
    return reads


def experiment_detail(session: Session, experiment: Experiment) -> ExperimentDetail:
    read = experiment_reads(session, [experiment])[0]
    recent = session.scalars(
        select(Run)
        .where(Run.experiment_id == experiment.id, Run.lifecycle_stage == Lifecycle.active)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(RECENT_RUNS)
    )
    return ExperimentDetail(
        **read.model_dump(),
        runs=[
            RunSummary(
                id=run.id,
                run_name=run.name,
                status=RunStatus(run.status),
                started_at=to_datetime(run.start_time),
                ended_at=to_datetime(run.end_time),
            )
            for run in recent
        ],
    )


# --- experiments: changing -----------------------------------------------------------------
def _ensure_unique_name(session: Session, project_id: str, name: str, *, but: str | None = None) -> None:
    clash = select(Experiment.id).where(Experiment.project_id == project_id, Experiment.name == name)
    if but is not None:
        clash = clash.where(Experiment.id != but)
    if session.scalar(clash.limit(1)) is not None:
        raise Conflict(DUPLICATE_NAME, details=[("name", "already used in this project")])


def _flush_unique(session: Session) -> None:
    flush_unique(session, Conflict(DUPLICATE_NAME, details=[("name", "already used in this project")]))


def create_experiment(
    session: Session, principal: Principal, project_id: str, body: ExperimentCreate | TrackedExperimentCreate
) -> Experiment:
    project = get_project_for_experiments(session, principal, project_id, "write")
    _check_model(session, project, body.model_id)
    _ensure_unique_name(session, project.id, body.name)
    owner = getattr(body, "owner", None) or _caller_name(session, principal)
    experiment = Experiment(
        organization_id=project.organization_id,
        project_id=project.id,
        name=body.name,
        description=body.description or None,
        model_id=body.model_id,
        config=body.config,
        owner=owner,
        status=ExperimentStatus.created,
        lifecycle_stage=Lifecycle.active,
        created_by_id=principal.user_id,
    )
    session.add(experiment)
    _flush_unique(session)
    tags = getattr(body, "tags", {})
    session.add_all(
        ExperimentTag(experiment_id=experiment.id, key=key, value=value) for key, value in tags.items()
    )
    session.flush()
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        project_id=project.id,
        name=experiment.name,
    )
    return experiment


def update_experiment(
    session: Session, principal: Principal, experiment_id: str, body: ExperimentUpdate
) -> Experiment:
    experiment = get_visible_experiment(session, principal, experiment_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != experiment.name:
        _ensure_unique_name(session, experiment.project_id, changes["name"], but=experiment.id)
        experiment.name = changes["name"]
    if "description" in changes:
        experiment.description = changes["description"] or None
    if "model_id" in changes:
        project = projects_service.get_project(session, experiment.project_id)
        _check_model(session, project, changes["model_id"])
        experiment.model_id = changes["model_id"]
    if "config" in changes:
        experiment.config = changes["config"]
    if "owner" in changes:
        experiment.owner = changes["owner"]
    if "status" in changes and changes["status"] != experiment.status:
        has_runs = session.scalar(_active_runs_of([experiment.id]).limit(1))
        if has_runs is not None:
            raise Conflict(
                "This experiment's status follows its runs",
                details=[("status", "can be set only on an experiment without runs")],
            )
        experiment.status = changes["status"]
    if changes:
        experiment.updated_at = utcnow()
    _flush_unique(session)
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        changed=sorted(changes),
    )
    return experiment


def delete_experiment(
    session: Session, principal: Principal, experiment_id: str, store: ArtifactStore
) -> None:
    """Delete an experiment with its runs and everything logged to them (the rows
    cascade); artifact and logged-model files are removed once the deletion has committed."""
    experiment = get_visible_experiment(session, principal, experiment_id, "delete")
    keys = projects_service.stored_keys(session, experiment_id=experiment.id)
    runs = (
        session.scalar(select(func.count()).select_from(Run).where(Run.experiment_id == experiment.id)) or 0
    )
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        project_id=experiment.project_id,
        name=experiment.name,
        runs=runs,
        artifacts=len(keys),
    )
    session.delete(experiment)
    session.flush()
    delete_after_commit(session, store, keys)


def refresh_status(session: Session, experiment: Experiment) -> None:
    """Derive the experiment's status from its active runs, holding the experiment's
    row so concurrent run changes cannot leave a stale status behind."""
    session.execute(select(Experiment.id).where(Experiment.id == experiment.id).with_for_update())
    counts = dict(
        session.execute(
            select(Run.status, func.count())
            .where(Run.experiment_id == experiment.id, Run.lifecycle_stage == Lifecycle.active)
            .group_by(Run.status)
        ).all()
    )
    if not counts:
        status = (
            experiment.status if experiment.status != ExperimentStatus.running else ExperimentStatus.created
        )
    elif counts.get(RunStatus.running) or counts.get(RunStatus.scheduled):
        status = ExperimentStatus.running
    elif counts.get(RunStatus.completed):
        status = ExperimentStatus.completed
    else:
        status = ExperimentStatus.failed
    if status != experiment.status:
        experiment.status = status
        experiment.updated_at = utcnow()


def set_experiment_lifecycle(session: Session, experiment: Experiment, stage: Lifecycle) -> None:
    """Delete an experiment softly, or restore it (MLflow's delete and restore): its rows
    stay, and Maestro's own API lists active experiments only."""
    if experiment.lifecycle_stage != stage:
        experiment.lifecycle_stage = stage
        experiment.updated_at = utcnow()
        session.flush()


def set_experiment_tag(session: Session, experiment: Experiment, key: str, value: str) -> None:
    """Set one tag of an experiment, adding it or replacing its value."""
    tag = session.get(ExperimentTag, (experiment.id, key))
    if tag is None:
        session.add(ExperimentTag(experiment_id=experiment.id, key=key, value=value))
    else:
        tag.value = value
    experiment.updated_at = utcnow()
    flush_unique(session, Conflict("This tag was set at the same time; try again"))


def delete_experiment_tag(session: Session, experiment: Experiment, key: str) -> bool:
    """Remove one tag of an experiment; False when it has none by that key."""
    tag = session.get(ExperimentTag, (experiment.id, key))
    if tag is None:
        return False
    session.delete(tag)
    session.flush()
    return True


# --- runs ----------------------------------------------------------------------------------
def runs_query(experiment: Experiment, status: RunStatus | None) -> Select[tuple[Run]]:
    statement = select(Run).where(Run.experiment_id == experiment.id, Run.lifecycle_stage == Lifecycle.active)
    if status is not None:
        statement = statement.where(Run.status == status)
    return statement


def _duration(run: Run) -> float | None:
    if run.start_time is None or run.end_time is None:
        return None
    return (run.end_time - run.start_time) / 1000


def run_reads(session: Session, runs: Sequence[Run]) -> list[RunRead]:
    """Read models for a page of runs: parameters, tags, latest metrics and creators in
    one query each."""
    ids = [run.id for run in runs]
    if not ids:
        return []
    params: dict[str, dict[str, str]] = defaultdict(dict)
    for run_id, key, value in session.execute(
        select(RunParam.run_id, RunParam.key, RunParam.value)
        .where(RunParam.run_id.in_(ids))
        .order_by(RunParam.key)
    ):
        params[run_id][key] = value
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for run_id, key, value in session.execute(
        select(RunTag.run_id, RunTag.key, RunTag.value).where(RunTag.run_id.in_(ids)).order_by(RunTag.key)
    ):
        tags[run_id][key] = value
    latest = metric_store.latest_by_run(session, ids)
    creators = users_by_id(session, (run.created_by_id for run in runs))
    return [
        RunRead(
            id=run.id,
            experiment_id=run.experiment_id,
            run_name=run.name,
            status=RunStatus(run.status),
            started_at=to_datetime(run.start_time),
            ended_at=to_datetime(run.end_time),
            duration_seconds=_duration(run),
            user=run.user_name,
            created_by=user_ref(creators.get(run.created_by_id or "")),
            lifecycle_stage=Lifecycle(run.lifecycle_stage),
            params=params.get(run.id, {}),
            tags=tags.get(run.id, {}),
            metrics={key: metric_value(value.value) for key, value in latest[run.id].items()},
            created_at=run.created_at,
        )
        for run in runs
    ]


def run_read(session: Session, run: Run) -> RunRead:
    return run_reads(session, [run])[0]


def create_run(session: Session, principal: Principal, experiment_id: str, body: RunCreate) -> Run:
    experiment = get_visible_experiment(session, principal, experiment_id, "write")
    if experiment.lifecycle_stage != Lifecycle.active:
        raise Conflict("This experiment is deleted; restore it before adding runs")
    start = _check_time(body.start_time, "start_time")
    if body.status == RunStatus.running and start is None:
        start = metric_store.now_ms()
    name = body.run_name
    if not name:
        count = (
            session.scalar(select(func.count()).select_from(Run).where(Run.experiment_id == experiment.id))
            or 0
        )
        name = f"run_{count + 1:03d}"
    run = Run(
        experiment_id=experiment.id,
        organization_id=experiment.organization_id,
        name=name,
        status=body.status,
        start_time=start,
        user_name=_caller_name(session, principal),
        lifecycle_stage=Lifecycle.active,
        created_by_id=principal.user_id,
    )
    session.add(run)
    session.flush()
    session.add_all(RunParam(run_id=run.id, key=key, value=value) for key, value in body.parameters.items())
    session.add_all(RunTag(run_id=run.id, key=key, value=value) for key, value in body.tags.items())
    session.flush()
    refresh_status(session, experiment)
    session.flush()
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        run_name=run.name,
        status=run.status,
        params=len(body.parameters),
    )
    return run


def change_run_status(
    session: Session, principal: Principal, experiment_id: str, run_id: str, body: RunStatusUpdate
) -> Run:
    """Move a run along scheduled → running → completed, failed or killed. Setting the
    status it already has changes nothing; an ended run stays ended (409)."""
    experiment, run = get_visible_run(session, principal, experiment_id, run_id, "write")
    previous = RunStatus(run.status)
    target = body.status
    if target == previous:
        return run
    if previous in ENDED_STATUSES:
        raise Conflict(
            f"This run has already ended ({previous})",
            details=[("status", f"an ended run cannot become {target}")],
        )
    if target == RunStatus.scheduled:
        raise Conflict("A started run cannot be scheduled again", details=[("status", "the run is running")])
    now = metric_store.now_ms()
    if target == RunStatus.running:
        run.start_time = run.start_time or now
    else:
        end = _check_time(body.end_time, "end_time") or now
        if run.start_time is not None and end < run.start_time:
            raise ValidationFailed("Invalid time", details=[("end_time", "before the run started")])
        run.end_time = end
    run.status = target
    session.flush()
    refresh_status(session, experiment)
    session.flush()
    if target in (RunStatus.completed, RunStatus.failed):
        latest = metric_store.latest_by_run(session, [run.id])[run.id]
        events.record(
            session,
            run.organization_id,
            f"run.{target}",
            {
                "run_id": run.id,
                "run_name": run.name,
                "experiment_id": experiment.id,
                "project_id": experiment.project_id,
                "status": str(target),
                "started_at": _iso(run.start_time),
                "ended_at": _iso(run.end_time),
                "duration_seconds": _duration(run),
                "metrics": {key: metric_value(value.value) for key, value in latest.items()},
            },
        )
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        from_status=str(previous),
        to_status=str(target),
    )
    return run


def _iso(ms: int | None) -> str | None:
    moment = to_datetime(ms)
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def reopen_run(session: Session, experiment: Experiment, run: Run) -> None:
    """An ended run running again, with no end time (MLflow lets a client resume a run
    it ended, and end it anew); the experiment's status follows."""
    run.status = RunStatus.running
    run.end_time = None
    session.flush()
    refresh_status(session, experiment)
    audit.describe(
        session, resource_type="runs", resource_id=run.id, organization_id=run.organization_id, reopened=True
    )


def resume_or_change_run_status(
    session: Session,
    principal: Principal,
    experiment: Experiment,
    run: Run,
    target: RunStatus,
    end_time: datetime | None,
) -> None:
    """A status change as MLflow's clients make them: an ended run asked for another
    status is first reopened (``reopen_run``), a run may be put back to scheduled, and
    every other change follows ``change_run_status`` (its end time, events and audit)."""
    current = RunStatus(run.status)
    if current in ENDED_STATUSES and target != current:
        reopen_run(session, experiment, run)
    if target == RunStatus(run.status):
        return
    if target == RunStatus.scheduled:
        run.status = RunStatus.scheduled
        session.flush()
        return
    change_run_status(
        session, principal, experiment.id, run.id, RunStatusUpdate(status=target, end_time=end_time)
    )


def set_run_lifecycle(session: Session, experiment: Experiment, run: Run, stage: Lifecycle) -> None:
    """Delete a run softly, or restore it; the experiment's status counts active runs only."""
    if run.lifecycle_stage != stage:
        run.lifecycle_stage = stage
        session.flush()
        refresh_status(session, experiment)


def rename_run(session: Session, run: Run, name: str, *, name_tag: str | None = None) -> bool:
    """Give a run a new name, also written to the tag ``name_tag`` when one is named (the
    tag MLflow keeps a run's name in); False when the name is already the run's."""
    if name == run.name:
        return False
    run.name = name
    if name_tag is not None:
        set_run_tag(session, run, name_tag, name)
    session.flush()
    return True


def set_run_tag(session: Session, run: Run, key: str, value: str) -> None:
    """Set one tag of a run the caller may already write, adding or replacing it."""
    tag = session.get(RunTag, (run.id, key))
    if tag is None:
        session.add(RunTag(run_id=run.id, key=key, value=value))
    else:
        tag.value = value
    session.flush()


def delete_run_tag(session: Session, run: Run, key: str) -> bool:
    """Remove one tag of a run; False when it has none by that key."""
    tag = session.get(RunTag, (run.id, key))
    if tag is None:
        return False
    session.delete(tag)
    session.flush()
    return True


def log_metric_points(session: Session, run: Any, points: Sequence[Any]) -> list[str]:
    """Store metric points of a run the caller may write (``tracking.metrics.log_points``:
    one bulk insert, the latest values kept up to date); the names logged."""
    return metric_store.log_points(session, run, points)


def log_params(
    session: Session, principal: Principal, experiment_id: str, run_id: str, params: dict[str, str]
) -> list[str]:
    """Log parameters; each is set once: the same value again is accepted, a different
    one refused (409) and nothing of the request is stored."""
    experiment, run = _writable_run(session, principal, experiment_id, run_id)
    existing = dict(
        session.execute(
            select(RunParam.key, RunParam.value).where(
                RunParam.run_id == run.id, RunParam.key.in_(list(params))
            )
        ).all()
    )
    changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
    if changed:
        raise Conflict(
            "Parameters cannot change once logged",
            details=[
                (f"params.{key}", f"already logged with another value: {existing[key][:100]!r}")
                for key in changed
            ],
        )
    session.add_all(
        RunParam(run_id=run.id, key=key, value=value) for key, value in params.items() if key not in existing
    )
    flush_unique(session, Conflict("These parameters were logged at the same time; try again"))
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        params=sorted(params)[:50],
    )
    return sorted(params)


def set_tags(
    session: Session, principal: Principal, experiment_id: str, run_id: str, tags: dict[str, str]
) -> list[str]:
    """Set tags on a run, adding new ones and replacing the values of existing ones."""
    experiment, run = _writable_run(session, principal, experiment_id, run_id)
    existing = {
        tag.key: tag
        for tag in session.scalars(select(RunTag).where(RunTag.run_id == run.id, RunTag.key.in_(list(tags))))
    }
    for key, value in tags.items():
        if key in existing:
            existing[key].value = value
        else:
            session.add(RunTag(run_id=run.id, key=key, value=value))
    flush_unique(session, Conflict("These tags were set at the same time; try again"))
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        tags=sorted(tags)[:50],
    )
    return sorted(tags)


def log_metrics(
    session: Session,
    principal: Principal,
    experiment_id: str,
    run_id: str,
    points: Sequence[MetricIn],
    *,
    max_batch: int,
) -> list[str]:
    if len(points) > max_batch:
        raise ValidationFailed(
            f"At most {max_batch} metric points per request",
            details=[("metrics", f"{len(points)} points sent")],
        )
    experiment, run = _writable_run(session, principal, experiment_id, run_id)
    names = metric_store.log_points(session, run, points)
    audit.describe(  # one row per request, not per point
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        points=len(points),
        metrics=names[:50],
        metric_count=len(names),
    )
    return names


# --- artifacts -----------------------------------------------------------------------------
MAX_PATH_LENGTH = 500
MAX_SEGMENT_LENGTH = 255
_DRIVE = re.compile(r"^[A-Za-z]:")


def artifact_path(path: str, field: str = "path") -> str:
    """A user's name for an artifact, checked so it can never be read as a location:
    relative, `/`-separated, no `.` or `..` parts, no backslashes, drive letters or
    control characters. It is metadata only; files live under generated keys."""

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed("Invalid artifact path", details=[(field, message)])

    if not path:
        raise refuse("must not be empty")
    if len(path) > MAX_PATH_LENGTH:
        raise refuse(f"at most {MAX_PATH_LENGTH} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        raise refuse("must not contain control characters")
    if (char := find_invisible(path)) is not None:
        raise refuse(invisible_message(char))
    if "\\" in path:
        raise refuse("must not contain backslashes; separate parts with /")
    if path.startswith("/") or _DRIVE.match(path):
        raise refuse("must be relative")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise refuse("must not contain empty, '.' or '..' parts")
        if len(part) > MAX_SEGMENT_LENGTH:
            raise refuse(f"each part at most {MAX_SEGMENT_LENGTH} characters")
        if part != part.strip():
            raise refuse("parts must not begin or end with spaces")
    return path


def delete_run_artifacts(session: Session, run: Run, paths: Sequence[str]) -> None:
    """Forget a run's artifacts at ``paths``; the caller removes their files once this
    commits (``storage.delete_after_commit``)."""
    if paths:
        session.execute(
            delete(RunArtifact).where(RunArtifact.run_id == run.id, RunArtifact.path.in_(list(paths)))
        )


def artifacts_prefix(experiment: Experiment) -> str:
    return f"runs/{experiment.project_id.lower()}"


def writable_run_for_upload(
    session: Session, principal: Principal, experiment_id: str, run_id: str
) -> tuple[Experiment, Run]:
    return _writable_run(session, principal, experiment_id, run_id)


def record_artifact(
    session: Session,
    principal: Principal,
    experiment_id: str,
    run_id: str,
    *,
    path: str,
    artifact_type: ArtifactType,
    description: str | None,
    stored: StoredObject,
    content_type: str | None,
    store: ArtifactStore,
) -> RunArtifact:
    """Record a stored file as the run's artifact at ``path``; a file already at that
    path is replaced (its old file removed once this commits), as in MLflow."""
    experiment, run = _writable_run(session, principal, experiment_id, run_id)
    artifact = session.scalar(
        select(RunArtifact).where(RunArtifact.run_id == run.id, RunArtifact.path == path)
    )
    replaced = None
    if artifact is None:
        artifact = RunArtifact(run_id=run.id, organization_id=run.organization_id, path=path)
        session.add(artifact)
    else:
        replaced = artifact.storage_key
        artifact.created_at = utcnow()
    artifact.artifact_type = artifact_type
    artifact.description = description
    artifact.storage_key = stored.key
    artifact.size = stored.size
    artifact.sha256 = stored.sha256
    artifact.content_type = content_type
    artifact.created_by_id = principal.user_id
    flush_unique(session, Conflict("An artifact was uploaded to this path at the same time; try again"))
    key = stored.key
    run_after_rollback(session, lambda: store.delete(key))
    if replaced is not None:
        run_after_commit(session, lambda: store.delete(replaced))
    audit.describe(
        session,
        resource_type="run_artifacts",
        resource_id=artifact.id,
        organization_id=run.organization_id,
        experiment_id=experiment.id,
        run_id=run.id,
        path=path,
        artifact_type=str(artifact_type),
        size=stored.size,
        sha256=stored.sha256,
        replaced=replaced is not None or None,
    )
    return artifact


def artifacts_query(run: Run, prefix: str | None) -> Select[tuple[RunArtifact]]:
    statement = select(RunArtifact).where(RunArtifact.run_id == run.id)
    if prefix:
        statement = statement.where(RunArtifact.path.startswith(prefix, autoescape=True))
    return statement


def artifact_reads(session: Session, artifacts: Sequence[RunArtifact]) -> list[ArtifactRead]:
    creators = users_by_id(session, (artifact.created_by_id for artifact in artifacts))
    return [
        ArtifactRead(
            id=artifact.id,
            run_id=artifact.run_id,
            path=artifact.path,
            artifact_type=ArtifactType(artifact.artifact_type),
            description=artifact.description,
            size_bytes=artifact.size,
            sha256=artifact.sha256,
            content_type=artifact.content_type,
            created_by=user_ref(creators.get(artifact.created_by_id or "")),
            created_at=artifact.created_at,
        )
        for artifact in artifacts
    ]


def get_artifact(
    session: Session, principal: Principal, experiment_id: str, run_id: str, artifact_id: str
) -> RunArtifact:
    _, run = get_visible_run(session, principal, experiment_id, run_id, "read")
    artifact = session.scalar(
        select(RunArtifact).where(RunArtifact.id == artifact_id, RunArtifact.run_id == run.id)
    )
    if artifact is None:
        raise NotFound(NO_ARTIFACT)
    return artifact


# --- search --------------------------------------------------------------------------------
def _search_error(exc: search.SearchError, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid {field}: {exc.message} at position {exc.position}",
        details=[(field, f"{exc.message} (position {exc.position})")],
    )


def _fingerprint(experiment_ids: Sequence[str], body: RunSearch) -> str:
    text = json.dumps([sorted(experiment_ids), body.filter, body.order_by, body.run_view_type])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_offset(offset: int, fingerprint: str) -> str:
    return encode_token(["s", offset, fingerprint])


def _decode_offset(cursor: str, fingerprint: str) -> int:
    try:
        _, offset, seen = decode_token(cursor, kind="s", length=3)
        if type(offset) is not int or not 0 <= offset <= 10_000_000 or seen != fingerprint:
            raise TokenError("not a cursor of this search")
        return offset
    except TokenError as exc:
        raise ValidationFailed(
            "The cursor does not belong to this search; start again without it",
            details=[("cursor", "malformed or from a different search")],
        ) from exc


def search_runs(
    session: Session, experiment_ids: Sequence[str], body: RunSearch
) -> tuple[list[Run], int, int, str | None]:
    """(runs of the page, total matching, offset, next cursor): one query, joining the
    latest-metric table for metric filters and orders and counting the matches with a
    window function."""
    if body.cursor is not None and body.page is not None:
        raise ValidationFailed(
            "Use either `cursor` or `page`, not both", details=[("cursor", "cannot be combined with page")]
        )
    try:
        node = search.parse_filter(body.filter)
    except search.SearchError as exc:
        raise _search_error(exc, "filter") from exc
    try:
        order = search.parse_order_by(body.order_by)
    except search.SearchError as exc:
        raise _search_error(exc, "order_by") from exc
    fingerprint = _fingerprint(experiment_ids, body)
    if body.cursor is not None:
        offset = _decode_offset(body.cursor, fingerprint)
    else:
        offset = ((body.page or 1) - 1) * body.limit
    where = _search_where(session, experiment_ids, node, body)
    statement = _search_statement(where, order).offset(offset).limit(body.limit + 1)
    rows = session.execute(statement).all()
    if rows:
        total = rows[0].total
    else:  # past the last page: the window had no rows to count
        total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    runs = [row[0] for row in rows]
    next_cursor = _encode_offset(offset + body.limit, fingerprint) if len(runs) > body.limit else None
    return runs[: body.limit], total, offset, next_cursor


def _search_where(
    session: Session, experiment_ids: Sequence[str], node: search.Node | None, body: RunSearch
) -> list[Any]:
    dialect = session.get_bind().dialect.name
    where = [Run.experiment_id.in_(experiment_ids), search.filter_sql(node, dialect)]
    if body.run_view_type == "active_only":
        where.append(Run.lifecycle_stage == Lifecycle.active)
    elif body.run_view_type == "deleted_only":
        where.append(Run.lifecycle_stage == Lifecycle.deleted)
    return where


def _search_statement(where: Sequence[Any], order: Sequence[search.OrderKey]) -> Select[Any]:
    """One query for a page and the number of matches (a window count)."""
    joins, ordering = search.order_sql(order)
    statement = select(Run, func.count().over().label("total"))
    for alias, on in joins:
        statement = statement.outerjoin(alias, on)
    return statement.where(*where).order_by(*ordering)


def search_statement_for_plan(
    session: Session, experiment_ids: Sequence[str], body: RunSearch
) -> Select[Any]:
    """The page query ``search_runs`` runs, for reading its query plan."""
    node = search.parse_filter(body.filter)
    where = _search_where(session, experiment_ids, node, body)
    return _search_statement(where, search.parse_order_by(body.order_by)).limit(body.limit + 1)


def searchable_experiments(
    session: Session, principal: Principal, project_id: str, experiment_ids: Sequence[str] | None
) -> list[str]:
    """The experiments of a readable project to search: those named (each must be in the
    project, else 422 naming it), or all of them."""
    project = get_project_for_experiments(session, principal, project_id, "read")
    statement = select(Experiment.id).where(Experiment.project_id == project.id)
    if experiment_ids is None:
        return list(session.scalars(statement.where(Experiment.lifecycle_stage == Lifecycle.active)))
    wanted = list(dict.fromkeys(experiment_ids))
    found = set(session.scalars(statement.where(Experiment.id.in_(wanted))))
    missing = [experiment_id for experiment_id in wanted if experiment_id not in found]
    if missing:
        raise ValidationFailed(
            "Every experiment searched must belong to the project",
            details=[
                ("experiment_ids", f"no such experiment in this project: {experiment_id}")
                for experiment_id in missing
            ],
        )
    return wanted


# --- comparison and best run ---------------------------------------------------------------
def compare_runs(
    session: Session, principal: Principal, experiment_id: str, run_ids: Sequence[str] | None
) -> RunComparison:
    """Parameters and latest metrics of runs of one experiment side by side; without
    ``run_ids``, of its most recently created active runs."""
    experiment = get_visible_experiment(session, principal, experiment_id, "read")
    if run_ids is None:
        recent = (
            runs_query(experiment, None)
            .order_by(Run.created_at.desc(), Run.id.desc())
            .limit(MAX_COMPARED_RUNS)
        )
        run_ids = list(session.scalars(recent.with_only_columns(Run.id)))
        if not run_ids:
            return RunComparison(param_keys=[], metric_keys=[], differing_params=[], runs=[])
    wanted = list(dict.fromkeys(run_ids))
    if not 1 <= len(wanted) <= MAX_COMPARED_RUNS:
        raise ValidationFailed(
            f"Compare between 1 and {MAX_COMPARED_RUNS} runs",
            details=[("run_ids", f"{len(wanted)} runs given")],
        )
    runs = {
        run.id: run
        for run in session.scalars(select(Run).where(Run.id.in_(wanted), Run.experiment_id == experiment.id))
    }
    missing = [run_id for run_id in wanted if run_id not in runs]
    if missing:
        raise NotFound(NO_RUN, details=[("run_ids", run_id) for run_id in missing])
    params: dict[str, dict[str, str]] = defaultdict(dict)
    for run_id, key, value in session.execute(
        select(RunParam.run_id, RunParam.key, RunParam.value).where(RunParam.run_id.in_(wanted))
    ):
        params[run_id][key] = value
    latest = metric_store.latest_by_run(session, wanted)
    param_keys = sorted({key for values in params.values() for key in values})
    metric_keys = sorted({key for values in latest.values() for key in values})
    differing = [key for key in param_keys if len({params[run_id].get(key) for run_id in wanted}) > 1]
    return RunComparison(
        param_keys=param_keys,
        metric_keys=metric_keys,
        differing_params=differing,
        runs=[
            ComparedRun(
                id=run_id,
                run_name=runs[run_id].name,
                status=RunStatus(runs[run_id].status),
                params={key: params[run_id].get(key) for key in param_keys},
                metrics={
                    key: metric_value(latest[run_id][key].value) if key in latest[run_id] else None
                    for key in metric_keys
                },
            )
            for run_id in wanted
        ],
    )


def best_run(
    session: Session,
    principal: Principal,
    experiment_id: str,
    metric: str | None,
    direction: Direction | None,
) -> BestRunRead | None:
    """The active run with the highest (or lowest) latest value of ``metric``; by default
    the experiment's ``config.primary_metric`` and its direction, else the first metric
    in alphabetical order, lower-is-better for names such as loss or error."""
    experiment = get_visible_experiment(session, principal, experiment_id, "read")
    configured, configured_direction = _primary_metric(experiment.config or {})
    if metric is None:
        metric = configured or session.scalar(
            select(func.min(LatestMetric.key)).where(LatestMetric.experiment_id == experiment.id)
        )
        if metric is None:
            return None
        direction = direction or (configured_direction if metric == configured else None)
    else:
        metric_store.check_names([metric])
        if metric == configured:
            direction = direction or configured_direction
    direction = direction or default_direction(metric)
    order = LatestMetric.value.desc() if direction == "max" else LatestMetric.value.asc()
    found = session.execute(
        select(Run, LatestMetric.value)
        .join(LatestMetric, LatestMetric.run_id == Run.id)
        .where(
            LatestMetric.experiment_id == experiment.id,
            LatestMetric.key == metric,
            LatestMetric.value.is_not(None),
            Run.lifecycle_stage == Lifecycle.active,
        )
        .order_by(order, Run.id)
        .limit(1)
    ).first()
    if found is None:
        return None
    run, value = found
    return BestRunRead(
        metric=metric, direction=direction, value=metric_value(value), run=run_read(session, run)
    )
