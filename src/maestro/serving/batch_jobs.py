"""Asynchronous batch prediction: a dataset in, a predictions file out, as a job.

The dataset is an uploaded file (``POST /api/v1/upload/datasets``) or the request body
itself (CSV, Parquet, JSON lines, or JSON: an array of rows or ``{"instances": …}``),
which is stored as a file of the project. The job, run by any worker, loads the version
the deployment served when the job was submitted, reads the dataset with polars in
chunks, predicts each chunk and writes the rows with their predictions (``prediction``,
and ``probability_<class>`` where the model gives them) as CSV or Parquet into the
artifact store, recorded as a file of the project. The job's result names it, and
``GET …/batch-jobs/{job_id}/result`` downloads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound, ValidationFailed
from maestro.db import utcnow
from maestro.files.formats import CONTENT_TYPES, DatasetFormat
from maestro.files.models import FileKind, StoredFile
from maestro.identity import audit
from maestro.identity.rbac import Principal, Target, authorize
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.models import Job, JobStatus
from maestro.projects import service as projects_service
from maestro.registry.models import ModelVersion
from maestro.serving.errors import InputError
from maestro.serving.inference import NO_SUCH_DEPLOYMENT
from maestro.serving.inputs import to_matrix
from maestro.serving.models import Deployment, DeploymentStatus
from maestro.serving.runtimes import Runtime, load_version
from maestro.storage import ArtifactStore

KIND = "serving.batch_predict"
CHUNK_ROWS = 10_000
NO_SUCH_JOB = "No such batch job of this deployment"
RESULT_SUFFIXES = {"csv": ".csv", "parquet": ".parquet"}
RESULT_FORMATS = {"csv": DatasetFormat.csv, "parquet": DatasetFormat.parquet}


# --- submitting -------------------------------------------------------------------------------
def deployment_by_name(session: Session, principal: Principal, name: str) -> Deployment:
    """The caller's organisation's deployment of this name, once they may use its inference."""
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
    authorize(
        session,
        principal,
        "read",
        Target("inference", deployment.organization_id, project),
        missing=NO_SUCH_DEPLOYMENT,
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
    output_format: str
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
@contextmanager
def _local_copy(store: ArtifactStore, key: str, suffix: str) -> Iterator[str]:
    """A path polars can scan: the file itself in a local store, a temporary copy otherwise."""
    if store.is_local:
        yield store.path(key)
        return
    handle, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as target, store.open(key) as source:
            shutil.copyfileobj(source, target)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _json_frame(raw: bytes, names: tuple[str, ...]) -> pl.DataFrame:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"The dataset is not valid JSON: {exc}") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("instances"), list):
        parsed = parsed["instances"]
    if not isinstance(parsed, list) or not parsed:
        raise ValueError('The JSON dataset must be a non-empty array of rows, or {"instances": [...]}')
    if all(isinstance(row, dict) for row in parsed):
        return pl.from_dicts(parsed, infer_schema_length=None)
    if all(isinstance(row, list) for row in parsed):
        if any(len(row) != len(names) for row in parsed):
            raise ValueError(f"Every row of values needs {len(names)} values, one per feature")
        return pl.DataFrame(parsed, schema=list(names), orient="row")
    raise ValueError("Rows must all be objects of named features, or all lists of values")


def _batches(path: str, fmt: str, names: tuple[str, ...]) -> tuple[int, Iterator[pl.DataFrame]]:
    """The number of rows and the dataset in chunks of about ``CHUNK_ROWS``."""
    if fmt == DatasetFormat.json:
        frame = _json_frame(Path(path).read_bytes(), names)
        return frame.height, frame.iter_slices(CHUNK_ROWS)
    if fmt == DatasetFormat.xlsx:
        frame = pl.read_excel(path)
        return frame.height, frame.iter_slices(CHUNK_ROWS)
    scan = {
        DatasetFormat.csv: lambda: pl.scan_csv(path, infer_schema_length=10_000),
        DatasetFormat.jsonl: lambda: pl.scan_ndjson(path, infer_schema_length=10_000),
        DatasetFormat.parquet: lambda: pl.scan_parquet(path),
    }[DatasetFormat(fmt)]
    total = int(scan().select(pl.len()).collect().item())
    return total, scan().collect_batches(chunk_size=CHUNK_ROWS)


def _matrix(chunk: pl.DataFrame, runtime: Runtime, offset: int) -> np.ndarray:
    schema = runtime.input_schema
    missing = [name for name in schema.names if name not in chunk.columns]
    if missing:
        listed = ", ".join(repr(name) for name in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(f"The dataset has no column for feature {listed}")
    columns = []
    for name in schema.names:
        try:
            columns.append(chunk.get_column(name).cast(pl.Float64, strict=True).to_numpy())
        except pl.exceptions.PolarsError:
            raise ValueError(f"Column {name!r} holds values that are not numbers") from None
    try:
        return to_matrix(np.column_stack(columns), schema, allow_nan=runtime.accepts_missing)
    except InputError as exc:
        where = f"Row {offset + exc.row}" if exc.row is not None else f"Rows from {offset}"
        raise ValueError(f"{where} of the dataset: {exc.message}") from None


def _with_predictions(chunk: pl.DataFrame, runtime: Runtime, matrix: np.ndarray) -> pl.DataFrame:
    labels, probabilities = runtime.predict_with_proba(matrix)
    added = {"prediction": np.asarray(labels).tolist()}
    if probabilities is not None and runtime.classes:
        for index, label in enumerate(runtime.classes):
            added[f"probability_{label}"] = probabilities[:, index]
    return chunk.with_columns(pl.Series(name, values) for name, values in added.items())


@job_handler(KIND)
def batch_predict(
    ctx: JobContext,
    deployment_id: str,
    deployment_name: str,
    version_id: str,
    input_file_id: str,
    output_format: str = "csv",
) -> dict[str, Any]:
    with ctx.database.session(write=False) as session:
        version = session.get(ModelVersion, version_id)
        dataset = session.get(StoredFile, input_file_id)
        if version is None or dataset is None:
            raise ValueError("The model version or the dataset was deleted before the job ran")
        session.expunge_all()
    ctx.progress(0.0, f"loading version {version.version}")
    runtime = load_version(version, ctx.store, ctx.settings)
    suffix = RESULT_SUFFIXES[output_format]
    done = 0
    with (
        _local_copy(ctx.store, dataset.storage_key, f".{dataset.format}") as source,
        tempfile.TemporaryDirectory() as scratch,
    ):
        total, batches = _batches(source, dataset.format, runtime.input_schema.names)
        if total == 0:
            raise ValueError("The dataset has no rows")
        target = Path(scratch) / f"predictions{suffix}"
        parts: list[pl.DataFrame] = []
        with target.open("wb") as out:
            for chunk in batches:
                if chunk.height == 0:
                    continue
                predicted = _with_predictions(chunk, runtime, _matrix(chunk, runtime, done))
                if output_format == "csv":
                    predicted.write_csv(out, include_header=done == 0)
                else:
                    parts.append(predicted)
                done += chunk.height
                ctx.progress(done / total * 0.95, f"{done:,} of {total:,} rows predicted")
        if output_format == "parquet":
            pl.concat(parts, how="vertical_relaxed").write_parquet(target)
        with target.open("rb") as result:
            stored = ctx.store.put_stream(
                f"files/{dataset.project_id.lower()}/datasets",
                iter(lambda: result.read(1 << 20), b""),
                suffix=suffix,
            )
    fmt = RESULT_FORMATS[output_format]
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
    return {
        "file_id": file_id,
        "download_url": f"/api/v1/files/{file_id}/download",
        "result_url": f"/api/v1/inference/{deployment_name}/batch-jobs/{ctx.job.id}/result",
        "rows": done,
        "format": output_format,
        "deployment_id": deployment_id,
        "model_version_id": version.id,
        "version": version.version,
        "serving": runtime.serving,
    }
