"""Reference data: what a deployment's served traffic is compared with to decide drift.

A deployment has at most one reference, set with ``PUT …/monitoring/reference`` to one of:

- a dataset file of its project (``dataset_file_id``, uploaded with ``/upload/datasets``);
- the dataset its deployed version's model card names as training data
  (``training_data.source`` holding such a file's id; the card has no other record of a
  training dataset);
- a window of its own traffic (``reference_start``, ``reference_end``), merged from the
  hourly profiles folding keeps.

Setting it records the choice (``pending``) and submits the ``monitoring.reference`` job,
which profiles it once (``building``, then ``ready`` or ``failed`` with the reason) into
``MonitoringReferenceProfile`` rows: the same profile classes as folded traffic, one per
input column and, where known, for the predictions. Every drift computation reuses them
until the reference is set again. A dataset is read only by the bounded reader in an
isolated process (``reference_reading``). Each change bumps the reference's
``generation``; a job stores its profiles only if the generation it was given is still
current, under a lock on the reference's row, so a slow job for an older choice never
overwrites a newer one.

``window_profiles`` merges the hours of any window while streaming the rows, so memory
stays one profile per column however long the window; windows are still bounded
(``MAX_WINDOW`` where a request waits, ``MAX_REFERENCE_WINDOW`` for a reference) because
their cost grows with their hours.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maestro.api.params import ID_MAX_LENGTH, utc_query
from maestro.db import flush_unique, utcnow
from maestro.deployments.models import Deployment
from maestro.deployments.service import NO_SUCH_DEPLOYMENT, deployable_version
from maestro.errors import Conflict, NotFound, ValidationFailed
from maestro.files import service as files_service
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.models import Job, JobStatus
from maestro.monitoring.folding import fold_new_predictions, settle_seconds, utc_hour
from maestro.monitoring.models import (
    ALL_TRAFFIC,
    PREDICTION_COLUMN,
    MonitoringProfile,
    MonitoringReference,
    MonitoringReferenceProfile,
)
from maestro.monitoring.profiles import CategoricalProfile, ColumnProfile, NumericProfile
from maestro.monitoring.reference_reading import DatasetProfiles, ReferenceRefused, profile_dataset
from maestro.monitoring.schemas import ReferenceColumn, ReferenceRead, ReferenceSet
from maestro.projects import service as projects_service
from maestro.registry.cards import saved_sections
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.inputs import parse_model_schema

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database
    from maestro.jobs.queue import JobQueue
    from maestro.storage import ArtifactStore

logger = logging.getLogger("maestro.monitoring")

BUILD = "monitoring.reference"
MAX_WINDOW = timedelta(days=92)  # a window compared while a request waits
MAX_REFERENCE_WINDOW = timedelta(days=366)  # a traffic window profiled once by the job
STREAM_ROWS = 256  # hourly profiles fetched at a time when merging a window
HOW_TO_SET = (
    'set one with PUT /api/v1/deployments/{id}/monitoring/reference and {"dataset_file_id": …} '
    '(a dataset of the project), {"training_data": true} (the dataset the deployed version\'s model card '
    'names), or {"reference_start": …, "reference_end": …} (a window of its own traffic)'
)


# --- windows -------------------------------------------------------------------------------------------
def _utc(value: datetime, field: str) -> datetime:
    checked = utc_query(value, field)
    assert checked is not None
    return checked


def bounded_window(
    start: datetime,
    end: datetime,
    *,
    limit: timedelta = MAX_WINDOW,
    fields: tuple[str, str] = ("start", "end"),
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC, refused (422, naming the fields) unless start is before end
    and the window is at most ``limit`` long."""
    start, end = _utc(start, fields[0]), _utc(end, fields[1])
    if start >= end:
        raise ValidationFailed(
            f"{fields[0]} must be before {fields[1]}", details=[(fields[0], f"not before {fields[1]}")]
        )
    if end - start > limit:
        raise ValidationFailed(
            f"At most {limit.days} days between {fields[0]} and {fields[1]}: "
            "drift merges every hour of the window",
            details=[(fields[0], f"more than {limit.days} days before {fields[1]}")],
        )
    return start, end


def hour_ceiling(at: datetime) -> datetime:
    floor = utc_hour(at)
    return floor if floor == at else floor + timedelta(hours=1)


def load_profile(kind: str, data: bytes) -> ColumnProfile:
    return NumericProfile.from_bytes(data) if kind == "numeric" else CategoricalProfile.from_bytes(data)


def merge_into(merged: dict[str, ColumnProfile], column: str, profile: ColumnProfile) -> bool:
    """Merge ``profile`` into ``merged[column]``; False when their kinds differ."""
    held = merged.get(column)
    if held is None:
        merged[column] = profile
        return True
    if isinstance(held, NumericProfile) and isinstance(profile, NumericProfile):
        held.merge(profile)
        return True
    if isinstance(held, CategoricalProfile) and isinstance(profile, CategoricalProfile):
        held.merge(profile)
        return True
    return False


def window_profiles(
    session: Session,
    deployment_id: str,
    start: datetime,
    end: datetime,
    columns: Collection[str] | None = None,
    segment: str = ALL_TRAFFIC,
) -> dict[str, ColumnProfile]:
    """Each column's profile over the whole hours overlapping ``[start, end)`` (only
    ``columns`` when given; of the whole deployment, or of one ``segment``), merged while
    the rows stream in: one profile per column is held at a time, never the window's rows."""
    statement = (
        select(
            MonitoringProfile.column, MonitoringProfile.kind, MonitoringProfile.data, MonitoringProfile.hour
        )
        .where(
            MonitoringProfile.deployment_id == deployment_id,
            MonitoringProfile.segment == segment,
            MonitoringProfile.hour > start - timedelta(hours=1),
            MonitoringProfile.hour < end,
        )
        .order_by(MonitoringProfile.hour)
    )
    if columns is not None:
        statement = statement.where(MonitoringProfile.column.in_(list(columns)))
    merged: dict[str, ColumnProfile] = {}
    for column, kind, data, hour in session.execute(statement.execution_options(yield_per=STREAM_ROWS)):
        if not merge_into(merged, column, load_profile(kind, data)):
            logger.warning("deployment %s: column %s changed kind at %s", deployment_id, column, hour)
    return merged


# --- reading and setting ---------------------------------------------------------------------------------
def authorized_deployment(
    session: Session, principal: Principal | None, deployment_id: str, action: Action = "read"
) -> Deployment:
    """The deployment, once ``principal`` may ``action`` its monitoring (read: whoever
    reads its deployments, an API key with ``monitoring: read``; write: a developer, or
    ``monitoring: write``); another tenant's answers like an unknown one. Without a
    principal, as the platform's own evaluations read it."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    if principal is None:
        return deployment
    project = projects_service.get_project(session, deployment.project_id)
    projects_service.authorize_in_project(
        session,
        principal,
        "monitoring",
        action,
        project,
        missing=NO_SUCH_DEPLOYMENT,
    )
    return deployment


def current_reference(
    session: Session, deployment_id: str, *, lock: bool = False
) -> MonitoringReference | None:
    statement = select(MonitoringReference).where(MonitoringReference.deployment_id == deployment_id)
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return session.scalars(statement).first()


def _abandoned(session: Session, row: MonitoringReference) -> str | None:
    """Why a reference still waiting for its profiling job will never get it (the job
    failed: its worker died more often than it may be retried, or it was stopped), or
    None: without this the reference would say ``building`` forever."""
    if row.status not in ("pending", "building") or row.job_id is None:
        return None
    job = session.get(Job, row.job_id)
    if job is None or job.status != JobStatus.failed:
        return None
    return f"The profiling job {job.id} failed: {job.error or 'no reason was recorded'}"


def settled_status(session: Session, row: MonitoringReference) -> tuple[str, str | None]:
    """The reference's status and error as they stand: a failed profiling job fails it."""
    abandoned = _abandoned(session, row)
    return ("failed", abandoned) if abandoned else (row.status, row.error)


def _profile_rows(session: Session, reference_id: str) -> list[MonitoringReferenceProfile]:
    return list(
        session.scalars(
            select(MonitoringReferenceProfile)
            .where(MonitoringReferenceProfile.reference_id == reference_id)
            .order_by(MonitoringReferenceProfile.column)
        )
    )


def reference_read(session: Session, deployment_id: str) -> ReferenceRead:
    row = current_reference(session, deployment_id)
    if row is None:
        return ReferenceRead(deployment_id=deployment_id, status="none")
    columns = []
    if row.status == "ready":
        for profile_row in _profile_rows(session, row.id):
            profile = load_profile(profile_row.kind, profile_row.data)
            columns.append(
                ReferenceColumn(
                    name=profile_row.column,
                    kind=profile.kind,
                    rows=profile.count,
                    null_count=profile.null_count,
                )
            )
    status, error = settled_status(session, row)
    return ReferenceRead(
        deployment_id=deployment_id,
        status=status,  # type: ignore[arg-type]
        source=row.source,  # type: ignore[arg-type]
        dataset_file_id=row.dataset_file_id,
        model_version_id=row.model_version_id,
        prediction_column=row.prediction_column,
        reference_start=row.reference_start,
        reference_end=row.reference_end,
        rows=row.rows,
        columns=columns,
        skipped_columns=list(row.skipped or []),
        error=error,
        job_id=row.job_id,
        set_at=row.updated_at,
        built_at=row.built_at,
    )


def get_reference(session: Session, principal: Principal, deployment_id: str) -> ReferenceRead:
    deployment = authorized_deployment(session, principal, deployment_id, "read")
    return reference_read(session, deployment.id)


def _dataset_file(session: Session, principal: Principal, deployment: Deployment, file_id: str) -> Any:
    """A dataset file of the deployment's project that ``principal`` may read: another
    tenant's id answers 404 exactly like an unknown one (the files domain decides)."""
    row = files_service.get_visible_file(session, principal, file_id, "read")
    if row.kind != "dataset":  # the files domain's kinds: model or dataset
        raise ValidationFailed(
            "The file is not a dataset", details=[("dataset_file_id", f"a {row.kind} file, not a dataset")]
        )
    if row.project_id != deployment.project_id:
        raise ValidationFailed(
            "The dataset is not a file of the deployment's project",
            details=[("dataset_file_id", "upload it to the deployment's project")],
        )
    return row


def _training_data_file(session: Session, principal: Principal, deployment: Deployment) -> tuple[Any, str]:
    """The dataset file the deployed version's model card names as its training data."""
    if deployment.model_version_id is None:
        raise ValidationFailed(
            "The deployment serves no version (it was deleted), so it has no training data",
            details=[("training_data", "no deployed version")],
        )
    version = deployable_version(session, deployment.project_id, deployment.model_version_id, "training_data")
    training = saved_sections(version).training_data
    source = (training.source or "").strip() if training is not None else ""
    if not source:
        raise ValidationFailed(
            "The deployed version's model card names no training data: set training_data.source on its card "
            "to the id of a dataset file of the project, or give dataset_file_id",
            details=[("training_data", "the model card has no training_data.source")],
        )
    unusable = ValidationFailed(
        "The training data the deployed version's model card names is not a dataset file of this project",
        details=[("training_data", f"training_data.source is {source[:100]!r}")],
    )
    if len(source) > ID_MAX_LENGTH or not source.replace("_", "").replace("-", "").isalnum():
        raise unusable
    try:
        row = _dataset_file(session, principal, deployment, source)
    except (NotFound, ValidationFailed):
        raise unusable from None
    return row, version.id


def set_reference(
    session: Session,
    principal: Principal,
    queue: JobQueue,
    deployment_id: str,
    body: ReferenceSet,
) -> ReferenceRead:
    """Record the deployment's reference and submit the job that profiles it."""
    deployment = authorized_deployment(session, principal, deployment_id, "write")
    values: dict[str, Any] = {
        "dataset_file_id": None,
        "dataset_key": None,
        "dataset_format": None,
        "prediction_column": body.prediction_column,
        "model_version_id": None,
        "reference_start": None,
        "reference_end": None,
    }
    if body.dataset_file_id is not None or body.training_data:
        if body.dataset_file_id is not None:
            stored, source = _dataset_file(session, principal, deployment, body.dataset_file_id), "dataset"
        else:
            (stored, values["model_version_id"]), source = (
                _training_data_file(session, principal, deployment),
                ("training_data"),
            )
        values.update(dataset_file_id=stored.id, dataset_key=stored.storage_key, dataset_format=stored.format)
    else:
        assert body.reference_start is not None
        assert body.reference_end is not None
        start, end = bounded_window(
            body.reference_start,
            body.reference_end,
            limit=MAX_REFERENCE_WINDOW,
            fields=("reference_start", "reference_end"),
        )
        if end > utcnow():
            raise ValidationFailed(
                "reference_end is in the future: a reference window must be traffic already served",
                details=[("reference_end", "after now")],
            )
        values.update(reference_start=start, reference_end=end)
        source = "traffic"
    row = current_reference(session, deployment.id, lock=True)
    if row is None:
        row = MonitoringReference(deployment_id=deployment.id, generation=1)
        session.add(row)
    else:
        row.generation += 1
        session.execute(
            delete(MonitoringReferenceProfile).where(MonitoringReferenceProfile.reference_id == row.id)
        )
    for name, value in values.items():
        setattr(row, name, value)
    row.source, row.status, row.error = source, "pending", None
    row.rows, row.skipped, row.built_at = None, None, None
    row.created_by_id = principal.user_id
    row.updated_at = utcnow()
    flush_unique(
        session, Conflict("The reference was being set by another request at the same time; try again")
    )
    job = queue.submit(
        session,
        BUILD,
        {"deployment_id": deployment.id, "generation": row.generation},
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        created_by_id=principal.user_id or principal.id,
    )
    row.job_id = job.id
    session.flush()
    audit.describe(
        session,
        resource_type="deployments",
        resource_id=deployment.id,
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        reference_source=source,
        dataset_file_id=values["dataset_file_id"],
        reference_start=values["reference_start"].isoformat() if values["reference_start"] else None,
        reference_end=values["reference_end"].isoformat() if values["reference_end"] else None,
        job_id=job.id,
    )
    return reference_read(session, deployment.id)


def ready_reference(
    session: Session, deployment_id: str
) -> tuple[MonitoringReference, dict[str, ColumnProfile]]:
    """The deployment's built reference and its profiles; a 409 saying what to do when
    there is none yet."""
    row = require_ready(session, current_reference(session, deployment_id))
    profiles = {item.column: load_profile(item.kind, item.data) for item in _profile_rows(session, row.id)}
    return row, profiles


def require_ready(session: Session, row: MonitoringReference | None) -> MonitoringReference:
    """The reference, if it is built; otherwise a 409 saying what to do."""
    if row is None:
        raise Conflict(
            f"The deployment has no reference data to compare its traffic with: {HOW_TO_SET}",
            details=[("reference", "not set")],
        )
    status, error = settled_status(session, row)
    if status in ("pending", "building"):
        raise Conflict(
            f"The deployment's reference data is still being profiled (job {row.job_id}); try again once "
            "GET …/monitoring/reference says ready",
            details=[("reference", status)],
        )
    if status == "failed":
        raise Conflict(
            f"Profiling the deployment's reference data failed: {error}. Set it again: {HOW_TO_SET}",
            details=[("reference", "failed")],
        )
    return row


# --- the job -------------------------------------------------------------------------------------------
def version_features(session: Session, deployment: Deployment) -> list[str] | None:
    """The inputs the deployed version declares, or None when it declares none."""
    if deployment.model_version_id is None:
        return None
    try:
        version = deployable_version(
            session, deployment.project_id, deployment.model_version_id, "deployment"
        )
        schema = parse_model_schema(version.model_schema)
    except (ValidationFailed, ModelLoadError):
        return None
    return list(schema.names) if schema is not None else None


def _traffic(
    database: Database, settings: Settings, deployment_id: str, start: datetime, end: datetime
) -> DatasetProfiles:
    if settings.monitoring_fold_interval_seconds:
        fold_new_predictions(
            database, deployment_id, until=min(end, utcnow() - timedelta(seconds=settle_seconds(settings)))
        )
    with database.session(write=False) as session:
        profiles = window_profiles(session, deployment_id, start, end)
    if not profiles:
        raise ReferenceRefused(
            "No served traffic was folded in that window; "
            "choose a window in which the deployment answered requests"
        )
    rows = max(profile.count for profile in profiles.values())
    return DatasetProfiles(rows, profiles, [])


def _dataset(
    database: Database, settings: Settings, store: ArtifactStore, deployment_id: str, spec: dict[str, Any]
) -> DatasetProfiles:
    with database.session(write=False) as session:
        deployment = session.get(Deployment, deployment_id)
        features = version_features(session, deployment) if deployment is not None else None
    try:
        built = profile_dataset(
            store,
            spec["dataset_key"],
            spec["dataset_format"],
            settings,
            features=features,
            prediction_column=spec["prediction_column"],
        )
    except NotFound:
        raise ReferenceRefused("The dataset file was deleted before it could be profiled") from None
    prediction = spec["prediction_column"]
    if prediction is not None and prediction in built.profiles:  # compared with the served predictions
        built.profiles[PREDICTION_COLUMN] = built.profiles.pop(prediction)
    return built


def _store(
    database: Database,
    deployment_id: str,
    generation: int,
    *,
    built: DatasetProfiles | None,
    error: str | None,
) -> bool:
    """Record the outcome if ``generation`` is still the reference's; False if it changed."""
    with database.session(write=True) as session:
        row = current_reference(session, deployment_id, lock=True)
        if row is None or row.generation != generation:
            return False
        if built is None:
            row.status, row.error = "failed", (error or "failed")[:2000]
            return True
        session.execute(
            delete(MonitoringReferenceProfile).where(MonitoringReferenceProfile.reference_id == row.id)
        )
        for column, profile in built.profiles.items():
            session.add(
                MonitoringReferenceProfile(
                    reference_id=row.id,
                    column=column,
                    kind=profile.kind,
                    rows=profile.count,
                    data=profile.to_bytes(),
                )
            )
        row.status, row.error, row.rows = "ready", None, built.rows
        row.skipped, row.built_at = built.skipped, utcnow()
        return True


@job_handler(BUILD)
def build_reference(ctx: JobContext, deployment_id: str, generation: int) -> dict[str, Any]:
    """Profile the deployment's reference (a dataset in an isolated process, or a window
    of its traffic) and store the profiles, unless the reference changed meanwhile."""
    with ctx.database.session(write=True) as session:
        row = current_reference(session, deployment_id, lock=True)
        if row is None or row.generation != generation:
            return {"deployment_id": deployment_id, "superseded": True}
        row.status = "building"
        spec: dict[str, Any] = {
            "source": row.source,
            "dataset_key": row.dataset_key,
            "dataset_format": row.dataset_format,
            "prediction_column": row.prediction_column,
            "reference_start": row.reference_start,
            "reference_end": row.reference_end,
        }
    ctx.progress(0.0, "profiling the reference data")
    try:
        if spec["source"] == "traffic":
            built = _traffic(
                ctx.database, ctx.settings, deployment_id, spec["reference_start"], spec["reference_end"]
            )
        else:
            built = _dataset(ctx.database, ctx.settings, ctx.store, deployment_id, spec)
    except ReferenceRefused as exc:
        _store(ctx.database, deployment_id, generation, built=None, error=str(exc))
        raise ValueError(str(exc)) from None
    except Exception as exc:
        _store(
            ctx.database,
            deployment_id,
            generation,
            built=None,
            error=f"Profiling failed: {type(exc).__name__}",
        )
        raise
    stored = _store(ctx.database, deployment_id, generation, built=built, error=None)
    return {
        "deployment_id": deployment_id,
        "superseded": not stored,
        "rows": built.rows,
        "columns": sorted(built.profiles),
        "prediction_profiled": PREDICTION_COLUMN in built.profiles,
    }
