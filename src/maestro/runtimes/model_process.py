"""Inside a model process: the confined child that loads one model file, answers the
load check (load, warm up, extreme rows, memory) and then predicts for its server over
the sandbox's message format. Everything that reaches it is hostile until checked."""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from maestro.runtimes.base import Runtime
from maestro.runtimes.errors import ServingError
from maestro.runtimes.inputs import sample_matrix
from maestro.runtimes.isolation import EXTREME, OUT_OF_MEMORY, json_bytes
from maestro.runtimes.service import load_runtime
from maestro.sandbox import (
    Message,
    serve_requests,
)

if TYPE_CHECKING:
    pass


# --- inside a model process -------------------------------------------------------------------------
class Refused(Exception):
    """A refusal with its reason code, as the server reads it (``ChildFailed.details``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.sandbox_details = {"reason": reason}


def model_process(channel: socket.socket, _args: dict[str, Any]) -> None:
    """Inside the isolated process: load the model the first request sends, then answer
    predictions until the server hangs up."""
    held: list[Runtime] = []

    def handle(request: Message) -> Message | None:
        op = request.meta.get("op")
        try:
            if op == "load" and not held:
                held.append(_load_here(request))
                return Message({}, [json_bytes(_describe_here(held[0]))])
            if op == "predict" and held:
                return _predict_here(held[0], request)
            if op == "stop":
                return None
        except ServingError as exc:
            if OUT_OF_MEMORY.search(exc.message):  # a library's allocation failure, reworded
                raise Refused("out_of_memory", exc.message) from None
            raise Refused(exc.reason, exc.message) from None
        raise Refused("bad_request", f"unexpected operation {str(op)[:40]!r}")

    serve_requests(channel, handle)


def _load_here(request: Message) -> Runtime:
    meta = request.meta
    schema_bytes, file_bytes = request.arrays
    model_schema = orjson.loads(schema_bytes.tobytes())
    if meta.get("path"):
        with open(str(meta["path"]), "rb") as handle:
            data = handle.read()
    else:
        data = file_bytes.tobytes()
    request.arrays.clear()  # the received copy is no longer needed
    runtime = load_runtime(
        data,
        format=str(meta["format"]),
        trusted=bool(meta.get("trusted")),
        model_schema=model_schema,
        max_bytes=meta.get("max_bytes"),
        unpacked_max_bytes=meta.get("unpacked_max_bytes"),
        check_trees=bool(meta.get("check_trees", True)),
    )
    del data
    runtime.warm_up()
    _predict_extremes(runtime)
    return runtime


def _predict_extremes(runtime: Runtime) -> None:
    """Rows at the edges of what the input types hold: a model that crashes or hangs
    on them does so here, not in the server. A clear refusal of such a row is fine."""
    width = runtime.n_features
    alternating = np.where(np.arange(width) % 2 == 0, EXTREME, -EXTREME)
    rows = [np.full(width, EXTREME), np.full(width, -EXTREME), np.zeros(width), alternating, -alternating]
    if runtime.accepts_missing:
        rows.append(np.full(width, np.nan))
    for row in rows:
        with contextlib.suppress(ServingError):
            runtime.predict_with_proba(row.reshape(1, -1))


def _output_width(runtime: Runtime) -> int:
    """How many values the model answers per row (2-D answers: one per target)."""
    plausible = sample_matrix(runtime.input_schema, 1)
    for row in (plausible, np.zeros_like(plausible), np.ones_like(plausible)):
        try:
            labels = np.asarray(runtime.predict(row))
        except ServingError:
            continue
        return int(labels.shape[1]) if labels.ndim == 2 else 1
    return 1


def _describe_here(runtime: Runtime) -> dict[str, Any]:
    inputs = []
    for feature in runtime.input_schema.features:
        entry: dict[str, Any] = {"name": feature.name, "type": feature.type}
        if feature.minimum is not None:
            entry["min"] = feature.minimum
        if feature.maximum is not None:
            entry["max"] = feature.maximum
        inputs.append(entry)
    return {
        "inputs": inputs,
        "schema_source": runtime.input_schema.source,
        "classes": runtime.classes,
        "outputs": _output_width(runtime),
        "supports_proba": runtime.supports_proba,
        "accepts_missing": runtime.accepts_missing,
        "serving": runtime.serving,
    }


def _predict_here(runtime: Runtime, request: Message) -> Message:
    if len(request.arrays) != 1 or request.arrays[0].dtype != np.float64 or request.arrays[0].ndim != 2:
        raise Refused("bad_request", "a prediction takes one matrix of float64")
    matrix = request.arrays[0]
    if request.meta.get("proba"):
        labels, probabilities = runtime.predict_with_proba(matrix)
    else:
        labels, probabilities = runtime.predict(matrix), None
    labels = np.asarray(labels)
    if runtime.classes is not None:  # labels travel as their class's position
        positions = {label: i for i, label in enumerate(runtime.classes)}
        unique, inverse = np.unique(labels, return_inverse=True)
        labels = np.array([positions[value] for value in unique.tolist()], dtype=np.int64)[inverse]
    arrays = [labels]
    if probabilities is not None:
        arrays.append(np.asarray(probabilities, dtype=np.float64))
    return Message({}, arrays)
