"""The protocols other serving tools speak, so their clients work unchanged:

- **Open Inference Protocol** (KServe V2; Triton and MLServer speak it too) under
  ``/v2``: health, server and model metadata, readiness and ``infer`` with typed
  tensors, JSON or the binary tensor extension (``Inference-Header-Content-Length``),
  which Triton's client uses by default. Outputs are ``predict`` (labels or values) and
  ``predict_proba``. Errors are ``{"error": "…"}`` with a non-200 status.
- **MLflow's scoring server**: ``POST /invocations`` with exactly one of
  ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (and optional
  ``params``), answering ``{"predictions": […]}``; ``GET /ping``, ``/health``,
  ``/version``. It predicts with the server's default model, as ``mlflow models
  serve`` serves its only one. Errors are ``{"error_code", "message"}``.
"""

from __future__ import annotations

import math
import struct
from typing import Any, cast

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from maestro import __version__
from maestro.errors import NotFound, UnsupportedMediaType
from maestro.model_server.auth import Caller
from maestro.model_server.routes import (
    JSON,
    AnyCaller,
    PredictCaller,
    check_json_content_type,
    json_response,
    parse_object,
    read_body,
    server_of,
)
from maestro.model_server.schemas import body_doc
from maestro.model_server.server import ModelServer, ServedModel
from maestro.runtimes.errors import InputError

# --- Open Inference Protocol ------------------------------------------------------------------
HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "input"
OUTPUTS = ("predict", "predict_proba")
_NUMERIC = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES = frozenset({*_NUMERIC, "BOOL", "BYTES"})
_FLOAT_TYPES = frozenset({float, int})
_FLOAT_LIMITS = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


def _bad(message: str) -> InputError:
    return InputError("tensor", message, field="inputs")


def _flatten(data: Any, depth: int) -> list[Any]:
    """Row-major values of ``data``, flat or nested up to the tensor's rank."""
    flat = data
    for _ in range(max(depth - 1, 0)):
        if not flat or not isinstance(flat[0], list):
            break
        if not all(isinstance(part, list) for part in flat):
            raise _bad("data mixes nested lists and values")
        flat = [value for part in flat for value in part]
    return flat


def _json_tensor(name: str, data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad(f"Input {name!r}: data must be a list of values")
    flat = _flatten(data, len(shape))
    needed = math.prod(shape)
    if len(flat) != needed:
        raise _bad(f"Input {name!r}: data holds {len(flat)} values; shape {shape} needs {needed}")
    kinds = set(map(type, flat))
    if datatype in ("FP16", "FP32", "FP64"):
        if not kinds <= _FLOAT_TYPES:
            raise _bad(f"Input {name!r} is {datatype}: every value must be a number")
        values = np.array(flat, dtype=np.float64)
        limit = _FLOAT_LIMITS.get(datatype)
        if limit is not None and values.size and float(np.max(np.abs(values))) > limit:
            raise _bad(f"Input {name!r} holds a value beyond the {datatype} range")
    elif datatype == "BOOL":
        if not kinds <= {bool}:
            raise _bad(f"Input {name!r} is BOOL: every value must be true or false")
        values = np.array(flat, dtype=np.float64)
    elif datatype == "BYTES":
        if not kinds <= {str}:
            raise _bad(f"Input {name!r} is BYTES: every value must be a string")
        values = np.empty(len(flat), dtype=np.float64)
        for i, text in enumerate(flat):
            try:
                values[i] = float(text)
            except ValueError:
                raise _bad(f"Input {name!r}, element {i}: {text[:50]!r} is not a number") from None
    else:
        if not kinds <= {int}:
            raise _bad(f"Input {name!r} is {datatype}: every value must be an integer")
        info = np.iinfo(cast("type[np.integer[Any]]", _NUMERIC[datatype]))  # the float types went above
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise _bad(f"Input {name!r} holds a value outside the {datatype} range")
        values = np.array(flat, dtype=np.float64)
    return values.reshape(shape)


def _binary_tensor(name: str, raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    needed = math.prod(shape)
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise _bad(f"Input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            chunk = raw[offset : offset + length]
            offset += length
            try:
                values.append(float(chunk.decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                raise _bad(f"Input {name!r}, element {len(values)}: not a number") from None
        if len(values) != needed:
            raise _bad(f"Input {name!r}: {len(values)} BYTES elements; shape {shape} needs {needed}")
        return np.array(values, dtype=np.float64).reshape(shape)
    dtype = np.dtype(np.bool_ if datatype == "BOOL" else _NUMERIC[datatype]).newbyteorder("<")
    if len(raw) != needed * dtype.itemsize:
        raise _bad(
            f"Input {name!r}: {len(raw)} bytes of data; shape {shape} of {datatype} "
            f"needs {needed * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(np.float64).reshape(shape)


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not shape or not all(type(n) is int and n >= 0 for n in shape):
        raise _bad(f"Input {name!r}: shape must be a list of non-negative integers")
    if len(shape) > 2:
        raise _bad(
            f"Input {name!r}: shape {shape} has {len(shape)} dimensions; models here take [rows, features]"
        )
    return shape


def _tensors(doc: dict[str, Any], blob: bytes) -> list[tuple[str, np.ndarray]]:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs must be a non-empty list of tensors")
    tensors, offset = [], 0
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise _bad(f"inputs[{position}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"inputs[{position}] needs a name")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise _bad(f"Input {name!r}: datatype must be one of {', '.join(sorted(DATATYPES))}")
        shape = _shape(name, tensor.get("shape"))
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(blob):
                raise _bad(f"Input {name!r}: binary_data_size does not match the binary data sent")
            values = _binary_tensor(name, blob[offset : offset + size], datatype, shape)
            offset += size
        else:
            values = _json_tensor(name, tensor.get("data"), datatype, shape)
        tensors.append((name, values))
    return tensors


def _matrix(model: ServedModel, tensors: list[tuple[str, np.ndarray]], max_rows: int) -> np.ndarray:
    """One [rows, features] tensor (any name), or one [rows] / [rows, 1] tensor per
    feature, named after the features."""
    schema = model.runtime.input_schema
    if len(tensors) == 1 and (tensors[0][0] not in schema.names or schema.width == 1):
        name, values = tensors[0]
        if values.ndim != 2:
            raise _bad(f"Input {name!r}: shape must be [rows, {schema.width}]")
        return model.runtime.to_matrix(values, max_rows=max_rows, prefix=f"{name}.")
    given = dict(tensors)
    if len(given) != len(tensors):
        raise _bad("Two inputs have the same name")
    unknown = next((name for name in given if name not in schema.names), None)
    if unknown is not None:
        raise _bad(
            f"Input {unknown!r} is not a feature of this model; send one [rows, {schema.width}] tensor"
        )
    missing = next((name for name in schema.names if name not in given), None)
    if missing is not None:
        raise _bad(f"Feature {missing!r} is missing from the inputs")
    columns = []
    for name in schema.names:
        values = given[name]
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise _bad(f"Input {name!r}: a per-feature tensor has shape [rows] or [rows, 1]")
        columns.append(values)
    if len({len(column) for column in columns}) != 1:
        raise _bad("Per-feature inputs have different numbers of rows")
    return model.runtime.to_matrix(np.column_stack(columns), max_rows=max_rows, prefix="inputs.")


def _datatype(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP32" if values.dtype == np.float32 else "FP64"
    if kind == "b":
        return "BOOL"
    return "BYTES"


def _output(name: str, values: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    datatype = _datatype(values)
    described: dict[str, Any] = {"name": name, "shape": list(values.shape), "datatype": datatype}
    if not binary:
        flat = values.ravel()
        described["data"] = [str(v) for v in flat.tolist()] if datatype == "BYTES" else flat.tolist()
        return described, None
    if datatype == "BYTES":
        raw = b"".join(
            struct.pack("<I", len(encoded)) + encoded
            for encoded in (str(v).encode() for v in values.ravel().tolist())
        )
    else:
        numpy_type = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}[datatype]
        raw = np.ascontiguousarray(values, dtype=numpy_type).tobytes()
    described["parameters"] = {"binary_data_size": len(raw)}
    return described, raw


def _requested_outputs(doc: dict[str, Any], model: ServedModel) -> list[tuple[str, bool]]:
    parameters = doc.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    binary_default = parameters.get("binary_data_output") is True
    outputs = doc.get("outputs")
    if outputs is None:
        names = ["predict", "predict_proba"] if model.runtime.supports_proba else ["predict"]
        return [(name, binary_default) for name in names]
    if not isinstance(outputs, list) or not outputs:
        raise _bad("outputs must be a non-empty list of {name} objects")
    requested = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise InputError(
                "output",
                f"Outputs are {' and '.join(OUTPUTS)}; {str(name)[:50]!r} is not one",
                field="outputs",
            )
        if name == "predict_proba" and not model.runtime.supports_proba:
            raise InputError("output", "This model gives no probabilities (predict_proba)", field="outputs")
        parameters = output.get("parameters") if isinstance(output.get("parameters"), dict) else {}
        requested.append((name, parameters.get("binary_data", binary_default) is True))
    return requested


def infer(
    server: ModelServer,
    caller: Caller,
    name: str,
    version: str | None,
    body: bytes,
    header_length: int | None,
) -> Response:
    if header_length is not None:
        header, blob = body[:header_length], body[header_length:]
    else:
        header, blob = body, b""
    doc = parse_object(header)
    model = _model(server, caller, name, version)
    matrix = _matrix(model, _tensors(doc, blob), server.settings.model_server_max_batch_rows)
    outputs = _requested_outputs(doc, model)
    result = model.predict(matrix, probabilities=any(n == "predict_proba" for n, _ in outputs), protocol="v2")
    described, blobs = [], []
    for output_name, binary in outputs:
        values = result.labels if output_name == "predict" else result.probabilities
        assert values is not None
        entry, raw = _output(output_name, values, binary)
        described.append(entry)
        if raw is not None:
            blobs.append(raw)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": described}
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"]
    head = orjson.dumps(answer)
    if not blobs:
        return Response(head, media_type=JSON)
    return Response(
        b"".join([head, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def _model(server: ModelServer, caller: Caller, name: str, version: str | None) -> ServedModel:
    model = server.served(caller, name)
    if version is not None and version != model.version:
        raise NotFound(f"Model {name!r} is served at version {model.version!r}, not {version!r}")
    return model


def _predict_datatype(model: ServedModel) -> str:
    classes = model.runtime.classes
    if classes is None:
        return "FP64"
    if all(type(c) is bool for c in classes):
        return "BOOL"
    if all(type(c) is int for c in classes):
        return "INT64"
    if all(type(c) is float for c in classes):
        return "FP64"
    return "BYTES"


def model_metadata(model: ServedModel) -> dict[str, Any]:
    runtime = model.runtime
    outputs = [{"name": "predict", "datatype": _predict_datatype(model), "shape": [-1]}]
    if runtime.supports_proba:
        outputs.append(
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(runtime.classes or [])]}
        )
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": f"maestro_{runtime.serving_form}",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, runtime.n_features]}],
        "outputs": outputs,
    }


class OipError(BaseModel):
    error: str


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, INT8…INT64, UINT8…UINT64, FP16, FP32, FP64 or BYTES")
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class OipRequestedOutput(BaseModel):
    name: str = Field(description="predict or predict_proba")
    parameters: dict[str, Any] | None = None


class OipInferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipTensor]
    outputs: list[OipRequestedOutput] | None = None


class OipInferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OipTensor]


class OipReady(BaseModel):
    ready: bool


class OipLive(BaseModel):
    live: bool


def _oip_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OipError, "description": "Error"} for status in statuses}


oip_router = APIRouter(prefix="/v2", tags=["open-inference"])
INFER_ERRORS = _oip_errors(400, 401, 404, 413, 415, 429, 503)


@oip_router.get("", response_model=OipServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response(
        {"name": "maestro-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


@oip_router.get("/health/live", response_model=OipLive, summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"live": True})


@oip_router.get(
    "/health/ready",
    response_model=OipReady,
    responses=_oip_errors(503),
    summary="Readiness: every preloaded model is loaded and warmed",
)
async def ready(request: Request) -> Response:
    server = server_of(request)
    if not server.ready:
        return json_response({"ready": False, "error": "The server is still loading its models"}, 503)
    return json_response({"ready": True})


@oip_router.get("/models/{model_name}", response_model=OipModelMetadata, responses=_oip_errors(401, 404))
async def model_metadata_route(model_name: str, request: Request, caller: AnyCaller) -> Response:
    return json_response(model_metadata(_model(server_of(request), caller, model_name, None)))


@oip_router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=OipModelMetadata,
    responses=_oip_errors(401, 404),
)
async def version_metadata(
    model_name: str, model_version: str, request: Request, caller: AnyCaller
) -> Response:
    return json_response(model_metadata(_model(server_of(request), caller, model_name, model_version)))


@oip_router.get("/models/{model_name}/ready", response_model=OipReady, responses=_oip_errors(401, 404))
async def model_ready(model_name: str, request: Request, caller: AnyCaller) -> Response:
    _model(server_of(request), caller, model_name, None)
    return json_response({"name": model_name, "ready": True})


@oip_router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=OipReady,
    responses=_oip_errors(401, 404),
)
async def version_ready(model_name: str, model_version: str, request: Request, caller: AnyCaller) -> Response:
    _model(server_of(request), caller, model_name, model_version)
    return json_response({"name": model_name, "ready": True})


def header_length_of(request: Request, body: bytes) -> int | None:
    """The JSON header's length under the binary tensor extension; None for a plain
    JSON body."""
    header = request.headers.get(HEADER_LENGTH)
    if header is None:
        return None
    if not header.isdigit() or int(header) > len(body):
        raise _bad("Inference-Header-Content-Length must be the length of the JSON header")
    return int(header)


async def answer_infer(
    server: ModelServer, request: Request, caller: Caller, model_name: str, version: str | None
) -> Response:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` once the caller is known, for the
    routes and the fast path alike. A plain JSON body's content type is checked before
    the body is read (a body under the binary tensor extension may be of any type)."""
    if request.headers.get(HEADER_LENGTH) is None:
        check_json_content_type(request)
    body = await read_body(request, server.settings.model_server_max_body_bytes)
    header_length = header_length_of(request, body)
    if server.runs_inline(caller, model_name, len(body)):
        return infer(server, caller, model_name, version, body, header_length)
    return await server.run(infer, server, caller, model_name, version, body, header_length)


@oip_router.post(
    "/models/{model_name}/infer",
    response_model=OipInferResponse,
    responses=INFER_ERRORS,
    openapi_extra=body_doc(OipInferRequest),
    summary="Open Inference Protocol inference",
)
async def infer_route(model_name: str, request: Request, caller: PredictCaller) -> Response:
    return await answer_infer(server_of(request), request, caller, model_name, None)


@oip_router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=OipInferResponse,
    responses=INFER_ERRORS,
    openapi_extra=body_doc(OipInferRequest),
    summary="Open Inference Protocol inference on a given version",
)
async def infer_version_route(
    model_name: str, model_version: str, request: Request, caller: PredictCaller
) -> Response:
    return await answer_infer(server_of(request), request, caller, model_name, model_version)


# --- MLflow's scoring protocol ---------------------------------------------------------------------
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _malformed(message: str) -> InputError:
    return InputError("malformed", message, field="body")


def _columns_to_rows(columns: dict[str, Any], where: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    names = list(columns)
    values = list(columns.values())
    if not all(isinstance(column, list) for column in values):
        raise InputError("not_rows", f"{where}: each column must be a list of values", field=where)
    if len({len(column) for column in values}) > 1:
        raise InputError("not_rows", f"{where}: columns have different lengths", field=where)
    return names, list(zip(*values, strict=True))


def mlflow_matrix(model: ServedModel, doc: dict[str, Any], max_rows: int) -> np.ndarray:
    from maestro.runtimes.inputs import columns_to_matrix

    present = [key for key in MLFLOW_FORMATS if key in doc]
    if len(present) != 1:
        raise _malformed(
            "The input must be a JSON dictionary with exactly one of the input fields "
            f"{{{', '.join(repr(k) for k in MLFLOW_FORMATS)}}}. Received dictionary with input fields: "
            f"{[str(k)[:50] for k in list(doc)[:20]]}"
        )
    key = present[0]
    payload = doc[key]
    schema = model.runtime.input_schema
    if key == "dataframe_split":
        if not isinstance(payload, dict) or "data" not in payload:
            raise _malformed("dataframe_split must be an object with columns and data")
        if payload.get("columns") is None:
            return model.runtime.to_matrix(payload["data"], max_rows=max_rows, prefix="dataframe_split.data.")
        return columns_to_matrix(payload["columns"], payload["data"], schema, max_rows=max_rows)
    if key == "dataframe_records":
        if not isinstance(payload, list) or not all(isinstance(row, dict) for row in payload):
            raise _malformed("dataframe_records must be a list of objects, one per row")
        return model.runtime.to_matrix(payload, max_rows=max_rows, prefix="dataframe_records.")
    if isinstance(payload, dict):  # columnar: {"feature": [values, …], …}
        names, rows = _columns_to_rows(payload, key)
        if not rows:
            raise InputError("empty", "At least one row is needed", field=key)
        return columns_to_matrix(
            names, [list(row) for row in rows], schema, max_rows=max_rows, prefix=f"{key}."
        )
    return model.runtime.to_matrix(payload, max_rows=max_rows, prefix=f"{key}.")


def invocations(server: ModelServer, caller: Caller, body: bytes) -> Response:
    doc = parse_object(body)
    params = doc.get("params")
    if params is not None and not isinstance(params, dict):
        raise _malformed("params must be an object")
    proba = bool(params and params.get("return_probabilities") is True)
    model = server.served(caller, None)
    matrix = mlflow_matrix(model, doc, server.settings.model_server_max_batch_rows)
    result = model.predict(matrix, probabilities=proba, protocol="mlflow")
    values = result.probabilities if proba and result.probabilities is not None else result.labels
    return Response(orjson.dumps({"predictions": values.tolist()}), media_type=JSON)


class MlflowError(BaseModel):
    error_code: str
    message: str


class MlflowInvocation(BaseModel):
    dataframe_split: dict[str, Any] | None = Field(None, description='{"columns": [...], "data": [[...]]}')
    dataframe_records: list[dict[str, Any]] | None = None
    instances: list[Any] | dict[str, Any] | None = None
    inputs: list[Any] | dict[str, Any] | None = None
    params: dict[str, Any] | None = Field(
        None, description='{"return_probabilities": true} for probabilities'
    )


class MlflowPredictions(BaseModel):
    predictions: list[Any]


mlflow_router = APIRouter(tags=["mlflow-scoring"])


def _mlflow_ready(request: Request) -> Response:
    server = server_of(request)
    if not server.ready or server.default_name is None:
        return json_response(
            {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "No model is ready to serve yet"}, 503
        )
    return Response(b"\n", media_type=JSON)


@mlflow_router.get("/ping", responses={503: {"model": MlflowError}}, summary="MLflow: ready to score")
async def ping(request: Request) -> Response:
    return _mlflow_ready(request)


@mlflow_router.get("/health", responses={503: {"model": MlflowError}}, summary="MLflow: ready to score")
async def mlflow_health(request: Request) -> Response:
    return _mlflow_ready(request)


@mlflow_router.get("/version", response_class=Response, summary="The server's version, as text")
async def version() -> Response:
    return Response(__version__.encode(), media_type=JSON)


def mlflow_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type") or ""
    mime, _, parameters = content_type.partition(";")
    charset = parameters.strip().lower().removeprefix("charset=") if parameters.strip() else "utf-8"
    if mime.strip().lower() != JSON or charset != "utf-8":
        raise UnsupportedMediaType(
            f"This predictor only supports application/json (UTF-8). Got {content_type[:100]!r}."
        )


async def answer_invocations(server: ModelServer, request: Request, caller: Caller) -> Response:
    """``POST /invocations`` once the caller is known, for the route and the fast path:
    the content type (415), then the body (413), then the work."""
    mlflow_content_type(request)
    body = await read_body(request, server.settings.model_server_max_body_bytes)
    if server.runs_inline(caller, None, len(body)):
        return invocations(server, caller, body)
    return await server.run(invocations, server, caller, body)


@mlflow_router.post(
    "/invocations",
    response_model=MlflowPredictions,
    responses={status: {"model": MlflowError} for status in (400, 401, 404, 413, 415, 429, 503)},
    openapi_extra=body_doc(MlflowInvocation),
    summary="MLflow scoring: predict with the default model",
)
async def invocations_route(request: Request, caller: PredictCaller) -> Response:
    return await answer_invocations(server_of(request), request, caller)
