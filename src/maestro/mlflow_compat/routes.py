"""The MLflow REST API (``/api/2.0/mlflow/…``, ``/api/2.0/mlflow-artifacts/…`` and the
``/api/3.0/mlflow/…`` routes the 3.x client calls), served twice: at the root, where the
project comes from the ``X-Maestro-Project`` header or ``MAESTRO_MLFLOW_DEFAULT_PROJECT``,
and under ``/mlflow/{project_id}``, so ``MLFLOW_TRACKING_URI=http://host:8000/mlflow/<id>``
needs no header (the client keeps the URI's path for REST and ``mlflow-artifacts:`` URIs).

The contract of these routes is MLflow's REST API, not Maestro's OpenAPI document, so
they are left out of it; they authenticate like every other route (Maestro access
tokens or API keys as ``Authorization: Bearer …``, which is how the client sends
``MLFLOW_TRACKING_TOKEN``) and answer errors in MLflow's shape,
``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": …}``, rendered by ``MlflowRoute``
for these routes only.

Each request costs as few thread hops as it can: the caller is authenticated from the
credential cache on the event loop (a worker thread asks the database only when the
cache does not know the credential), the JSON body is read and parsed (orjson) on the
loop, and the work runs in one worker thread that opens the transaction, does
everything, writes the audit row and commits, as the session dependency of Maestro's
own routes would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import orjson
from anyio.to_thread import run_sync
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from maestro.api.context import current_request_id
from maestro.api.deps import ReadingPrincipal, request_transaction
from maestro.api.downloads import stored_file_response
from maestro.api.errors import BUSY_RETRY_AFTER, CANCELLED_RETRY_AFTER, database_pressure
from maestro.api.mlflow_errors import INVALID, MISSING, MlflowError, mlflow_error
from maestro.api.multipart import staged_upload
from maestro.errors import MaestroError, PayloadTooLarge
from maestro.identity.rbac import Principal
from maestro.mlflow_compat import service
from maestro.mlflow_compat.service import Scope
from maestro.tracking.models import Lifecycle
from maestro.tracking.service import artifact_path

logger = logging.getLogger("maestro.mlflow")

PROJECT_HEADER = "x-maestro-project"
SCOPED_PREFIX = "/mlflow/{project_id}"
API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
BYTES_PER_POINT = 512
MAX_BODY_BYTES = 4 * 1024 * 1024  # anything but a metric batch


# --- errors in MLflow's shape --------------------------------------------------------------
def _detail(exc: MaestroError) -> str:
    if exc.details:
        detail = exc.details[0]
        return f"{exc.message}: {detail.field + ': ' if detail.field else ''}{detail.message}"
    return exc.message


# Errors whose message says it all; the others add their first detail.
_PLAIN_MESSAGE = frozenset({401, 403, 404, 429}) | frozenset(range(500, 600))


def error_of(exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, MLflow error code, message, headers) for an error raised anywhere below."""
    if isinstance(exc, MlflowError):
        return exc.status, exc.code, exc.message, {}
    if isinstance(exc, MaestroError):
        status, code = mlflow_error(exc.status_code)
        message = exc.message if exc.status_code in _PLAIN_MESSAGE else _detail(exc)
        return status, code, message, dict(exc.headers)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return 400, INVALID, f"Invalid request ({where}): {first.get('msg', 'invalid')}", {}
    if isinstance(exc, DataError):
        return 400, INVALID, "The request holds a value the database cannot store", {}
    if isinstance(exc, OperationalError) and (pressure := database_pressure(exc)) is not None:
        if pressure == "busy":
            message, retry_after = "The database is busy with other writes; retry shortly", BUSY_RETRY_AFTER
        else:
            message = "The request took longer than the server allows for one query; narrow it or retry later"
            retry_after = CANCELLED_RETRY_AFTER
        return 503, "TEMPORARILY_UNAVAILABLE", message, {"Retry-After": retry_after}
    if isinstance(exc, StarletteHTTPException):
        code = MISSING if exc.status_code == 404 else INVALID
        return exc.status_code, code, str(exc.detail), dict(exc.headers or {})
    raise exc


def error_response(exc: Exception) -> Response:
    status, code, message, headers = error_of(exc)
    return Response(
        orjson.dumps({"error_code": code, "message": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def in_mlflow_shape(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    """``handler``'s response, or any error it raises as MLflow's error response (an
    unexpected one as a 500 that quotes the request id). Shared by ``MlflowRoute`` and
    the fast path (``mlflow_compat.fast_path``), so both answer failures alike."""
    try:
        return await handler(request)
    except (
        MaestroError,
        MlflowError,
        RequestValidationError,
        DataError,
        StarletteHTTPException,
    ) as exc:
        return error_response(exc)
    except Exception as exc:
        if isinstance(exc, OperationalError) and database_pressure(exc) is not None:
            return error_response(exc)
        request_id = current_request_id()
        logger.exception("unhandled error in the MLflow API", extra={"request_id": request_id})
        return Response(
            orjson.dumps(
                {
                    "error_code": "INTERNAL_ERROR",
                    "message": f"An unexpected error occurred; quote request id {request_id} "
                    "when reporting it",
                }
            ),
            status_code=500,
            media_type="application/json",
        )


class MlflowRoute(APIRoute):
    """Renders every error of its routes, those of authentication and validation
    included, in MLflow's error shape; Maestro's own routes keep theirs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await in_mlflow_shape(handler, request)

        return route


# --- requests ------------------------------------------------------------------------------
def scope_of(request: Request) -> Scope:
    project_id = (
        request.path_params.get("project_id")
        or request.headers.get(PROJECT_HEADER)
        or request.app.state.settings.mlflow_default_project
    )
    return service.scope_of(project_id)


async def json_body(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The JSON object a request carries, read under ``limit`` bytes. Python's own JSON
    writer (and so some clients) spells NaN and infinity as bare words, which orjson
    refuses, so the standard parser has the last word."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body may be at most {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body may be at most {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise service.invalid("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise service.invalid("The request body must be a JSON object.")
    return body


def query_body(request: Request) -> dict[str, Any]:
    """Query parameters as a body: repeated ones (``stages``, ``experiment_ids``) as lists."""
    body: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in body:
            body[key] = [*body[key], value] if isinstance(body[key], list) else [body[key], value]
        else:
            body[key] = value
    return body


def transact(
    request: Request, principal: Principal, write: bool, work: Callable[..., Any], *args: Any
) -> Any:
    """Run ``work(session, principal, *args)`` in the request's transaction
    (``request_transaction``: the audit row of a change, the denials of a refusal, what
    waits for the commit), as Maestro's session dependency does."""
    with request_transaction(request, write=write) as session:
        return work(session, principal, *args)


def answer(data: dict[str, Any]) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


Work = Callable[..., dict[str, Any]]


def json_route(work: Work, *, write: bool = True, limit: Callable[[Request], int] | None = None) -> Any:
    """An endpoint taking a JSON body and answering ``work``'s dictionary."""

    async def endpoint(request: Request, principal: ReadingPrincipal) -> Response:
        scope = scope_of(request)
        body = await json_body(request, limit(request) if limit else MAX_BODY_BYTES)
        return answer(await run_sync(partial(transact, request, principal, write, work, scope, body)))

    endpoint.__name__ = endpoint.__qualname__ = work.__name__
    return endpoint


def query_route(work: Work, *, write: bool = False) -> Any:
    """An endpoint taking its parameters from the query string (MLflow's GETs; its
    DELETEs carry JSON bodies and use ``json_route``)."""

    async def endpoint(request: Request, principal: ReadingPrincipal) -> Response:
        scope = scope_of(request)
        return answer(
            await run_sync(partial(transact, request, principal, write, work, scope, query_body(request)))
        )

    endpoint.__name__ = endpoint.__qualname__ = work.__name__
    return endpoint


def metric_batch_limit(request: Request) -> int:
    return request.app.state.settings.max_metric_batch * BYTES_PER_POINT + 256 * 1024


def log_batch(session: Session, principal: Principal, scope: Scope, body: dict[str, Any], limit: int) -> dict:
    return service.log_batch(session, principal, scope, body, limit)


def _named(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``function`` under another name (route and audit names come from it)."""

    def named(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    named.__name__ = named.__qualname__ = name
    return named


def _lifecycle(work: Callable[..., dict], stage: Lifecycle, name: str) -> Work:
    return _named(lambda session, principal, scope, body: work(session, principal, scope, body, stage), name)


# --- logged models (an id in the path) -----------------------------------------------------
def model_route(work: Callable[..., dict], *, write: bool, with_body: bool) -> Any:
    async def endpoint(model_id: str, request: Request, principal: ReadingPrincipal) -> Response:
        scope = scope_of(request)
        args: tuple[Any, ...] = (scope, model_id)
        if with_body:
            args += (await json_body(request),)
        return answer(await run_sync(partial(transact, request, principal, write, work, *args)))

    endpoint.__name__ = endpoint.__qualname__ = work.__name__
    return endpoint


async def delete_logged_model_tag(
    model_id: str, tag_key: str, request: Request, principal: ReadingPrincipal
) -> Response:
    scope = scope_of(request)
    return answer(
        await run_sync(
            partial(
                transact, request, principal, True, service.delete_logged_model_tag, scope, model_id, tag_key
            )
        )
    )


async def delete_logged_model(model_id: str, request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    store = request.app.state.store
    return answer(
        await run_sync(
            partial(transact, request, principal, True, service.delete_logged_model, scope, model_id, store)
        )
    )


# --- artifacts -----------------------------------------------------------------------------
def _place(path: str) -> service.ArtifactPlace:
    place = service.artifact_place(path, artifact_path)
    if place is None:
        raise service.invalid(
            "Artifacts live under <experiment_id>/<run_id>/artifacts/… or "
            "<experiment_id>/models/<model_id>/artifacts/…"
        )
    return place


def _owner_prefix(session: Session, principal: Principal, scope: Scope, place: service.ArtifactPlace) -> str:
    experiment, _, _ = service.artifact_owner(session, principal, scope, place, "write")
    return service.artifacts_prefix(experiment)


async def upload_artifact(artifact_path: str, request: Request, principal: ReadingPrincipal) -> Response:
    """A file streamed into the artifact store under the size limit, then recorded at its
    path; nothing is written outside the store, whatever the path says."""
    scope = scope_of(request)
    place = _place(artifact_path)
    if not place.path:
        raise service.invalid("Name the file to upload.")
    settings = request.app.state.settings
    store = request.app.state.store
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_artifact_bytes:
        raise PayloadTooLarge(f"An artifact may be at most {settings.max_artifact_bytes} bytes")
    prefix = await run_sync(partial(transact, request, principal, False, _owner_prefix, scope, place))
    receiving = store.put_async_stream(prefix, request.stream(), max_bytes=settings.max_artifact_bytes)
    async with staged_upload(None, store, receiving, lambda stored: stored.key) as stored:
        await run_sync(
            partial(
                transact,
                request,
                principal,
                True,
                service.record_artifact,
                scope,
                place,
                stored,
                request.headers.get("content-type"),
                store,
            )
        )
    return Response(status_code=200)


async def list_artifacts(request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    path = request.query_params.get("path", "")
    place = service.artifact_place(path, artifact_path) if path else None
    return answer(
        await run_sync(partial(transact, request, principal, False, service.list_artifacts, scope, place))
    )


async def download_artifact(artifact_path: str, request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    place = _place(artifact_path)
    store = request.app.state.store
    key, size = await run_sync(
        partial(transact, request, principal, False, service.artifact_file, scope, place)
    )
    return await run_sync(partial(stored_file_response, store, key, size=size))


async def delete_artifacts(artifact_path: str, request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    place = _place(artifact_path)
    store = request.app.state.store
    return answer(
        await run_sync(
            partial(transact, request, principal, True, service.delete_artifacts, scope, place, store)
        )
    )


def list_run_artifacts(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    return service.list_run_artifacts(session, principal, scope, body, artifact_path)


# --- registry ------------------------------------------------------------------------------
async def create_model_version(request: Request, principal: ReadingPrincipal) -> Response:
    """Registering copies the model file named in the source's ``MLmodel`` into the
    registry first, outside the write transaction, then records the version."""
    scope = scope_of(request)
    body = await json_body(request)
    settings = request.app.state.settings
    store = request.app.state.store
    prepared = await run_sync(
        partial(
            transact,
            request,
            principal,
            False,
            service.prepare_version,
            scope,
            body,
            store,
            settings.max_model_bytes,
            artifact_path,
        )
    )
    try:
        return answer(
            await run_sync(
                partial(
                    transact,
                    request,
                    principal,
                    True,
                    service.create_version,
                    scope,
                    prepared,
                    store,
                    settings,
                )
            )
        )
    except BaseException:
        if prepared.stored is not None:
            with anyio.CancelScope(shield=True):
                await run_sync(partial(store.delete, prepared.stored.key))
        raise


async def delete_registered_model(request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    body = await json_body(request)
    store = request.app.state.store
    return answer(
        await run_sync(
            partial(transact, request, principal, True, service.delete_registered_model, scope, body, store)
        )
    )


async def delete_model_version(request: Request, principal: ReadingPrincipal) -> Response:
    scope = scope_of(request)
    body = await json_body(request)
    store = request.app.state.store
    return answer(
        await run_sync(
            partial(transact, request, principal, True, service.delete_version, scope, body, store)
        )
    )


def server_info(_session: Session, _principal: Principal, _scope: Scope, _body: dict[str, Any]) -> dict:
    """What the 3.x client asks before artifact transfers: plain proxied uploads and
    downloads, no multipart, no workspaces."""
    return {
        "store_type": "SqlStore",
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "features_enabled": {},
    }


async def not_found(request: Request, principal: ReadingPrincipal) -> Response:
    raise MlflowError(
        f"{request.method} {request.url.path[:200]} is not an endpoint of this server",
        "ENDPOINT_NOT_FOUND",
        404,
    )


# --- the route table -----------------------------------------------------------------------
def _routes() -> list[tuple[str, str, Any]]:
    s = service
    return [
        # experiments
        ("POST", f"{API}/experiments/create", json_route(s.create_experiment)),
        ("GET", f"{API}/experiments/get", query_route(s.get_experiment)),
        ("GET", f"{API}/experiments/get-by-name", query_route(s.get_experiment_by_name)),
        ("POST", f"{API}/experiments/search", json_route(s.search_experiments, write=False)),
        ("GET", f"{API}/experiments/search", query_route(s.search_experiments)),
        ("POST", f"{API}/experiments/update", json_route(s.update_experiment)),
        (
            "POST",
            f"{API}/experiments/delete",
            json_route(_lifecycle(s.set_experiment_lifecycle, Lifecycle.deleted, "delete_experiment")),
        ),
        (
            "POST",
            f"{API}/experiments/restore",
            json_route(_lifecycle(s.set_experiment_lifecycle, Lifecycle.active, "restore_experiment")),
        ),
        ("POST", f"{API}/experiments/set-experiment-tag", json_route(s.set_experiment_tag)),
        ("POST", f"{API}/experiments/delete-experiment-tag", json_route(s.delete_experiment_tag)),
        # runs
        ("POST", f"{API}/runs/create", json_route(s.create_run)),
        ("GET", f"{API}/runs/get", query_route(s.get_run)),
        ("POST", f"{API}/runs/update", json_route(s.update_run)),
        (
            "POST",
            f"{API}/runs/delete",
            json_route(_lifecycle(s.set_run_lifecycle, Lifecycle.deleted, "delete_run")),
        ),
        (
            "POST",
            f"{API}/runs/restore",
            json_route(_lifecycle(s.set_run_lifecycle, Lifecycle.active, "restore_run")),
        ),
        ("POST", f"{API}/runs/log-metric", json_route(s.log_metric)),
        ("POST", f"{API}/runs/log-parameter", json_route(s.log_param)),
        ("POST", f"{API}/runs/log-batch", log_batch_route()),
        ("POST", f"{API}/runs/set-tag", json_route(s.set_tag)),
        ("POST", f"{API}/runs/delete-tag", json_route(s.delete_tag)),
        ("POST", f"{API}/runs/search", json_route(s.search_runs, write=False)),
        ("POST", f"{API}/runs/log-inputs", json_route(_named(s.accept_run_io, "log_inputs"))),
        ("POST", f"{API}/runs/outputs", json_route(_named(s.accept_run_io, "log_outputs"))),
        ("POST", f"{API}/runs/log-model", json_route(_named(s.accept_run_io, "log_model"))),
        ("GET", f"{API}/metrics/get-history", query_route(s.metric_history)),
        ("GET", f"{API}/artifacts/list", query_route(list_run_artifacts)),
        # logged models
        ("POST", f"{API}/logged-models", json_route(s.create_logged_model)),
        ("POST", f"{API}/logged-models/search", json_route(s.search_logged_models, write=False)),
        (
            "GET",
            f"{API}/logged-models/{{model_id}}",
            model_route(s.get_logged_model, write=False, with_body=False),
        ),
        (
            "PATCH",
            f"{API}/logged-models/{{model_id}}",
            model_route(s.finalize_logged_model, write=True, with_body=True),
        ),
        ("DELETE", f"{API}/logged-models/{{model_id}}", delete_logged_model),
        (
            "PATCH",
            f"{API}/logged-models/{{model_id}}/tags",
            model_route(s.set_logged_model_tags, write=True, with_body=True),
        ),
        ("DELETE", f"{API}/logged-models/{{model_id}}/tags/{{tag_key}}", delete_logged_model_tag),
        (
            "POST",
            f"{API}/logged-models/{{model_id}}/params",
            model_route(s.log_logged_model_params, write=True, with_body=True),
        ),
        # artifacts
        ("GET", ARTIFACTS, list_artifacts),
        ("PUT", f"{ARTIFACTS}/{{artifact_path:path}}", upload_artifact),
        ("GET", f"{ARTIFACTS}/{{artifact_path:path}}", download_artifact),
        ("DELETE", f"{ARTIFACTS}/{{artifact_path:path}}", delete_artifacts),
        # registered models
        ("POST", f"{API}/registered-models/create", json_route(s.create_registered_model)),
        ("GET", f"{API}/registered-models/get", query_route(s.get_registered_model)),
        ("GET", f"{API}/registered-models/search", query_route(s.search_registered_models)),
        ("PATCH", f"{API}/registered-models/update", json_route(s.update_registered_model)),
        ("POST", f"{API}/registered-models/rename", json_route(s.rename_registered_model)),
        ("DELETE", f"{API}/registered-models/delete", delete_registered_model),
        ("POST", f"{API}/registered-models/get-latest-versions", json_route(s.latest_versions, write=False)),
        ("GET", f"{API}/registered-models/get-latest-versions", query_route(s.latest_versions)),
        ("POST", f"{API}/registered-models/set-tag", json_route(s.set_registered_model_tag)),
        ("DELETE", f"{API}/registered-models/delete-tag", json_route(s.delete_registered_model_tag)),
        ("POST", f"{API}/registered-models/alias", json_route(s.set_alias)),
        ("GET", f"{API}/registered-models/alias", query_route(s.get_alias)),
        ("DELETE", f"{API}/registered-models/alias", json_route(s.delete_alias)),
        # model versions
        ("POST", f"{API}/model-versions/create", create_model_version),
        ("GET", f"{API}/model-versions/get", query_route(s.get_version)),
        ("GET", f"{API}/model-versions/search", query_route(s.search_versions)),
        ("PATCH", f"{API}/model-versions/update", json_route(s.update_version)),
        ("DELETE", f"{API}/model-versions/delete", delete_model_version),
        ("POST", f"{API}/model-versions/transition-stage", json_route(s.transition_stage)),
        ("GET", f"{API}/model-versions/get-download-uri", query_route(s.download_uri)),
        ("POST", f"{API}/model-versions/set-tag", json_route(s.set_version_tag)),
        ("DELETE", f"{API}/model-versions/delete-tag", json_route(s.delete_version_tag)),
        # the server
        ("GET", "/api/3.0/mlflow/server-info", query_route(server_info)),
        ("GET", f"{API}/server-info", query_route(_named(server_info, "server_info_v2"))),
    ]


def log_batch_route() -> Any:
    async def log_batch_endpoint(request: Request, principal: ReadingPrincipal) -> Response:
        scope = scope_of(request)
        body = await json_body(request, metric_batch_limit(request))
        limit = request.app.state.settings.max_metric_batch
        return answer(
            await run_sync(partial(transact, request, principal, True, log_batch, scope, body, limit))
        )

    log_batch_endpoint.__name__ = log_batch_endpoint.__qualname__ = "log_batch"
    return log_batch_endpoint


CATCH_ALL = (
    "/api/2.0/mlflow/{rest:path}",
    "/api/2.0/mlflow-artifacts/{rest:path}",
    "/api/3.0/mlflow/{rest:path}",
)


# Starlette tries routes in order, and each try costs microseconds: the routes an MLflow
# client calls thousands of times a minute go in a router the app includes first, the rest
# after every Maestro route (so Maestro's own routes never walk past them).
HOT = frozenset({f"{API}/runs/log-batch", f"{API}/runs/log-metric", f"{API}/runs/search"})


def build_router(*, hot: bool) -> APIRouter:
    router = APIRouter(route_class=MlflowRoute, include_in_schema=False, tags=["mlflow"])
    for prefix in ("", SCOPED_PREFIX):
        for method, path, endpoint in _routes():
            if (path in HOT) == hot:
                router.add_api_route(prefix + path, endpoint, methods=[method], name=endpoint.__name__)
        if not hot:
            for path in CATCH_ALL:
                router.add_api_route(
                    prefix + path,
                    not_found,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                    name="endpoint_not_found",
                )
    return router


hot_router = build_router(hot=True)
router = build_router(hot=False)
