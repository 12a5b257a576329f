"""The model server's own routes, under ``/api/v1`` (the serving spec's paths and fields),
and what every route of the model server shares: reading bodies, the caller
dependencies with their rate limits, and errors rendered in each protocol's shape.

Prediction bodies are parsed with orjson straight into numpy (``serving.inputs``);
pydantic models here only document the shapes in the OpenAPI document. Each
prediction runs on the prediction threads in one hop: parse, predict, serialise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from maestro import __version__
from maestro.api.bodies import read_limited
from maestro.api.envelope import ErrorDetail
from maestro.api.errors import error_response, error_responses, validation_details
from maestro.api.mlflow_errors import mlflow_error
from maestro.db import utc_timestamp
from maestro.errors import MaestroError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from maestro.model_server.auth import Caller
from maestro.model_server.jobs import CHUNK_ROWS
from maestro.model_server.schemas import (
    JSON,
    AsyncJobRead,
    AsyncPredictRequest,
    BatchPredictRequest,
    BatchPredictResponse,
    HealthRead,
    ModelList,
    ModelLoad,
    ModelLoaded,
    ModelRead,
    PredictRequest,
    PredictResponse,
    StatusRead,
    body_doc,
)
from maestro.model_server.server import LoadRequest, ModelServer, ServedModel
from maestro.runtimes.errors import InputError


# --- shared by every protocol ---------------------------------------------------------------
def server_of(request: Request) -> ModelServer:
    return request.app.state.model_server


def check_json_content_type(request: Request) -> None:
    """JSON bodies only; a request without a content type is taken as JSON (several
    inference clients send none)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != JSON and not mime.endswith("+json"):
        raise UnsupportedMediaType(f"Send the body as {JSON}, not {mime or 'an empty content type'}")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body may have at most {limit:,} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes (by its Content-Length, else while reading).
    Callers check the content type before (415 comes before 413)."""
    return await read_limited(request, limit, _too_large)


async def read_json_body(request: Request, server: ModelServer) -> bytes:
    """A prediction body: its content type checked (415), then read under
    ``MAESTRO_MODEL_SERVER_MAX_BODY_BYTES`` (413). The routes and the fast path
    (``model_server.fast_path``) both read it here."""
    check_json_content_type(request)
    return await read_body(request, server.settings.model_server_max_body_bytes)


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("invalid_json", f"The body is not valid JSON: {exc}", field="body") from None
    if not isinstance(parsed, dict):
        raise InputError("not_an_object", "The body must be a JSON object", field="body")
    return parsed


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type=JSON,
        headers=headers,
    )


async def authenticated(request: Request, server: ModelServer, group: str | None) -> Caller:
    """The caller, authenticated (the platform is asked only when the credential is not
    remembered), with the request counted against ``group``'s rate limit. What the
    routes' caller dependencies and the fast path both call."""
    caller = server.auth.cached(request)
    if caller is None:
        caller = await run_in_threadpool(server.auth.check_platform, request)
    request.state.caller = caller
    if group is not None:
        request.state.rate_limit_headers = {}
        request.state.rate_limit_headers = server.rate_limit(group, caller)
    return caller


def caller_for(group: str | None) -> Any:
    """A dependency authenticating the caller and counting the request against
    ``group``'s limit (``authenticated``)."""

    async def dependency(request: Request) -> Caller:
        return await authenticated(request, server_of(request), group)

    dependency.__name__ = f"model_server_caller_{group or 'any'}"
    return dependency


AnyCaller = Annotated[Caller, Depends(caller_for(None))]
PredictCaller = Annotated[Caller, Depends(caller_for("predict"))]
BatchCaller = Annotated[Caller, Depends(caller_for("batch"))]
ManagementCaller = Annotated[Caller, Depends(caller_for("management"))]


# --- errors in each protocol's shape ----------------------------------------------------------
MLFLOW_PATHS = frozenset({"/invocations", "/ping", "/health", "/version"})


def protocol_error(
    request: Request,
    status: int,
    message: str,
    *,
    code: str | None = None,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> Response:
    """The error in the shape the path's protocol expects: ``{"error"}`` under /v2,
    MLflow's ``{"error_code", "message"}`` on its routes, Maestro's elsewhere."""
    path = request.url.path
    if path == "/v2" or path.startswith("/v2/"):
        status = 400 if status == 422 else status
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    if path in MLFLOW_PATHS:
        status, error_code = mlflow_error(status)
        if reason in ("invalid_json", "not_an_object", "malformed"):
            error_code = "BAD_REQUEST"
        return JSONResponse(
            {"error_code": error_code, "message": message}, status_code=status, headers=headers
        )
    return error_response(status, message, code=code, details=details or [], headers=headers)


async def on_maestro_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MaestroError)
    return protocol_error(
        request,
        exc.status_code,
        exc.message,
        code=exc.code,
        details=exc.details,
        headers=exc.headers,
        reason=getattr(exc, "reason", None),
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return protocol_error(
        request, 422, "Invalid input parameters", details=validation_details(exc.errors()), reason="malformed"
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = {404: "No such route", 405: "This method is not allowed on this route"}.get(
        exc.status_code, str(exc.detail)
    )
    return protocol_error(request, exc.status_code, message, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MaestroError, on_maestro_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)


# --- building responses ---------------------------------------------------------------------------
_PREDICT_FIELDS = frozenset({"features", "model_name", "return_probabilities"})


def _fields(doc: dict[str, Any], allowed: frozenset[str]) -> tuple[Any, str | None, bool]:
    unknown = next((key for key in doc if key not in allowed), None)
    if unknown is not None:
        hint = " (send the rows inline in features)" if unknown in ("data_path", "output_path") else ""
        raise ValidationFailed(
            f"{str(unknown)[:100]!r} is not a field of this request{hint}",
            details=[(str(unknown)[:100], "unknown field")],
        )
    if "features" not in doc:
        raise ValidationFailed("The body needs features", details=[("features", "required")])
    name = doc.get("model_name")
    if name is not None and not isinstance(name, str):
        raise ValidationFailed("model_name must be a string", details=[("model_name", "not a string")])
    proba = doc.get("return_probabilities", False)
    if not isinstance(proba, bool):
        raise ValidationFailed(
            "return_probabilities must be true or false", details=[("return_probabilities", "not a boolean")]
        )
    return doc["features"], name, proba


def _one_row(features: Any) -> list[Any]:
    if isinstance(features, dict):
        return [features]
    if isinstance(features, list) and features and not any(isinstance(v, list | dict) for v in features):
        return [features]
    raise ValidationFailed(
        "features holds one row: a list of numbers or an object of named features; "
        "send several rows to /api/v1/batch-predict",
        details=[("features", "one row expected")],
    )


def _classes(model: ServedModel) -> list[Any] | None:
    return model.runtime.classes


def predict_one(server: ModelServer, caller: Caller, body: bytes, path_name: str | None) -> Response:
    doc = parse_object(body)
    features, name, proba = _fields(doc, _PREDICT_FIELDS)
    model = server.served(caller, path_name if path_name is not None else name)
    matrix = model.runtime.to_matrix(_one_row(features), prefix="features.")
    result = model.predict(matrix, probabilities=proba, protocol="maestro")
    value = result.labels.tolist()[0]
    return json_response(
        {
            "prediction": value,
            "prediction_label": model.label_texts([value])[0],
            "probabilities": result.probabilities[0].tolist() if result.probabilities is not None else None,
            "classes": _classes(model),
            "model_name": model.name,
            "model_version": model.version,
            "prediction_time": round(result.seconds, 6),
            "timestamp": utc_timestamp(),
        }
    )


def batch_result(model: ServedModel, matrix: np.ndarray, proba: bool, protocol: str) -> dict[str, Any]:
    result = model.predict(matrix, probabilities=proba, protocol=protocol)
    values = result.labels.tolist()
    texts = model.label_texts(values)
    if result.probabilities is not None:
        rows = result.probabilities.tolist()
        confidence = result.probabilities.max(axis=1).tolist()
        predictions = [
            {"prediction": v, "prediction_label": t, "confidence": c, "probabilities": p}
            for v, t, c, p in zip(values, texts, confidence, rows, strict=True)
        ]
    else:
        predictions = [
            {"prediction": v, "prediction_label": t, "confidence": None}
            for v, t in zip(values, texts, strict=True)
        ]
    return {
        "predictions": predictions,
        "count": len(predictions),
        "classes": _classes(model),
        "model_name": model.name,
        "model_version": model.version,
        "prediction_time": round(result.seconds, 6),
        "timestamp": utc_timestamp(),
    }


def predict_batch(server: ModelServer, caller: Caller, body: bytes) -> Response:
    doc = parse_object(body)
    features, name, proba = _fields(doc, _PREDICT_FIELDS)
    model = server.served(caller, name)
    matrix = model.runtime.to_matrix(
        features, max_rows=server.settings.model_server_max_batch_rows, prefix="features."
    )
    return json_response(batch_result(model, matrix, proba, "maestro"))


async def answer_predict(
    server: ModelServer, request: Request, caller: Caller, path_name: str | None
) -> Response:
    """``POST /api/v1/predict[/{model_name}]`` once the caller is known, for the routes
    and the fast path alike. A small body for an ONNX model named in the path, whose
    access decision is known, runs on the event loop (``ModelServer.runs_inline``)."""
    body = await read_json_body(request, server)
    if path_name is not None and server.runs_inline(caller, path_name, len(body)):
        return predict_one(server, caller, body, path_name)
    return await server.run(predict_one, server, caller, body, path_name)


async def answer_batch(server: ModelServer, request: Request, caller: Caller) -> Response:
    """``POST /api/v1/batch-predict`` once the caller is known (routes and fast path)."""
    body = await read_json_body(request, server)
    return await server.run(predict_batch, server, caller, body)


def result_estimate(model: ServedModel, rows: int, proba: bool) -> int:
    """A generous guess at the bytes of an asynchronous result, reserved when the job is
    submitted (the real size is counted as it is written)."""
    longest = max((len(text) for text in (model.labels.names if model.labels else ())), default=4)
    per_row = 96 + 2 * longest
    if proba:
        per_row += 32 + 26 * len(model.runtime.classes or [])
    return 256 + rows * per_row


def submit_async(server: ModelServer, caller: Caller, body: bytes) -> dict[str, Any]:
    doc = parse_object(body)
    features, name, proba = _fields(doc, _PREDICT_FIELDS)
    model = server.served(caller, name)
    matrix = model.runtime.to_matrix(
        features, max_rows=server.settings.model_server_async_max_rows, prefix="features."
    )

    def work(progress: Callable[[float], None], write: Callable[[bytes], None]) -> None:
        """The result as ``batch_result`` shapes it, written a chunk of rows at a time."""
        write(b'{"predictions":[')
        seconds, first = 0.0, True
        for start in range(0, len(matrix), CHUNK_ROWS):
            part = batch_result(model, matrix[start : start + CHUNK_ROWS], proba, "async")
            seconds += part["prediction_time"]
            rows = orjson.dumps(part["predictions"], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
            write(rows if first else b"," + rows)
            first = False
            progress((start + CHUNK_ROWS) / len(matrix))
        tail = {
            "count": len(matrix),
            "classes": _classes(model),
            "model_name": model.name,
            "model_version": model.version,
            "prediction_time": round(seconds, 6),
            "timestamp": utc_timestamp(),
        }
        write(b"]," + orjson.dumps(tail, option=orjson.OPT_SERIALIZE_NUMPY)[1:])

    scope = caller.id if caller.is_operator else (caller.organization_id or caller.id)
    estimate = result_estimate(model, len(matrix), proba)
    job = server.jobs.submit(caller.id, scope, model.name, len(matrix), estimate, work)
    return job.describe()


def _load_request(doc: dict[str, Any]) -> LoadRequest:
    allowed = set(ModelLoad.model_fields)
    unknown = next((key for key in doc if key not in allowed), None)
    if unknown is not None:
        raise ValidationFailed(
            f"{str(unknown)[:100]!r} is not a field of this request",
            details=[(str(unknown)[:100], "unknown")],
        )
    for key, value in doc.items():
        if value is not None and not isinstance(value, str):
            raise ValidationFailed(f"{key} must be a string", details=[(key, "not a string")])
        if isinstance(value, str) and "\x00" in value:
            raise ValidationFailed(f"{key} may not contain NUL characters", details=[(key, "NUL character")])
    if doc.get("version") and doc.get("alias"):
        raise ValidationFailed("Give version or alias, not both", details=[("alias", "with version")])
    path = doc.get("model_path")
    ref = doc.get("model_id") or doc.get("registry_model") or (None if path else doc.get("model_name"))
    if path and ref:
        raise ValidationFailed(
            "Give model_path (a file) or a registry model, not both",
            details=[("model_path", "with a registry model")],
        )
    return LoadRequest(
        served_name=doc.get("model_name"),
        model_path=path,
        model_ref=ref,
        project_id=doc.get("project_id"),
        version=doc.get("version"),
        alias=doc.get("alias"),
    )


def _model_read(server: ModelServer, model: ServedModel) -> dict[str, Any]:
    default = model.namespace is None and model.name == server.default_name
    return {**model.describe(), "default": default}


# --- routes -------------------------------------------------------------------------------------------
router = APIRouter(prefix="/api/v1", tags=["model-server"])
PREDICT_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 503)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=body_doc(PredictRequest),
    summary="Predict one row with the default model (or the body's model_name)",
)
async def predict(request: Request, caller: PredictCaller) -> Response:
    return await answer_predict(server_of(request), request, caller, None)


@router.post(
    "/predict/{model_name}",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=body_doc(PredictRequest),
    summary="Predict one row with a named model",
)
async def predict_with(model_name: str, request: Request, caller: PredictCaller) -> Response:
    return await answer_predict(server_of(request), request, caller, model_name)


@router.post(
    "/batch-predict",
    response_model=BatchPredictResponse,
    responses=PREDICT_ERRORS,
    openapi_extra=body_doc(BatchPredictRequest),
    summary="Predict up to 1,000 rows",
)
async def batch_predict(request: Request, caller: BatchCaller) -> Response:
    return await answer_batch(server_of(request), request, caller)


@router.post(
    "/predict-async",
    status_code=202,
    response_model=AsyncJobRead,
    responses=PREDICT_ERRORS,
    openapi_extra=body_doc(AsyncPredictRequest),
    summary="Queue a prediction job for many rows",
)
async def predict_async(request: Request, caller: BatchCaller) -> Response:
    server = server_of(request)
    body = await read_json_body(request, server)
    job = await server.run(submit_async, server, caller, body)
    url = f"/api/v1/jobs/{job['job_id']}/status"
    return json_response({**job, "status_url": url}, status_code=202, headers={"Location": url})


@router.get(
    "/jobs/{job_id}/status",
    response_model=AsyncJobRead,
    responses=error_responses(401, 404),
    summary="An asynchronous job's status, and its result once completed",
)
async def job_status(job_id: str, request: Request, caller: AnyCaller) -> Response:
    jobs = server_of(request).jobs
    job = jobs.get(caller.id, job_id)
    # The status first: the job may finish meanwhile, and a "completed" answer must carry
    # its result (the file is in place before the status says so).
    described = {**job.describe(), "status_url": f"/api/v1/jobs/{job.id}/status"}
    if described["status"] == "completed":
        result = await run_in_threadpool(jobs.result, job)
        if result is not None:
            described["result"] = orjson.Fragment(result)  # as written: never parsed again
    return json_response(described)


@router.get("/models", response_model=ModelList, responses=error_responses(401, 503), summary="Loaded models")
async def list_models(request: Request, caller: AnyCaller) -> Response:
    server = server_of(request)
    models = await run_in_threadpool(server.visible_models, caller)
    return json_response(
        {
            "models": [_model_read(server, model) for model in models],
            "default_model": server.default_for(caller),
            "count": len(models),
        }
    )


@router.post(
    "/models/load",
    response_model=ModelLoaded,
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429, 503),
    openapi_extra=body_doc(ModelLoad),
    summary="Load a model from the registry or the models directory",
)
async def load_model(request: Request, caller: ManagementCaller) -> Response:
    server = server_of(request)
    check_json_content_type(request)
    body = await read_body(request, 1024 * 1024)
    load = _load_request(parse_object(body))
    served, previous = await run_in_threadpool(server.load, caller, load)
    return json_response(
        {**_model_read(server, served), "replaced_version": previous.version if previous else None}
    )


@router.delete(
    "/models/{model_name}",
    response_model=ModelRead,
    responses=error_responses(401, 403, 404, 429, 503),
    summary="Unload a model",
)
async def unload_model(model_name: str, request: Request, caller: ManagementCaller) -> Response:
    server = server_of(request)
    model = await run_in_threadpool(server.unload, caller, model_name)
    return json_response({**model.describe(), "default": False})


@router.get(
    "/models/{model_name}/info",
    response_model=ModelRead,
    responses=error_responses(401, 404, 503),
    summary="A loaded model's metadata",
)
async def model_info(model_name: str, request: Request, caller: AnyCaller) -> Response:
    server = server_of(request)
    model = await run_in_threadpool(server.served, caller, model_name)
    return json_response(_model_read(server, model))


def _memory() -> dict[str, Any]:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        import os

        return {"rss_bytes": pages * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, ValueError, IndexError):
        import resource

        return {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def health_document(server: ModelServer) -> tuple[int, dict[str, Any]]:
    preload = server.preload
    status = {"ready": "healthy", "failed": "unhealthy"}.get(preload.status, "loading")
    document = {
        "status": status,
        "ready": server.ready,
        "timestamp": utc_timestamp(),
        "checks": {
            "models": {
                "loaded": len(server.models),  # the operator's only: the probe is anonymous
                "status": "healthy" if server.ready else preload.status,
                "preload": {"total": preload.total, "loaded": preload.loaded, "errors": preload.errors},
            },
            "memory": {**_memory(), "status": "healthy"},
        },
        "version": __version__,
    }
    return (200 if server.ready else 503), document


@router.get(
    "/health",
    response_model=HealthRead,
    responses={503: {"model": HealthRead, "description": "Not ready: preloading, or a preload failed"}},
    summary="Readiness: 200 once every preloaded model is loaded and warmed",
)
async def health(request: Request) -> Response:
    status, document = health_document(server_of(request))
    return json_response(document, status_code=status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
    summary="Prometheus metrics",
)
async def metrics(request: Request, caller: AnyCaller) -> Response:
    """Everything for an operator key (what Prometheus scrapes with); for anyone else only
    the series of the models they may see."""
    from prometheus_client import CONTENT_TYPE_LATEST

    server = server_of(request)
    if caller.is_operator and caller.organization_id is None:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)
    models = await run_in_threadpool(server.visible_models, caller)
    visible = {(model.namespace or "", model.name) for model in models}
    return Response(server.metrics.render(visible), media_type=CONTENT_TYPE_LATEST)


@router.get("/status", response_model=StatusRead, responses=error_responses(401), summary="Detailed status")
async def status(request: Request, caller: AnyCaller) -> Response:
    """The models the caller may see and its own jobs; to an operator key (without
    X-Organization-ID) everything: every model and job, preloading, cache, memory, settings."""
    server = server_of(request)
    settings = server.settings
    models = await run_in_threadpool(server.visible_models, caller)
    counts = server.jobs.counts()
    for name, count in counts.items():
        server.metrics.async_jobs.labels(name).set(count)
    document: dict[str, Any] = {
        "status": {"ready": "healthy", "failed": "unhealthy"}.get(server.preload.status, "loading"),
        "version": __version__,
        "uptime_seconds": round(__import__("time").monotonic() - server.started, 3),
        "models": [
            {
                "name": m.name,
                "namespace": m.namespace,
                "version": m.version,
                "serving": m.runtime.serving,
                "source": m.source.kind,
            }
            for m in models
        ],
        "default_model": server.default_for(caller),
        "preload": None,
        "cache": None,
        "async_jobs": server.jobs.counts(caller.id),
        "memory": None,
        "settings": None,
    }
    if not (caller.is_operator and caller.organization_id is None):
        return json_response(document)
    stats = server.cache.stats()
    document.update(
        {
            "preload": {
                "status": server.preload.status,
                "total": server.preload.total,
                "loaded": server.preload.loaded,
                "errors": server.preload.errors,
            },
            "cache": {
                "models": len(stats.entries),
                "max_models": server.cache.max_models,
                "memory_bytes": server.cache.total_bytes,
                "max_bytes": server.cache.max_bytes,
                "loads": stats.loads,
                "load_failures": stats.load_failures,
                "evictions": stats.evictions,
            },
            "async_jobs": {**counts, "result_bytes": server.jobs.used_bytes()},
            "memory": _memory(),
            "settings": {
                "authentication": server.auth.modes,
                "rate_limits": {group: str(item) for group, item in server.limits.items()}
                if server.limiter.enabled
                else None,
                "models_dir": str(settings.model_server_models_dir)
                if settings.model_server_models_dir
                else None,
                "trust_models_dir": settings.model_server_trust_models_dir,
                "max_batch_rows": settings.model_server_max_batch_rows,
                "prediction_threads": settings.model_server_threads,
                "model_threads": settings.model_server_model_threads,
            },
        }
    )
    return json_response(document)
