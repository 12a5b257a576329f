"""The inference hot path: find the deployment, check access, read the body once, turn
it into a matrix and predict, and answer in the spec's shape (not the envelope).

Nothing here asks the database on a warm request: the deployment comes from the
directory, the credential and the access decision from short-lived memories (see
``identity.credential_cache``). The body goes from orjson straight to numpy (no pydantic
per row), and parsing and predicting run together in one worker thread, off the event
loop, on single-threaded runtimes (a small body for an ONNX model, which takes
microseconds, runs on the loop). The request is recorded in memory for the prediction
log and the metrics, which a background thread writes.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import orjson
from anyio.to_thread import run_sync
from fastapi import Request
from fastapi.responses import Response

from maestro.api.bodies import read_limited
from maestro.api.context import current_request_id
from maestro.db import new_id, utc_timestamp
from maestro.deployments.models import DeploymentStatus
from maestro.deployments.payloads import answers
from maestro.deployments.predictions import MAX_LOGGED_ROWS, Served
from maestro.deployments.state import LiveDeployment, ServingState
from maestro.errors import (
    MaestroError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from maestro.identity import audit
from maestro.identity.rbac import Principal, Target, authorize, can
from maestro.projects.models import Project
from maestro.runtimes.base import Runtime
from maestro.runtimes.errors import InputError, ModelLoadError
from maestro.runtimes.inputs import matrix_from_json
from maestro.runtimes.onnx import OnnxRuntime
from maestro.runtimes.parallel import RowSplitter

NO_SUCH_DEPLOYMENT = "No such deployment"
# A body this small holds a few rows: an ONNX model parses and answers it in less time
# than a hop to a worker thread and back takes, so it runs on the event loop.
INLINE_MAX_BODY = 4096
JSON_MEDIA = "application/json"


# --- finding the deployment and checking access --------------------------------------------------
def _decide(serving: ServingState, principal: Principal, live: LiveDeployment, request: Request) -> None:
    """May ``principal`` read inference in the deployment's project? A refusal is
    decided again in a transaction of its own that records it in the audit log."""
    with serving.database.session(write=False) as session:
        project = session.get(Project, live.project_id)
        if project is not None and can(
            session, principal, "read", Target("inference", live.organization_id, project)
        ):
            return
    session = serving.database.new_session(write=True)
    try:
        project = session.get(Project, live.project_id)
        if project is None:
            raise NotFound(NO_SUCH_DEPLOYMENT)
        try:
            authorize(
                session,
                principal,
                "read",
                Target("inference", live.organization_id, project),
                missing=NO_SUCH_DEPLOYMENT,
            )
        except (NotFound, PermissionDenied):
            audit.record_denials(session, request)
            session.commit()
            raise
    finally:
        session.close()


async def find(serving: ServingState, principal: Principal, name: str, request: Request) -> LiveDeployment:
    """The caller's organisation's deployment of this name, once the caller may use it.
    Another organisation's name, or one in a project the caller cannot see, answers
    exactly like a missing one."""
    organization_id = principal.organization_id
    if organization_id is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    found, live = serving.known(organization_id, name)
    if not found:
        live = await run_sync(serving.resolve, organization_id, name)
    if live is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    decision = (principal.kind, principal.id, organization_id, principal.org_role, live.project_id)
    if not serving.decisions.get(decision):
        try:
            await run_sync(_decide, serving, principal, live, request)
        except MaestroError:
            serving.decisions.forget(decision)
            raise
        serving.decisions.put(decision, True)
    return live


def check_serving(live: LiveDeployment) -> None:
    if live.version_id is None:
        raise ServiceUnavailable("The deployment's model version was deleted; deploy another version")
    if live.status == DeploymentStatus.failed:
        raise ServiceUnavailable(
            "The deployment failed (its logs say why); deploy a version or activate it again to serve"
        )
    if live.status != DeploymentStatus.active:
        raise ServiceUnavailable("The deployment is inactive; activate it to serve predictions")


async def loaded(serving: ServingState, live: LiveDeployment) -> tuple[LiveDeployment, Runtime]:
    """The deployment's runtime, loading it in a worker thread if this process has not yet."""
    runtime = serving.ready_runtime(live)
    if runtime is not None:
        return live, runtime
    try:
        return await run_sync(serving.runtime, live)
    except ModelLoadError as exc:
        raise ServiceUnavailable(
            f"The deployment's model cannot be loaded: {exc.message}", details=[(None, exc.reason)]
        ) from exc


# --- the request body ----------------------------------------------------------------------------
def _check_media(request: Request) -> None:
    media = request.headers.get("content-type", JSON_MEDIA).split(";", 1)[0].strip().lower()
    if media != JSON_MEDIA and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Send the rows as {JSON_MEDIA}, not {media[:100] or 'an empty content type'}",
            details=[("content-type", f"expected {JSON_MEDIA}")],
        )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body is larger than {limit:,} bytes", details=[("body", f"at most {limit:,} bytes")]
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body: its content type checked first (415), then refused as soon as it
    passes ``limit`` bytes (413). The route and the fast path both read it here."""
    _check_media(request)
    return await read_limited(request, limit, _too_large)


# --- predicting ----------------------------------------------------------------------------------
def _missing_not_answered(runtime: Runtime, matrix: np.ndarray, *outputs: np.ndarray | None) -> None:
    """A row with missing values (null) that the model answered with NaN: the model does
    not take missing values after all; name the first one rather than answer null."""
    holes = np.isnan(matrix)
    if not holes.any():
        return
    broken = np.zeros(matrix.shape[0], dtype=bool)
    for output in outputs:
        if output is not None and output.dtype.kind == "f":
            values = output.reshape(matrix.shape[0], -1)
            broken |= ~np.isfinite(values).all(axis=1)
    rows = np.flatnonzero(broken & holes.any(axis=1))
    if rows.size:
        i = int(rows[0])
        name = runtime.input_schema.names[int(np.flatnonzero(holes[i])[0])]
        raise InputError(
            "nan",
            f"Row {i}, feature {name!r}: this model cannot answer a missing value (null)",
            row=i,
            feature=name,
            field=f"instances.{i}.{name}",
        )


class Answered(NamedTuple):
    """A matrix's answers: ``records`` as the response writes them, and what they were
    made of (the prediction log keeps these, not the records)."""

    records: list[dict[str, Any]]
    values: list[Any]  # the predictions, as answered
    probabilities: np.ndarray | None  # rows x classes, when the answers carry them
    classes: tuple[str, ...] | None  # the probabilities' class names, in column order


def predictions(runtime: Runtime, matrix: np.ndarray, splitter: RowSplitter | None = None) -> Answered:
    """One row of the answer per row of ``matrix``: the prediction, and for a classifier
    that gives them the probabilities and the confidence, classes named as the version
    declares (``runtimes.class_labels``, as the model server and batch jobs name them)."""
    if splitter is not None:  # a large batch on a slow model: its rows spread over the cores
        labels, probabilities = splitter.run(runtime, runtime.predict_with_proba, matrix)
    else:
        labels, probabilities = runtime.predict_with_proba(matrix)
    _missing_not_answered(runtime, matrix, np.asarray(labels), probabilities)
    values = np.asarray(labels).tolist()
    named = runtime.class_labels
    if named is not None:
        values = named.answers(values)
    if probabilities is None or named is None or not named.names:
        return Answered(answers(values, None, None), values, None, None)
    return Answered(answers(values, probabilities, named.names), values, probabilities, named.names)


def _answer(
    runtime: Runtime, body: bytes, max_rows: int, batch: bool, splitter: RowSplitter | None = None
) -> tuple[np.ndarray, Answered]:
    """Parse and predict, in one worker thread."""
    try:
        matrix = matrix_from_json(
            body, runtime.input_schema, key="instances", allow_nan=runtime.accepts_missing, max_rows=max_rows
        )
    except InputError as exc:
        if exc.reason != "too_many_rows":
            raise
        hint = "" if batch else "; send more to …/batch, or a whole dataset as a batch job"
        raise PayloadTooLarge(
            f"{exc.message}{hint}", details=[("instances", f"at most {max_rows} rows")]
        ) from None
    try:
        return matrix, predictions(runtime, matrix, splitter)
    except InputError as exc:  # a value the model's own types cannot hold (float32, say)
        if exc.field is None or exc.field.startswith("instances."):
            raise
        raise InputError(
            exc.reason, exc.message, row=exc.row, feature=exc.feature, field=f"instances.{exc.field}"
        ) from None


async def predict(
    request: Request, serving: ServingState, principal: Principal, name: str, *, batch: bool
) -> Response:
    started = time.perf_counter()
    live = await find(serving, principal, name, request)
    settings = serving.settings
    max_rows = settings.inference_batch_max_rows if batch else settings.inference_max_rows
    prediction_id = new_id("pred")
    request_id = current_request_id()
    log = serving.recorder.sampled()
    runtime: Runtime | None = None
    try:
        check_serving(live)
        body = await read_body(request, settings.inference_max_body_bytes)
        live, runtime = await loaded(serving, live)
        if len(body) <= INLINE_MAX_BODY and isinstance(runtime, OnnxRuntime):
            matrix, answered = _answer(runtime, body, max_rows, batch)  # microseconds: no thread hop
        else:
            matrix, answered = await run_sync(_answer, runtime, body, max_rows, batch, serving.splitter)
    except MaestroError as exc:
        _record_failure(serving, live, prediction_id, request_id, started, exc.status_code, exc.message, log)
        raise
    except Exception as exc:
        _record_failure(serving, live, prediction_id, request_id, started, 500, type(exc).__name__, log)
        raise
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    payload = {
        "success": True,
        "predictions": answered.records,
        "model_info": {
            "deployment": live.name,
            "model_id": live.model_id,
            "model_name": live.model_name,
            "version": live.version,
            "version_id": live.version_id,
            "prediction_id": prediction_id,
        },
        "metadata": {"latency_ms": latency_ms, "timestamp": utc_timestamp(), "request_id": request_id},
    }
    rows = int(matrix.shape[0])
    values, probabilities = answered.values, answered.probabilities
    if rows > MAX_LOGGED_ROWS:
        values = values[:MAX_LOGGED_ROWS]
        probabilities = probabilities[:MAX_LOGGED_ROWS] if probabilities is not None else None
    serving.recorder.record(
        Served(
            deployment_id=live.id,
            organization_id=live.organization_id,
            version_id=live.version_id,
            request_id=request_id,
            prediction_id=prediction_id,
            status_code=200,
            latency_ms=latency_ms,
            rows=rows,
            names=runtime.input_schema.names,
            # What the answers were made of, not the answers' dicts: thousands of objects
            # per request waiting for the log writer would make every full garbage
            # collection scan them all. The writer turns these into the stored form.
            matrix=matrix[:MAX_LOGGED_ROWS],
            values=values,
            probabilities=probabilities,
            classes=answered.classes,
        ),
        log=log,
    )
    counted = serving.metrics.served(live.name, live.version or "")
    counted.predictions.inc()
    counted.rows.inc(rows)
    counted.seconds.observe(latency_ms / 1000)
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON_MEDIA)


def _record_failure(
    serving: ServingState,
    live: LiveDeployment,
    prediction_id: str,
    request_id: str,
    started: float,
    status_code: int,
    message: str,
    log: bool,
) -> None:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    serving.recorder.record(
        Served(
            deployment_id=live.id,
            organization_id=live.organization_id,
            version_id=live.version_id,
            request_id=request_id,
            prediction_id=prediction_id,
            status_code=status_code,
            latency_ms=latency_ms,
            error=message,
        ),
        log=log,
    )
    serving.metrics.predictions.labels(live.name, live.version or "", "error").inc()
