"""Experiments: lists with their best runs, details, creation, changes and deletion;
comparing runs and finding the best one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, case, func, or_, select, tuple_
from sqlalchemy.orm import Session

from maestro.db import UniqueName, flush_unique, utcnow
from maestro.errors import Conflict, NotFound, ValidationFailed
from maestro.identity import audit
from maestro.identity.rbac import Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.projects.sources import stored_keys
from maestro.storage import ArtifactStore, delete_after_commit
from maestro.tracking import metrics as metric_store
from maestro.tracking.access import (
    DUPLICATE_NAME,
    LOWER_IS_BETTER,
    NO_RUN,
    RECENT_RUNS,
    caller_name,
    check_model,
    get_visible_experiment,
    to_datetime,
)
from maestro.tracking.models import (
    Experiment,
    ExperimentStatus,
    ExperimentTag,
    LatestMetric,
    Lifecycle,
    Run,
    RunParam,
    RunStatus,
)
from maestro.tracking.runs import run_read, runs_query
from maestro.tracking.schemas import (
    MAX_COMPARED_RUNS,
    BestRunRead,
    BestRunSummary,
    ComparedRun,
    Direction,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentRead,
    ExperimentUpdate,
    RunComparison,
    RunSummary,
    TrackedExperimentCreate,
    metric_value,
)


# --- experiments: reading ------------------------------------------------------------------
def experiments_query(
    project: Project,
    *,
    status: ExperimentStatus | None = None,
    model_id: str | None = None,
    created_by: str | None = None,
    owner: str | None = None,
    search_text: str | None = None,
) -> Select[Experiment]:
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
    statement: Select[Experiment],
    *,
    status: ExperimentStatus | None,
    model_id: str | None,
    created_by: str | None,
    owner: str | None,
    search_text: str | None,
) -> Select[Experiment]:
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
) -> Select[Experiment]:
    project = projects_service.project_for(session, principal, "experiments", project_id, "read")
    check_model(session, project, model_id)
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
) -> Select[Experiment]:
    """Experiments of every project the caller may read in the organisation the request
    acts in (an API key's own organisation; for a person, their current one)."""
    organization_id = principal.organization_id
    if project_id is not None:
        project = projects_service.project_for(session, principal, "experiments", project_id, "read")
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


def _active_runs_of(experiment_ids: Sequence[str]) -> Select[str]:
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
            metric, direction, run_id, best_value = best[experiment.id]
            best_run = BestRunSummary(
                id=run_id,
                run_name=best_names.get(run_id, ""),
                metric=metric,
                direction=direction,
                value=metric_value(best_value),
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
_NAMES = UniqueName(Experiment, "project_id", DUPLICATE_NAME, "already used in this project")


def create_experiment(
    session: Session, principal: Principal, project_id: str, body: ExperimentCreate | TrackedExperimentCreate
) -> Experiment:
    project = projects_service.project_for(session, principal, "experiments", project_id, "write")
    check_model(session, project, body.model_id)
    _NAMES.check(session, project.id, body.name)
    owner = getattr(body, "owner", None) or caller_name(session, principal)
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
    _NAMES.flush(session)
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
        _NAMES.check(session, experiment.project_id, changes["name"], but=experiment.id)
        experiment.name = changes["name"]
    if "description" in changes:
        experiment.description = changes["description"] or None
    if "model_id" in changes:
        project = projects_service.get_project(session, experiment.project_id)
        check_model(session, project, changes["model_id"])
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
    _NAMES.flush(session)
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
    keys = stored_keys(session, experiment_id=experiment.id)
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
