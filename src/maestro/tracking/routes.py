from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any

from anyio.to_thread import run_sync
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import Select
from sqlalchemy.orm import Session

from maestro.api.deps import (
    CurrentPrincipal,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from maestro.api.downloads import BINARY_RESPONSE, attachment, stored_file_response
from maestro.api.envelope import Envelope, Page, Pagination
from maestro.api.errors import error_responses, validation_details
from maestro.api.heavy import HeavyDep, owners_of
from maestro.api.multipart import UploadForm, receive_upload, staged_upload, stored_key
from maestro.api.pagination import PageParams, PageParamsDep, paginate
from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN, ArtifactId, ExperimentId, ProjectId, RunId
from maestro.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from maestro.schemas import find_invisible, invisible_message
from maestro.tracking import metrics as metric_store
from maestro.tracking import service
from maestro.tracking.models import ArtifactType, Experiment, ExperimentStatus, Run, RunArtifact, RunStatus
from maestro.tracking.schemas import (
    KEY_PATTERN,
    MAX_COMPARED_RUNS,
    ArtifactRead,
    BestRunRead,
    Direction,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentRead,
    ExperimentUpdate,
    KeysLogged,
    LatestMetricRead,
    MetricHistory,
    MetricPointRead,
    MetricsLog,
    MetricsLogged,
    ParamsLog,
    ProjectRunSearch,
    RunComparison,
    RunCreate,
    RunRead,
    RunSearch,
    RunStatusUpdate,
    TagsLog,
    TrackedExperimentCreate,
    metric_value,
)

router = APIRouter(prefix="/api/v1", tags=["tracking"])

TEXT_FILTER = {"max_length": 200, "pattern": r"^[^\x00]*$"}
RUN = "/experiments/{experiment_id}/runs/{run_id}"
MAX_VALIDATION_DETAILS = 20


def _invalid(exc: ValidationError) -> ValidationFailed:
    return ValidationFailed(
        "Invalid input parameters", details=validation_details(exc.errors()[:MAX_VALIDATION_DETAILS])
    )


# --- experiments ---------------------------------------------------------------------------
@router.get(
    "/projects/{project_id}/experiments",
    response_model=Page[ExperimentRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_experiments(
    project_id: ProjectId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    status: Annotated[
        ExperimentStatus | None, Query(description="Only experiments with this status.")
    ] = None,
    model_id: Annotated[
        str | None,
        Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="Only experiments of this model."),
    ] = None,
    created_by: Annotated[
        str | None,
        Query(
            max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="Only experiments this user created."
        ),
    ] = None,
    search: Annotated[
        str | None, Query(**TEXT_FILTER, description="Case-insensitive text in the name or description.")
    ] = None,
) -> Page[ExperimentRead]:
    """A project's experiments, newest first, with run counts, times and the best run."""
    statement = service.list_project_experiments(
        session,
        principal,
        project_id,
        status=status,
        model_id=model_id,
        created_by=created_by,
        search_text=search,
    )
    return _newest_experiments_first(session, statement, params)


def _newest_experiments_first(
    session: Session, statement: Select[Experiment], params: PageParams
) -> Page[ExperimentRead]:
    return paginate(
        session,
        statement,
        params,
        sort_column=Experiment.created_at,
        id_column=Experiment.id,
        order="desc",
        to_item=lambda rows: service.experiment_reads(session, rows),
    )


@router.post(
    "/projects/{project_id}/experiments",
    status_code=201,
    response_model=Envelope[ExperimentRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def create_experiment(
    project_id: ProjectId, body: ExperimentCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ExperimentRead]:
    """Create an experiment in the project; its name must be unique there."""
    experiment = service.create_experiment(session, principal, project_id, body)
    return Envelope(data=service.experiment_reads(session, [experiment])[0])


@router.get(
    "/experiments",
    response_model=Page[ExperimentRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_all_experiments(
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    per_page: Annotated[int | None, Query(ge=1, le=100, description="The same as `limit`.")] = None,
    project_id: Annotated[
        str | None, Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="Only this project's.")
    ] = None,
    owner: Annotated[
        str | None, Query(**TEXT_FILTER, description="Only experiments with this owner.")
    ] = None,
    status: Annotated[
        ExperimentStatus | None, Query(description="Only experiments with this status.")
    ] = None,
    search: Annotated[
        str | None, Query(**TEXT_FILTER, description="Case-insensitive text in the name or description.")
    ] = None,
) -> Page[ExperimentRead]:
    """Experiments of every project you can read in the organisation you act in, newest
    first. Pages by `page` with `per_page` (or `limit`), or by `cursor`."""
    if per_page is not None:
        params.limit = per_page
    statement = service.readable_experiments(
        session, principal, project_id=project_id, owner=owner, status=status, search_text=search
    )
    return _newest_experiments_first(session, statement, params)


@router.post(
    "/experiments",
    status_code=201,
    response_model=Envelope[ExperimentRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def create_tracked_experiment(
    body: TrackedExperimentCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ExperimentRead]:
    """Create an experiment in the project `project_id` names. The name may hold letters,
    digits, `_` and `-` and is stored in lowercase; a duplicate in the project is 409."""
    experiment = service.create_experiment(session, principal, body.project_id, body)
    return Envelope(data=service.experiment_reads(session, [experiment])[0])


@router.get(
    "/experiments/{experiment_id}",
    response_model=Envelope[ExperimentDetail],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_experiment(
    experiment_id: ExperimentId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ExperimentDetail]:
    """An experiment with its counts, best run and most recent runs."""
    experiment = service.get_visible_experiment(session, principal, experiment_id, "read")
    return Envelope(data=service.experiment_detail(session, experiment))


@router.put(
    "/experiments/{experiment_id}",
    response_model=Envelope[ExperimentRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def update_experiment(
    experiment_id: ExperimentId, body: ExperimentUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ExperimentRead]:
    """Change the fields sent: name, description, model, config, owner, or the status of
    an experiment without runs."""
    experiment = service.update_experiment(session, principal, experiment_id, body)
    return Envelope(data=service.experiment_reads(session, [experiment])[0])


@router.patch(
    "/experiments/{experiment_id}",
    response_model=Envelope[ExperimentRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def patch_experiment(
    experiment_id: ExperimentId, body: ExperimentUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ExperimentRead]:
    """The same as PUT (only the fields sent change), for the experiment tracker's clients."""
    experiment = service.update_experiment(session, principal, experiment_id, body)
    return Envelope(data=service.experiment_reads(session, [experiment])[0])


@router.delete(
    "/experiments/{experiment_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_experiment(
    experiment_id: ExperimentId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> None:
    """Delete an experiment with all its runs, metrics and artifacts."""
    service.delete_experiment(session, principal, experiment_id, store)


# --- runs ----------------------------------------------------------------------------------
@router.get(
    "/experiments/{experiment_id}/runs",
    response_model=Page[RunRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_runs(
    experiment_id: ExperimentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    status: Annotated[RunStatus | None, Query(description="Only runs with this status.")] = None,
) -> Page[RunRead]:
    """An experiment's runs, newest first, with parameters, tags and latest metrics."""
    experiment = service.get_visible_experiment(session, principal, experiment_id, "read")
    return paginate(
        session,
        service.runs_query(experiment, status),
        params,
        sort_column=Run.created_at,
        id_column=Run.id,
        order="desc",
        to_item=lambda rows: service.run_reads(session, rows),
    )


@router.post(
    "/experiments/{experiment_id}/runs",
    status_code=201,
    response_model=Envelope[RunRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def create_run(
    experiment_id: ExperimentId, body: RunCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[RunRead]:
    """Start a run (or schedule one), with its parameters and tags."""
    run = service.create_run(session, principal, experiment_id, body)
    return Envelope(data=service.run_read(session, run))


def _search_page(session: Any, experiment_ids: list[str], body: RunSearch) -> Page[RunRead]:
    runs, total, offset, next_cursor = service.search_runs(session, experiment_ids, body)
    return Page(
        data=service.run_reads(session, runs),
        pagination=Pagination(
            total=total,
            page=offset // body.limit + 1 if body.cursor is None else None,
            limit=body.limit,
            has_next=next_cursor is not None,
            has_prev=offset > 0,
            next_cursor=next_cursor,
        ),
    )


@router.post(
    "/experiments/{experiment_id}/runs/search",
    response_model=Page[RunRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def search_runs(
    experiment_id: ExperimentId, body: RunSearch, principal: CurrentPrincipal, session: ReadSessionDep
) -> Page[RunRead]:
    """Runs of the experiment matching a filter such as `metrics.accuracy > 0.9 and
    params.optimizer = 'adam'`, in the order asked for. A read, although a POST: it
    takes no write lock however long it runs, and leaves no audit row."""
    experiment = service.get_visible_experiment(session, principal, experiment_id, "read")
    return _search_page(session, [experiment.id], body)


@router.post(
    "/projects/{project_id}/runs/search",
    response_model=Page[RunRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def search_project_runs(
    project_id: ProjectId, body: ProjectRunSearch, principal: CurrentPrincipal, session: ReadSessionDep
) -> Page[RunRead]:
    """Runs across experiments of one project (`experiment_ids`, or all of them), with the
    same filter language and ordering as an experiment's run search."""
    experiment_ids = service.searchable_experiments(session, principal, project_id, body.experiment_ids)
    return _search_page(session, experiment_ids, body)


@router.get(
    "/experiments/{experiment_id}/runs/compare",
    response_model=Envelope[RunComparison],
    responses=error_responses(401, 403, 404, 422, 429),
)
def compare_runs(
    experiment_id: ExperimentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    run_ids: Annotated[
        list[str] | None,
        Query(
            max_length=MAX_COMPARED_RUNS,
            description=f"Runs of the experiment, repeated or comma-separated; at most {MAX_COMPARED_RUNS}. "
            f"Without it, the {MAX_COMPARED_RUNS} most recently created runs.",
        ),
    ] = None,
) -> Envelope[RunComparison]:
    """Parameters and latest metrics of several runs side by side."""
    if run_ids is None:
        return Envelope(data=service.compare_runs(session, principal, experiment_id, None))
    ids = [part.strip() for value in run_ids for part in value.split(",") if part.strip()]
    for run_id in ids:
        if len(run_id) > ID_MAX_LENGTH or not re.fullmatch(ID_PATTERN, run_id):
            raise ValidationFailed("Invalid input parameters", details=[("run_ids", "not a valid run id")])
    return Envelope(data=service.compare_runs(session, principal, experiment_id, ids))


@router.get(
    "/experiments/{experiment_id}/best-run",
    response_model=Envelope[BestRunRead | None],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_best_run(
    experiment_id: ExperimentId,
    principal: CurrentPrincipal,
    session: SessionDep,
    metric: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=250,
            pattern=KEY_PATTERN,
            description="By default `config.primary_metric`, else the first metric in alphabetical order.",
        ),
    ] = None,
    direction: Annotated[
        Direction | None,
        Query(
            description="By default the configured one, else `min` for names like loss or error, else `max`."
        ),
    ] = None,
) -> Envelope[BestRunRead | None]:
    """The active run with the best latest value of a metric; null when no run has one."""
    return Envelope(data=service.best_run(session, principal, experiment_id, metric, direction))


@router.get(RUN, response_model=Envelope[RunRead], responses=error_responses(401, 403, 404, 422, 429))
def get_run(
    experiment_id: ExperimentId, run_id: RunId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[RunRead]:
    """A run with its parameters, tags and latest metrics."""
    _, run = service.get_visible_run(session, principal, experiment_id, run_id, "read")
    return Envelope(data=service.run_read(session, run))


@router.put(
    f"{RUN}/status", response_model=Envelope[RunRead], responses=error_responses(401, 403, 404, 409, 422, 429)
)
def update_run_status(
    experiment_id: ExperimentId,
    run_id: RunId,
    body: RunStatusUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[RunRead]:
    """Start, complete, fail or kill a run; an ended run cannot run again (409)."""
    run = service.change_run_status(session, principal, experiment_id, run_id, body)
    return Envelope(data=service.run_read(session, run))


@router.post(
    f"{RUN}/params",
    response_model=Envelope[KeysLogged],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def log_run_params(
    experiment_id: ExperimentId,
    run_id: RunId,
    body: ParamsLog,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[KeysLogged]:
    """Log parameters. A parameter is set once: sending the same value again is fine, a
    different one is refused (409) and nothing of the request is stored."""
    keys = service.log_params(session, principal, experiment_id, run_id, body.params)
    return Envelope(data=KeysLogged(run_id=run_id, keys=keys))


@router.post(
    f"{RUN}/tags",
    response_model=Envelope[KeysLogged],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def set_run_tags(
    experiment_id: ExperimentId,
    run_id: RunId,
    body: TagsLog,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[KeysLogged]:
    """Set tags, adding new ones and replacing the values of existing ones."""
    keys = service.set_tags(session, principal, experiment_id, run_id, body.tags)
    return Envelope(data=KeysLogged(run_id=run_id, keys=keys))


# --- metrics -------------------------------------------------------------------------------
def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined, for ``openapi_extra``."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


METRICS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_refs(MetricsLog.model_json_schema())}},
    }
}
BYTES_PER_POINT = 512  # room for a 250-character name and its numbers


async def metrics_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw JSON of a metric batch, refused early when too large. Read before the
    database is touched, so a slow client never holds SQLite's write lock."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            "Send the metrics as JSON", details=[("content-type", "expected application/json")]
        )
    limit = settings.max_metric_batch * BYTES_PER_POINT + 64 * 1024
    too_large = PayloadTooLarge(
        f"A metric batch may be at most {limit} bytes", details=[("metrics", f"larger than {limit} bytes")]
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


MetricsBody = Annotated[bytes, Depends(metrics_body)]


@router.post(
    f"{RUN}/metrics",
    response_model=Envelope[MetricsLogged],
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429),
    openapi_extra=METRICS_BODY,
)
def log_run_metrics(
    experiment_id: ExperimentId,
    run_id: RunId,
    body: MetricsBody,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[MetricsLogged]:
    """Log a batch of metric points `{name, value, step, timestamp}` (up to 10,000 by
    default) in one request: one bulk insert, and the latest values kept up to date."""
    try:
        batch = MetricsLog.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    names = service.log_metrics(
        session, principal, experiment_id, run_id, batch.metrics, max_batch=settings.max_metric_batch
    )
    return Envelope(data=MetricsLogged(run_id=run_id, logged=len(batch.metrics), keys=names))


@router.get(
    f"{RUN}/metrics",
    response_model=Envelope[list[LatestMetricRead]],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_run_metrics(
    experiment_id: ExperimentId, run_id: RunId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[list[LatestMetricRead]]:
    """The latest value of each of the run's metrics, by name."""
    _, run = service.get_visible_run(session, principal, experiment_id, run_id, "read")
    latest = metric_store.latest_by_run(session, [run.id])[run.id]
    return Envelope(
        data=[
            LatestMetricRead(
                name=name, value=metric_value(value.value), step=value.step, timestamp=value.timestamp
            )
            for name, value in latest.items()
        ]
    )


@router.get(
    f"{RUN}/metrics/{{name:path}}",
    response_model=Envelope[MetricHistory],
    responses=error_responses(401, 403, 404, 422, 429, 503),
)
def get_metric_history(
    experiment_id: ExperimentId,
    run_id: RunId,
    name: Annotated[
        str,
        Path(
            max_length=250,
            pattern=KEY_PATTERN,
            description="The metric's name; it may contain `/`, as is or percent-encoded (`%2F`).",
        ),
    ],
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    heavy: HeavyDep,
    max_points: Annotated[
        int | None,
        Query(
            ge=10,
            le=10_000,
            description="Thin the series to at most this many points for a chart (first and last "
            "points, and the lowest and highest value in each of max_points/2 - 1 step ranges). "
            "Of a series longer than MAESTRO_METRIC_DOWNSAMPLE_MAX_SCAN points (1,000,000) only "
            "the latest that many are read.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Raw points per page.")] = 1000,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> Envelope[MetricHistory]:
    """A metric's points in step order: raw, a page at a time, or downsampled."""
    _, run = service.get_visible_run(session, principal, experiment_id, run_id, "read")
    metric_store.check_names([name])
    if max_points is not None:
        if cursor is not None:
            raise ValidationFailed(
                "A downsampled series has no pages",
                details=[("cursor", "cannot be combined with max_points")],
            )
        page = metric_store.downsampled(
            session,
            run.id,
            name,
            max_points,
            max_scan=settings.metric_downsample_max_scan,
            in_turn=partial(heavy.slot, owners_of(principal)),
        )
    else:
        page = metric_store.history(session, run.id, name, limit=limit, cursor=cursor)
    return Envelope(
        data=MetricHistory(
            name=name,
            total_points=page.total,
            downsampled=page.downsampled,
            points=[
                MetricPointRead(step=point.step, value=metric_value(point.value), timestamp=point.timestamp)
                for point in page.points
            ],
            has_next=page.next_cursor is not None,
            next_cursor=page.next_cursor,
        )
    )


# --- artifacts -----------------------------------------------------------------------------
MAX_PATH_LENGTH = service.MAX_PATH_LENGTH
ARTIFACT_FORM = UploadForm(file_field="file", text_fields=frozenset({"artifact_type", "description", "path"}))
DESCRIPTION_LIMIT = 2000
ARTIFACT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "artifact_type": {"type": "string", "enum": [kind.value for kind in ArtifactType]},
                        "description": {"type": "string", "maxLength": DESCRIPTION_LIMIT},
                        "path": {
                            "type": "string",
                            "maxLength": MAX_PATH_LENGTH,
                            "description": "Where the artifact sits among the run's, such as plots/roc.png; "
                            "the file's name when omitted. Relative, with / between parts.",
                        },
                    },
                }
            }
        },
    }
}


def _artifact_fields(fields: dict[str, str], filename: str | None) -> tuple[str, ArtifactType, str | None]:
    raw_type = fields.get("artifact_type", "").strip() or ArtifactType.other
    if raw_type not in ArtifactType.__members__:
        raise ValidationFailed(
            "Invalid upload", details=[("artifact_type", f"one of {', '.join(ArtifactType)}")]
        )
    description = fields.get("description", "").strip()
    if len(description) > DESCRIPTION_LIMIT:
        raise ValidationFailed(
            "Invalid upload", details=[("description", f"at most {DESCRIPTION_LIMIT} characters")]
        )
    if any(ord(char) < 32 and char not in "\t\n\r" for char in description):
        raise ValidationFailed(
            "Invalid upload", details=[("description", "must not contain control characters")]
        )
    if (char := find_invisible(description)) is not None:
        raise ValidationFailed("Invalid upload", details=[("description", invisible_message(char))])
    if "path" in fields:
        path = service.artifact_path(fields["path"])
    elif filename:
        path = service.artifact_path(filename, "file")
    else:
        raise ValidationFailed("Invalid upload", details=[("path", "send a path, or a file with a name")])
    return path, ArtifactType(raw_type), description or None


@router.post(
    f"{RUN}/artifacts",
    status_code=201,
    response_model=Envelope[ArtifactRead],
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429),
    openapi_extra=ARTIFACT_BODY,
)
async def upload_run_artifact(
    experiment_id: ExperimentId,
    run_id: RunId,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> Envelope[ArtifactRead]:
    """Upload a file for a run (multipart/form-data: `file`, `artifact_type`, `description`,
    `path`). It streams into the artifact store under the size limit; an artifact at
    the same path is replaced."""
    experiment, _ = await run_sync(
        partial(service.writable_run_for_upload, session, principal, experiment_id, run_id)
    )
    prefix = service.artifacts_prefix(experiment)

    async def before_file(fields: dict[str, str]) -> str:
        """Fields sent ahead of the file are checked before a byte of it is stored (the
        file's own name, known only now, is checked with the rest afterwards)."""
        if fields:
            _artifact_fields(fields, filename="placeholder")
        return prefix

    receiving = receive_upload(
        request, store, ARTIFACT_FORM, before_file, max_bytes=settings.max_artifact_bytes
    )
    async with staged_upload(session, store, receiving, stored_key) as upload:
        path, artifact_type, description = _artifact_fields(upload.fields, upload.filename)
        row = await run_sync(
            partial(
                service.record_artifact,
                session,
                principal,
                experiment_id,
                run_id,
                path=path,
                artifact_type=artifact_type,
                description=description,
                stored=upload.stored,
                content_type=upload.content_type,
                store=store,
            )
        )
    read = (await run_sync(partial(service.artifact_reads, session, [row])))[0]
    return Envelope(data=read)


@router.get(
    f"{RUN}/artifacts",
    response_model=Page[ArtifactRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_run_artifacts(
    experiment_id: ExperimentId,
    run_id: RunId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    prefix: Annotated[
        str | None,
        Query(max_length=MAX_PATH_LENGTH, pattern=r"^[^\x00]*$", description="Only paths starting so."),
    ] = None,
) -> Page[ArtifactRead]:
    """A run's artifacts by path."""
    _, run = service.get_visible_run(session, principal, experiment_id, run_id, "read")
    return paginate(
        session,
        service.artifacts_query(run, prefix),
        params,
        sort_column=RunArtifact.path,
        id_column=RunArtifact.id,
        order="asc",
        to_item=lambda rows: service.artifact_reads(session, rows),
    )


@router.get(
    f"{RUN}/artifacts/{{artifact_id}}/download",
    response_class=StreamingResponse,
    responses={**BINARY_RESPONSE, **error_responses(401, 403, 404, 422, 429)},
)
def download_run_artifact(
    experiment_id: ExperimentId,
    run_id: RunId,
    artifact_id: ArtifactId,
    principal: CurrentPrincipal,
    session: SessionDep,
    store: StoreDep,
) -> StreamingResponse:
    """Download an artifact, byte for byte as uploaded."""
    artifact = service.get_artifact(session, principal, experiment_id, run_id, artifact_id)
    return stored_file_response(
        store, artifact.storage_key, size=artifact.size, disposition=attachment(artifact.path, artifact.id)
    )
