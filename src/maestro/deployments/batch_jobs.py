"""Asynchronous batch prediction: a dataset in, a predictions file out, as a job.

The dataset is an uploaded file (``POST /api/v1/upload/datasets``) or the request body
itself (CSV, Parquet, JSON lines, or JSON: an array of rows or ``{"instances": …}``),
which is stored as a file of the project. Submitting a job needs write access to the
deployment's inference (a developer of the project, or an API key granted
``inference: ["write"]``), because the job stores files in the project; predicting
rows directly needs only read access.

The job, run by any worker, copies the version the deployment served when the job was
submitted and the dataset into a scratch directory, and one isolated process per job
(``batch_process``: a memory and CPU budget, a cap on what it may write, no reach into
the data directory) loads the model, reads the dataset within the row and byte bounds
of ``maestro.files.reading``, and writes the rows with their predictions
(``prediction``, and ``probability_<class>`` where the model gives them, classes named
as inference names them: ``runtimes.class_labels``) as CSV or Parquet. Only when that
process succeeded and its file checks out is the file stored and recorded as a file of
the project; the job's result names it, and
``GET …/batch-jobs/{job_id}/result`` downloads it. A crash, a budget passed or a limit
hit fails the job with a clear message, stores nothing and leaves the server untouched.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.db import utcnow
from maestro.deployments import batch_process
from maestro.deployments.inference import NO_SUCH_DEPLOYMENT
from maestro.deployments.models import Deployment, DeploymentStatus
from maestro.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from maestro.files.formats import (
    CONTENT_TYPES,
    SUFFIXES,
    DatasetFormat,
    UnrecognisedDataset,
    detect_dataset_format,
)
from maestro.files.models import FileKind, StoredFile
from maestro.files.reading import (
    ANSWER_SLACK_SECONDS,
    CHUNK_ROWS,
    ReadBounds,
    copy_from_store,
    explain_failure,
    protected_paths,
    reading_limits,
)
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal, Target, authorize, can
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.models import Job, JobStatus
from maestro.projects import service as projects_service
from maestro.registry.models import ModelVersion
from maestro.runtimes.errors import LOAD_REASONS, ModelLoadError
from maestro.runtimes.formats import CODE_EXECUTING_FORMATS
from maestro.sandbox import ChildFailed, ChildTimedOut, Limits, SandboxError, shared_sandbox
from maestro.storage import ArtifactStore

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.deployments.schemas import OutputFormat

KIND = "serving.batch_predict"
NO_SUCH_JOB = "No such batch job of this deployment"
RESULT_SUFFIXES = {"csv": ".csv", "parquet": ".parquet"}
RESULT_FORMATS = {"csv": DatasetFormat.csv, "parquet": DatasetFormat.parquet}
# Wall-clock time a job's process may take, in multiples of its CPU seconds (plus a minute).
WALL_CLOCK_FACTOR = 3


# --- submitting -------------------------------------------------------------------------------
def deployment_by_name(
    session: Session, principal: Principal, name: str, action: Action = "read"
) -> Deployment:
    """The caller's organisation's deployment of this name, once they may use its
    inference: ``read`` to predict and fetch results, ``write`` to submit a batch job."""
    deployment = None
    if principal.organization_id is not None:
        deployment = session.scalar(
            select(Deployment).where(
                Deployment.organization_id == principal.organization_id, Deployment.name == name
            )
        )
    if deployment is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    project = projects_service.get_project(session, deployment.project_id)
    target = Target("inference", deployment.organization_id, project)
    if action == "read" or not can(session, principal, "read", target):
        authorize(session, principal, action, target, missing=NO_SUCH_DEPLOYMENT)
    elif not can(session, principal, action, target):
        audit.note_denied(session, principal, action, target, visible=True)
        raise PermissionDenied(
            "Submitting a batch job stores files in the project, so it needs write access to inference: "
            'a developer of the project, or an API key granted inference: ["write"]'
        )
    return deployment


def servable(session: Session, deployment: Deployment) -> ModelVersion:
    if deployment.model_version_id is None or deployment.status != DeploymentStatus.active:
        raise Conflict(
            "The deployment is not serving (inactive, or its version was deleted)",
            details=[("deployment_name", f"status {deployment.status}")],
        )
    version = session.get(ModelVersion, deployment.model_version_id)
    assert version is not None
    return version


def input_file(session: Session, principal: Principal, deployment: Deployment, file_id: str) -> StoredFile:
    """An uploaded dataset of the deployment's project that the caller may read."""
    row = session.get(StoredFile, file_id)
    if row is None or row.project_id != deployment.project_id or row.kind != FileKind.dataset:
        raise ValidationFailed(
            "No such dataset in the deployment's project", details=[("file_id", "no such dataset here")]
        )
    project = projects_service.get_project(session, row.project_id)
    authorize(session, principal, "read", Target("files", row.organization_id, project))
    return row


def record_input(
    session: Session,
    principal: Principal,
    deployment: Deployment,
    key: str,
    size: int,
    sha256: str,
    fmt: DatasetFormat,
) -> StoredFile:
    """A dataset sent as the request body, kept as a file of the project."""
    row = StoredFile(
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        kind=FileKind.dataset,
        filename=f"{deployment.name}-batch-input{'.json' if fmt is DatasetFormat.json else f'.{fmt}'}",
        description=f"Input of a batch prediction on deployment {deployment.name}",
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        storage_key=key,
        size=size,
        sha256=sha256,
        created_by_id=principal.user_id,
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Submission:
    deployment: Deployment
    version: ModelVersion
    dataset: StoredFile
    output_format: OutputFormat
    keeps_body: bool  # the dataset was the request body, stored for this job


def submit(session: Session, principal: Principal, queue: Any, submission: Submission) -> Job:
    deployment, version, dataset = submission.deployment, submission.version, submission.dataset
    output_format = submission.output_format
    job = queue.submit(
        session,
        KIND,
        {
            "deployment_id": deployment.id,
            "deployment_name": deployment.name,
            "version_id": version.id,
            "input_file_id": dataset.id,
            "output_format": output_format,
        },
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        created_by_id=principal.user_id or principal.id,
    )
    audit.describe(
        session,
        resource_type="jobs",
        resource_id=job.id,
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        kind=KIND,
        deployment_id=deployment.id,
        model_version_id=version.id,
        input_file_id=dataset.id,
        output_format=output_format,
    )
    return job


def finished_result(session: Session, deployment: Deployment, job_id: str) -> StoredFile:
    """The predictions file of a succeeded batch job of this deployment."""
    job = session.get(Job, job_id)
    if job is None or job.kind != KIND or (job.params or {}).get("deployment_id") != deployment.id:
        raise NotFound(NO_SUCH_JOB)
    if job.status != JobStatus.succeeded:
        because = f": {job.error}" if job.status == JobStatus.failed and job.error else ""
        raise Conflict(
            f"The job has no result: it is {job.status}{because}",
            details=[("batch_job_id", f"status {job.status}")],
        )
    row = session.get(StoredFile, (job.result or {}).get("file_id", ""))
    if row is None:
        raise NotFound("The job's predictions file was deleted")
    return row


# --- running ---------------------------------------------------------------------------------------
class BatchJobFailed(RuntimeError):
    """The job's isolated process crashed, passed its memory or CPU budget, stopped
    answering, or answered something that is not a valid result."""


def _copy_model(version: ModelVersion, store: ArtifactStore, settings: Settings, target: Path) -> None:
    """The version's file into the scratch directory, with the checks ``load_version``
    makes: an untrusted pickle is refused before a byte is read, then the size limit,
    then the checksum recorded at upload."""
    if not version.file_key:
        raise ModelLoadError("no_file", "This version has no model file")
    if version.format in CODE_EXECUTING_FORMATS and not version.trusted:
        raise ModelLoadError(
            "not_trusted",
            f"This {version.format} file can run code when loaded; an organisation admin must trust "
            "the version before it is served",
        )
    limit = settings.max_model_bytes
    try:
        size = store.size(version.file_key)
        if size > limit:
            raise ModelLoadError(
                "too_large", f"The model file is {size:,} bytes; at most {limit:,} can be loaded"
            )
        digest = hashlib.sha256()
        with store.open(version.file_key) as source, target.open("wb") as copy:
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                copy.write(chunk)
    except NotFound:
        raise ModelLoadError(
            "file_missing", "The version's model file is missing from the artifact store"
        ) from None
    if version.sha256 and digest.hexdigest() != version.sha256:
        raise ModelLoadError(
            "checksum_mismatch",
            "The stored model file does not match the checksum recorded when it was uploaded",
        )


def _child_error(exc: ChildFailed, limits: Limits) -> Exception:
    """What the isolated process's error becomes in the job's error."""
    if exc.kind in _INPUT_ERRORS:
        return ValueError(exc.message)
    if exc.kind == "ModelLoadError":
        reason = exc.details.get("reason")
        return ModelLoadError(reason if reason in LOAD_REASONS else "corrupt", exc.message)
    if exc.kind.endswith("MemoryError"):
        return BatchJobFailed(explain_failure(exc, limits, "The batch job"))
    return BatchJobFailed(f"The batch job failed: {exc.message}")


_INPUT_ERRORS = frozenset({"ValueError", "DatasetRefused", "OutputTooLarge", "InputError", "PredictionError"})


def _whole_number(value: Any, ceiling: int) -> int:
    """A count from the isolated process, which is not trusted."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= ceiling:
        raise BatchJobFailed("The batch job failed: its isolated process sent an invalid answer")
    return value


def _predict_isolated(ctx: JobContext, spec: dict[str, Any], scratch: str) -> dict[str, Any]:
    """Run the prediction in a fresh isolated process, relaying its progress; returns its
    checked final answer."""
    settings = ctx.settings
    limits = reading_limits(settings, file_bytes=settings.batch_job_max_output_bytes)
    # A process that waits instead of working uses no CPU time: the wall clock bounds it.
    allowed = WALL_CLOCK_FACTOR * settings.batch_job_cpu_seconds + ANSWER_SLACK_SECONDS
    deadline = time.monotonic() + allowed
    max_rows = settings.dataset_max_rows
    peak = 0
    try:
        child = shared_sandbox().spawn(
            batch_process.ENTRY,
            spec,
            limits=limits,
            imports=batch_process.IMPORTS,
            writable=[scratch],
            protected=protected_paths(settings, ctx.store),
        )
        with child:
            answer = child.receive(timeout=deadline - time.monotonic(), max_reply_bytes=0)
            reported, expected = -1, None
            while answer.meta.get("event") == "progress":
                rows = _whole_number(answer.meta.get("rows"), max_rows)
                total = _whole_number(answer.meta.get("total"), max_rows)
                if expected not in (None, total):
                    raise BatchJobFailed("The batch job failed: its isolated process sent an invalid answer")
                expected = total
                peak = max(peak, child.memory().peak_bytes)
                # At most one write a chunk, however often the process reports.
                if reported < 0 or (rows > reported and (rows - reported >= CHUNK_ROWS or rows == total)):
                    ctx.progress(
                        min(rows / max(total, 1), 1.0) * 0.95, f"{rows:,} of {total:,} rows predicted"
                    )
                    reported = rows
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildTimedOut("out of time")
                answer = child.request({"continue": True}, timeout=remaining, max_reply_bytes=0)
    except ChildFailed as exc:
        raise _child_error(exc, limits) from None
    except ChildTimedOut:
        raise BatchJobFailed(
            f"The batch job did not finish within {allowed:,.0f} seconds and was stopped"
        ) from None
    except SandboxError as exc:
        raise BatchJobFailed(explain_failure(exc, limits, "The batch job")) from None
    if answer.meta.get("event") != "done":
        raise BatchJobFailed("The batch job failed: its isolated process sent an invalid answer")
    serving = answer.meta.get("serving")
    return {
        "rows": _whole_number(answer.meta.get("rows"), max_rows),
        "serving": serving[:100] if isinstance(serving, str) and serving.isprintable() else "unknown",
        "peak_memory_bytes": peak,
    }


def _open_output(path: Path, output_format: str, settings: Settings) -> BinaryIO:
    """The file the isolated process wrote, opened once it checks out: a regular file of
    its own (no link to anything outside the scratch directory), within the size limit,
    of the format asked for."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise BatchJobFailed("The batch job failed: its isolated process wrote no predictions file") from None
    file = os.fdopen(handle, "rb")
    try:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            raise BatchJobFailed("The batch job failed: its isolated process wrote no predictions file")
        if status.st_size > settings.batch_job_max_output_bytes:
            raise BatchJobFailed(
                f"The predictions file would be larger than {settings.batch_job_max_output_bytes:,} bytes"
            )
        try:
            detected = detect_dataset_format(file.read(4096), file, status.st_size)
        except UnrecognisedDataset:
            detected = None
        if detected is not RESULT_FORMATS[output_format]:
            raise BatchJobFailed("The batch job failed: its isolated process wrote a file of another format")
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return file


@job_handler(KIND)
def batch_predict(
    ctx: JobContext,
    deployment_id: str,
    deployment_name: str,
    version_id: str,
    input_file_id: str,
    output_format: str = "csv",
) -> dict[str, Any]:
    """Copy the model and the dataset into a scratch directory, predict in an isolated
    process, and store its predictions file as a file of the project only once the
    process succeeded and the file checks out."""
    with ctx.database.session(write=False) as session:
        version = session.get(ModelVersion, version_id)
        dataset = session.get(StoredFile, input_file_id)
        if version is None or dataset is None:
            raise ValueError("The model version or the dataset was deleted before the job ran")
        session.expunge_all()
    if output_format not in RESULT_SUFFIXES:
        raise ValueError(f"Unknown output format {output_format[:20]!r}")
    ctx.progress(0.0, f"loading version {version.version}")
    suffix = RESULT_SUFFIXES[output_format]
    settings = ctx.settings
    with tempfile.TemporaryDirectory(prefix="maestro-batch-") as scratch:
        folder = Path(scratch)
        _copy_model(version, ctx.store, settings, folder / "model.bin")
        input_file = f"input{SUFFIXES.get(DatasetFormat(dataset.format), '.bin')}"
        copy_from_store(ctx.store, dataset.storage_key, folder / input_file)
        spec = {
            "scratch": scratch,
            "model_file": "model.bin",
            "model_format": version.format,
            "trusted": version.trusted,
            "model_schema": version.model_schema,
            "max_model_bytes": settings.max_model_bytes,
            "input_file": input_file,
            "input_format": dataset.format,
            "bounds": ReadBounds.from_settings(settings).to_dict(),
            "output_file": f"predictions{suffix}",
            "output_format": output_format,
            "max_output_bytes": settings.batch_job_max_output_bytes,
        }
        outcome = _predict_isolated(ctx, spec, scratch)
        with _open_output(folder / f"predictions{suffix}", output_format, settings) as result:
            stored = ctx.store.put_stream(
                f"files/{dataset.project_id.lower()}/datasets",
                iter(lambda: result.read(1 << 20), b""),
                max_bytes=settings.batch_job_max_output_bytes,
                suffix=suffix,
            )
    fmt = RESULT_FORMATS[output_format]
    try:
        with ctx.database.session() as session:
            row = StoredFile(
                organization_id=dataset.organization_id,
                project_id=dataset.project_id,
                kind=FileKind.dataset,
                filename=f"{deployment_name}-predictions{suffix}",
                description=f"Predictions of deployment {deployment_name}, version {version.version}, "
                f"for {dataset.filename or dataset.id} ({utcnow():%Y-%m-%d %H:%M} UTC)",
                format=fmt,
                content_type=CONTENT_TYPES[fmt],
                storage_key=stored.key,
                size=stored.size,
                sha256=stored.sha256,
                created_by_id=None,
            )
            session.add(row)
            session.flush()
            file_id = row.id
    except BaseException:
        ctx.store.delete(stored.key)
        raise
    return {
        "file_id": file_id,
        "download_url": f"/api/v1/files/{file_id}/download",
        "result_url": f"/api/v1/inference/{deployment_name}/batch-jobs/{ctx.job.id}/result",
        "rows": outcome["rows"],
        "format": output_format,
        "deployment_id": deployment_id,
        "model_version_id": version.id,
        "version": version.version,
        "serving": outcome["serving"],
        "peak_memory_bytes": outcome["peak_memory_bytes"],
    }
