"""Deployments, inference and the Prometheus metrics of the platform app.

Deployment routes are plain functions: a deploy commits its checks before it loads the
model (so the database is free while it loads), then writes the change. Inference routes
are ``async`` and touch no database on a warm request (see ``inference``)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Annotated, cast

import orjson
from anyio.to_thread import run_sync
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from maestro.api.deps import (
    CurrentPrincipal,
    QueueDep,
    ReadingPrincipal,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses, validation_details
from maestro.api.multipart import ReceivedUpload, staged_upload
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN, DeploymentId, ProjectId, path_id, utc_query
from maestro.deployments import batch_jobs, inference, reading, service
from maestro.deployments.metrics import CONTENT_TYPE
from maestro.deployments.models import Deployment, DeploymentStatus, Environment, LogLevel
from maestro.deployments.schemas import (
    INFERENCE_BODY_SCHEMA,
    NAME_PATTERN,
    BatchJobCreate,
    BatchJobRead,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentLogRead,
    DeploymentMetrics,
    DeploymentRead,
    DeploymentUpdate,
    FeatureRead,
    FeatureType,
    Granularity,
    InferenceHealth,
    InferenceResponse,
    InferenceSchema,
    InputSource,
    MetricName,
    ModelVersionRef,
    OutputFormat,
    OutputSchema,
    RollbackRequest,
)
from maestro.deployments.state import ServingState
from maestro.errors import AuthenticationRequired, NotFound, UnsupportedMediaType, ValidationFailed
from maestro.files import service as files_service
from maestro.files.formats import DatasetFormat
from maestro.projects import service as projects_service
from maestro.storage import CHUNK_SIZE, ArtifactStore, StoredObject

router = APIRouter(prefix="/api/v1", tags=["deployments"])
inference_router = APIRouter(prefix="/api/v1/inference", tags=["inference"])
metrics_router = APIRouter(tags=["metrics"])


async def get_serving(request: Request) -> ServingState:
    return request.app.state.serving


ServingDep = Annotated[ServingState, Depends(get_serving)]
DeploymentName = Annotated[
    str,
    Path(min_length=1, max_length=63, pattern=NAME_PATTERN, description="The deployment's name."),
]
BatchJobId = Annotated[str, path_id("batch job")]


# --- deployments -----------------------------------------------------------------------------
@router.get(
    "/projects/{project_id}/deployments",
    response_model=Page[DeploymentRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_deployments(
    project_id: ProjectId,
    principal: CurrentPrincipal,
    session: SessionDep,
    serving: ServingDep,
    params: PageParamsDep,
    environment: Annotated[Environment | None, Query(description="Only this environment.")] = None,
    status: Annotated[DeploymentStatus | None, Query(description="Only deployments in this state.")] = None,
    model_id: Annotated[
        str | None,
        Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="Only deployments of this model."),
    ] = None,
) -> Page[DeploymentRead]:
    """A project's deployments, newest first."""
    project = projects_service.project_for(session, principal, "deployments", project_id, "read")
    return paginate(
        session,
        reading.deployments_query(project, environment=environment, status=status, model_id=model_id),
        params,
        sort_column=Deployment.created_at,
        id_column=Deployment.id,
        order="desc",
        to_item=lambda rows: reading.deployment_reads(session, serving, rows),
    )


@router.post(
    "/projects/{project_id}/deployments",
    status_code=201,
    response_model=Envelope[DeploymentDetail],
    responses=error_responses(401, 403, 404, 409, 413, 422, 429),
)
def create_deployment(
    project_id: ProjectId,
    body: DeploymentCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    serving: ServingDep,
) -> Envelope[DeploymentDetail]:
    """Deploy a model version of the project under a name unique in the organisation. The
    version is loaded and warmed first: a file that cannot (or may not) be loaded is
    refused with the reason, and nothing is created."""
    version = service.check_create(session, principal, project_id, body)
    deployment = service.deploy_version(
        session,
        serving,
        version,
        "model_version_id",
        lambda loaded: service.create(session, principal, serving, project_id, body, loaded),
    )
    return Envelope(data=reading.deployment_detail(session, serving, deployment))


@router.get(
    "/deployments/{deployment_id}",
    response_model=Envelope[DeploymentDetail],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_deployment(
    deployment_id: DeploymentId, principal: CurrentPrincipal, session: SessionDep, serving: ServingDep
) -> Envelope[DeploymentDetail]:
    """A deployment's details: what it serves and how, and its history."""
    deployment = service.get_deployment(session, principal, deployment_id, "read")
    return Envelope(data=reading.deployment_detail(session, serving, deployment))


@router.put(
    "/deployments/{deployment_id}",
    response_model=Envelope[DeploymentDetail],
    responses=error_responses(401, 403, 404, 409, 413, 422, 429),
)
def update_deployment(
    deployment_id: DeploymentId,
    body: DeploymentUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
    serving: ServingDep,
) -> Envelope[DeploymentDetail]:
    """Change a deployment's configuration, or deploy another version (loaded and warmed
    before traffic moves to it; if it cannot be loaded, the deployment keeps serving
    the version it served)."""
    deployment, version = service.check_update(session, principal, deployment_id, body)
    if version is None:
        deployment = service.update(session, principal, serving, deployment_id, body, None)
    else:
        deployment = service.deploy_version(
            session,
            serving,
            version,
            "model_version_id",
            lambda loaded: service.update(
                session, principal, serving, deployment_id, body, (version, loaded)
            ),
            serving_now=deployment,
        )
    return Envelope(data=reading.deployment_detail(session, serving, deployment))


@router.delete(
    "/deployments/{deployment_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_deployment(
    deployment_id: DeploymentId, principal: CurrentPrincipal, session: SessionDep, serving: ServingDep
) -> None:
    """Terminate a deployment: it stops serving, and its name is free again."""
    service.delete(session, principal, serving, deployment_id)


@router.post(
    "/deployments/{deployment_id}/rollback",
    response_model=Envelope[DeploymentDetail],
    responses=error_responses(401, 403, 404, 409, 413, 422, 429),
)
def rollback_deployment(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    serving: ServingDep,
    body: Annotated[RollbackRequest | None, Body()] = None,
) -> Envelope[DeploymentDetail]:
    """Serve an earlier version again: `target_version_id`, or by default (no body, or
    `{}`) the version served before the current one. Loaded and warmed before traffic
    moves."""
    body = body or RollbackRequest()
    deployment, target = service.check_rollback(session, principal, deployment_id, body)
    deployment = service.deploy_version(
        session,
        serving,
        target,
        "target_version_id",
        lambda loaded: service.rollback(
            session, principal, serving, deployment_id, target.id, body.reason, loaded
        ),
        serving_now=deployment,
    )
    return Envelope(data=reading.deployment_detail(session, serving, deployment))


@router.get(
    "/deployments/{deployment_id}/logs",
    response_model=Envelope[list[DeploymentLogRead]],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_deployment_logs(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="Entries at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Entries at or before this time (ISO 8601).")] = None,
    level: Annotated[LogLevel | None, Query(description="This level and the more severe ones.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most entries to return.")] = 100,
) -> Envelope[list[DeploymentLogRead]]:
    """The deployment's own log, newest first: creation, deploys and rollbacks with who and
    why, configuration changes, load failures and failed requests."""
    return Envelope(
        data=reading.deployment_logs(
            session,
            principal,
            deployment_id,
            since=utc_query(since, "since"),
            until=utc_query(until, "until"),
            level=level,
            limit=limit,
        )
    )


@router.get(
    "/deployments/{deployment_id}/metrics",
    response_model=Envelope[DeploymentMetrics],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_deployment_metrics(
    deployment_id: DeploymentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    metric_names: Annotated[
        list[MetricName] | None,
        Query(alias="metric_names[]", max_length=20, description="Metrics to return; all by default."),
    ] = None,
    start_time: Annotated[
        datetime | None, Query(description="Start (ISO 8601); default 60 intervals ago.")
    ] = None,
    end_time: Annotated[datetime | None, Query(description="End (ISO 8601); default now.")] = None,
    granularity: Annotated[Granularity, Query(description="Interval length.")] = "1m",
) -> Envelope[DeploymentMetrics]:
    """Request count, errors, error rate, predicted rows, latency (mean, p50, p95, p99,
    max, in ms) and throughput per interval, merged from every serving process's
    per-minute counts. A minute is counted once it is over."""
    return Envelope(
        data=reading.deployment_metrics(
            session,
            principal,
            deployment_id,
            names=metric_names,
            start=utc_query(start_time, "start_time"),
            end=utc_query(end_time, "end_time"),
            granularity=granularity,
        )
    )


# --- inference ------------------------------------------------------------------------------
INFERENCE_ERRORS = error_responses(401, 403, 404, 413, 415, 422, 429, 503)
INFERENCE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": INFERENCE_BODY_SCHEMA}}}
}


@inference_router.post(
    "/{deployment_name}",
    response_model=InferenceResponse,
    responses=INFERENCE_ERRORS,
    openapi_extra=INFERENCE_BODY,
)
async def predict(deployment_name: DeploymentName, request: Request, principal: ReadingPrincipal) -> Response:
    """Predict with a deployment of your organisation: `{"instances": [{feature: value, …}]}`,
    up to `MAESTRO_INFERENCE_MAX_ROWS` rows. Users who may read the project, and API keys
    with the `inference` scope (`read` suffices), may call it."""
    return await inference.predict(
        request, request.app.state.serving, principal, deployment_name, batch=False
    )


@inference_router.post(
    "/{deployment_name}/batch",
    response_model=InferenceResponse,
    responses=INFERENCE_ERRORS,
    openapi_extra=INFERENCE_BODY,
)
async def predict_batch(
    deployment_name: DeploymentName, request: Request, principal: ReadingPrincipal
) -> Response:
    """Predict many rows at once, up to `MAESTRO_INFERENCE_BATCH_MAX_ROWS` (more: 413; a
    whole dataset goes to `…/batch-jobs`)."""
    return await inference.predict(request, request.app.state.serving, principal, deployment_name, batch=True)


@inference_router.get(
    "/{deployment_name}/health",
    response_model=Envelope[InferenceHealth],
    responses=error_responses(401, 403, 404, 422, 429, 503),
)
async def deployment_health(
    deployment_name: DeploymentName, request: Request, principal: ReadingPrincipal, serving: ServingDep
) -> Envelope[InferenceHealth]:
    """200 once the deployment's model is loaded and warmed in this process (a first call
    loads it); 503 while it is inactive or its model cannot be loaded."""
    live = await inference.find(serving, principal, deployment_name, request)
    inference.check_serving(live)
    live, runtime = await inference.loaded(serving, live)
    assert live.version_id is not None
    return Envelope(
        data=InferenceHealth(
            deployment=live.name,
            status="healthy",
            version=live.version or "",
            version_id=live.version_id,
            serving=runtime.serving,
            loaded_seconds_ago=serving.loaded_seconds_ago(live.version_id),
        )
    )


@inference_router.get(
    "/{deployment_name}/schema",
    response_model=Envelope[InferenceSchema],
    responses=error_responses(401, 403, 404, 422, 429, 503),
)
async def deployment_schema(
    deployment_name: DeploymentName, request: Request, principal: ReadingPrincipal, serving: ServingDep
) -> Envelope[InferenceSchema]:
    """The features a request names (in the order rows of values take them), their types,
    and what comes back."""
    live = await inference.find(serving, principal, deployment_name, request)
    inference.check_serving(live)
    live, runtime = await inference.loaded(serving, live)
    assert live.version_id is not None
    schema = runtime.input_schema
    example = {
        f.name: (False if f.type == "boolean" else 0 if f.type == "integer" else 0.0) for f in schema.features
    }
    return Envelope(
        data=InferenceSchema(
            deployment=live.name,
            model_id=live.model_id,
            version=live.version or "",
            version_id=live.version_id,
            # The runtime's feature types and schema sources are these words, held as str.
            inputs=[FeatureRead(name=f.name, type=cast(FeatureType, f.type)) for f in schema.features],
            input_source=cast(InputSource, schema.source),
            outputs=OutputSchema(
                prediction="label" if runtime.classes is not None else "value",
                classes=runtime.classes,
                class_labels=list(runtime.class_labels.names) if runtime.class_labels else None,
                probabilities=runtime.supports_proba,
            ),
            max_rows=serving.settings.inference_max_rows,
            max_batch_rows=serving.settings.inference_batch_max_rows,
            example={"instances": [example]},
        )
    )


# --- async batch prediction --------------------------------------------------------------------
BATCH_MEDIA = frozenset(
    {
        "application/json",
        "text/json",
        "application/x-ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "text/csv",
        "application/csv",
        "text/tab-separated-values",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/octet-stream",
    }
)
REFERENCE_MAX_BYTES = 4096
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        BatchJobCreate.model_json_schema(),
                        INFERENCE_BODY_SCHEMA,
                        {"type": "array", "items": {"type": "object"}, "minItems": 1},
                    ]
                }
            },
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _media(request: Request) -> str:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in BATCH_MEDIA:
        raise UnsupportedMediaType(
            'Send a dataset (CSV, Parquet, JSON lines or JSON) or {"file_id": …} as application/json',
            details=[("content-type", f"{media[:100] or 'none'} is not a dataset type")],
        )
    return media


def _reference(store: ArtifactStore, stored: StoredObject, media: str) -> BatchJobCreate | None:
    """A small JSON object naming an uploaded file, rather than rows."""
    if media not in ("application/json", "text/json") or stored.size > REFERENCE_MAX_BYTES:
        return None
    try:
        parsed = orjson.loads(store.read_bytes(stored.key))
    except orjson.JSONDecodeError:
        raise ValidationFailed("The body is not valid JSON", details=[("body", "not valid JSON")]) from None
    if not isinstance(parsed, dict) or "file_id" not in parsed:
        return None
    try:
        return BatchJobCreate.model_validate(parsed)
    except ValidationError as exc:
        raise ValidationFailed("Invalid batch job", details=validation_details(exc.errors())) from None


@inference_router.post(
    "/{deployment_name}/batch-jobs",
    status_code=202,
    response_model=Envelope[BatchJobRead],
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429),
    openapi_extra=BATCH_BODY,
)
async def create_batch_job(
    deployment_name: DeploymentName,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    output_format: Annotated[
        OutputFormat, Query(description="Format of the predictions file (for a dataset sent as the body).")
    ] = "csv",
) -> Envelope[BatchJobRead]:
    """Predict a whole dataset in the background: an uploaded dataset (`{"file_id": …}`)
    or the dataset itself as the body. Follow the job at `GET /api/v1/jobs/{job_id}`; its
    result names the predictions file. The job stores files in the project, so it needs
    write access to inference (a developer, or an API key with `inference: ["write"]`)."""
    media = _media(request)

    def check() -> str:
        deployment = batch_jobs.deployment_by_name(session, principal, deployment_name, "write")
        batch_jobs.servable(session, deployment)
        return deployment.project_id

    project_id = await run_sync(check)
    prefix = f"files/{project_id.lower()}/datasets"
    receiving = store.put_async_stream(prefix, request.stream(), max_bytes=settings.max_dataset_bytes)
    async with staged_upload(session, store, receiving, lambda stored: stored.key) as stored:
        reference = await run_sync(_reference, store, stored, media)

        def record() -> batch_jobs.Submission:
            deployment = batch_jobs.deployment_by_name(session, principal, deployment_name, "write")
            version = batch_jobs.servable(session, deployment)
            if reference is not None:
                dataset = batch_jobs.input_file(session, principal, deployment, reference.file_id)
                return batch_jobs.Submission(deployment, version, dataset, reference.output_format, False)
            with store.open(stored.key) as file:
                head = file.read(4096)
            upload = ReceivedUpload(fields={}, stored=stored, head=head, content_type=media)
            fmt = DatasetFormat(
                files_service.recognise_dataset(
                    store, upload, max_expanded_bytes=settings.dataset_max_expanded_bytes
                )
            )
            if fmt is DatasetFormat.xlsx:
                raise ValidationFailed(
                    "Send a workbook as an upload (POST /api/v1/upload/datasets) and name its file_id",
                    details=[("body", "xlsx")],
                )
            dataset = batch_jobs.record_input(
                session, principal, deployment, stored.key, stored.size, stored.sha256, fmt
            )
            return batch_jobs.Submission(deployment, version, dataset, output_format, True)

        submission = await run_sync(record)
        job = await run_sync(partial(batch_jobs.submit, session, principal, queue, submission))
        if not submission.keeps_body:  # the predictions need only the dataset named
            await run_sync(store.delete, stored.key)
    version = submission.version
    return Envelope(
        data=BatchJobRead(
            job_id=job.id,
            status=str(job.status),
            deployment=submission.deployment.name,
            model_version=ModelVersionRef(id=version.id, model_id=version.model_id, version=version.version),
            input_file_id=submission.dataset.id,
            output_format=submission.output_format,
            status_url=f"/api/v1/jobs/{job.id}",
            result_url=f"/api/v1/inference/{submission.deployment.name}/batch-jobs/{job.id}/result",
        )
    )


@inference_router.get(
    "/{deployment_name}/batch-jobs/{batch_job_id}/result",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The rows with their predictions, as CSV or Parquet.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(401, 403, 404, 409, 422, 429),
    },
)
def download_batch_result(
    deployment_name: DeploymentName,
    batch_job_id: BatchJobId,
    principal: CurrentPrincipal,
    session: SessionDep,
    store: StoreDep,
) -> StreamingResponse:
    """Download the predictions file of a finished batch job (409 until it succeeded)."""
    deployment = batch_jobs.deployment_by_name(session, principal, deployment_name)
    row = batch_jobs.finished_result(session, deployment, batch_job_id)
    try:
        file = store.open(row.storage_key)
    except NotFound:
        raise NotFound("The job's predictions file is missing from the artifact store") from None

    def chunks() -> Iterator[bytes]:
        with file:
            while chunk := file.read(CHUNK_SIZE):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=row.content_type,
        headers={
            "Content-Disposition": files_service.content_disposition(row, ".csv"),
            "Content-Length": str(row.size),
            "X-Content-Type-Options": "nosniff",
        },
    )


# --- Prometheus ---------------------------------------------------------------------------------
def _scrape_token_matches(request: Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(
        hashlib.sha256(sent.strip().encode("utf-8", "surrogatepass")).digest(),
        hashlib.sha256(token.encode("utf-8")).digest(),
    )


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition of this process (turn it off with MAESTRO_METRICS_ENABLED=false).
    With MAESTRO_METRICS_TOKEN set, only a scraper sending it as a bearer token is answered,
    with every deployment's series; without it, anyone gets totals over deployments, with no
    deployment names or versions."""
    settings = request.app.state.settings
    if not settings.metrics_enabled:
        raise NotFound("No such resource or route")
    token = settings.metrics_token
    if token is not None and not _scrape_token_matches(request, token):
        raise AuthenticationRequired("Send the scrape token: Authorization: Bearer <MAESTRO_METRICS_TOKEN>")
    return Response(request.app.state.metrics.render(tenants=token is not None), media_type=CONTENT_TYPE)
