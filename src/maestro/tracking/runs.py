"""Runs and their rules: creation, status changes (an experiment's status follows its
runs), reopening, soft deletion, names, parameters, tags, metrics and artifacts."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from maestro.db import flush_unique, run_after_commit, run_after_rollback, utcnow
from maestro.errors import Conflict, NotFound, ValidationFailed
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.rbac import Principal
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.schemas import find_invisible, invisible_message
from maestro.storage import ArtifactStore, StoredObject
from maestro.tracking import metrics as metric_store
from maestro.tracking.access import (
    NO_ARTIFACT,
    caller_name,
    check_time,
    get_visible_experiment,
    get_visible_run,
    to_datetime,
    writable_run,
)
from maestro.tracking.models import (
    ENDED_STATUSES,
    ArtifactType,
    Experiment,
    ExperimentStatus,
    Lifecycle,
    Run,
    RunArtifact,
    RunParam,
    RunStatus,
    RunTag,
)
from maestro.tracking.schemas import (
    ArtifactRead,
    MetricIn,
    RunCreate,
    RunRead,
    RunStatusUpdate,
    metric_value,
)


# --- runs ----------------------------------------------------------------------------------
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


def runs_query(experiment: Experiment, status: RunStatus | None) -> Select[Run]:
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
    start = check_time(body.start_time, "start_time")
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
        user_name=caller_name(session, principal),
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
        end = check_time(body.end_time, "end_time") or now
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
    experiment, run = writable_run(session, principal, experiment_id, run_id)
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
    experiment, run = writable_run(session, principal, experiment_id, run_id)
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
    experiment, run = writable_run(session, principal, experiment_id, run_id)
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
    return writable_run(session, principal, experiment_id, run_id)


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
    experiment, run = writable_run(session, principal, experiment_id, run_id)
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


def artifacts_query(run: Run, prefix: str | None) -> Select[RunArtifact]:
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
