"""Helpers for deployments and inference on the platform: tiny real models (``Tiny``) as
files of each format, and calls that register, upload, deploy and predict through the API
as the people of a ``World`` (``tests.factories``). The ``tiny`` fixture is in
``tests.deployments.fixtures``."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import skops.io as sio
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from maestro.deployments.fast_path import InferenceFastPath
from maestro.deployments.predictions import FlushReport
from tests.factories import World

FEATURES = ("amount", "time_of_day", "day_of_week", "merchant_risk")
SCHEMA = {"inputs": [{"name": name, "type": "float"} for name in FEATURES]}


@dataclass(frozen=True)
class Tiny:
    X: np.ndarray
    first: LogisticRegression  # predicts 1 when amount + merchant_risk > 0
    second: LogisticRegression  # predicts the opposite


def skops_file(model: Any) -> bytes:
    return sio.dumps(model)


def onnx_file(model: Any) -> bytes:
    sample = np.zeros((1, len(FEATURES)), dtype=np.float32)
    return to_onnx(model, sample, options={"zipmap": False}).SerializeToString()


def joblib_file(obj: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def records(matrix: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row, strict=True)) for row in np.asarray(matrix).tolist()]


# --- the API ---------------------------------------------------------------------------------
def register(
    client: TestClient, world: World, name: str = "Fraud Detector", project: str | None = None
) -> str:
    response = client.post(
        f"/api/v1/projects/{project or world.project}/models",
        json={"name": name, "model_type": "classification"},
        headers=world.developer.headers if project is None else world.outsider.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def upload(
    client: TestClient,
    model_id: str,
    headers: dict[str, str],
    content: bytes,
    *,
    filename: str = "model.bin",
    schema: dict[str, Any] | None = SCHEMA,
) -> dict[str, Any]:
    data = {"model_schema": json.dumps(schema)} if schema is not None else {}
    response = client.post(
        f"/api/v1/models/{model_id}/versions",
        data=data,
        files={"model_file": (filename, content, "application/octet-stream")},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]


def deploy(
    client: TestClient,
    world: World,
    name: str,
    version_id: str,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> Response:
    return client.post(
        f"/api/v1/projects/{world.project}/deployments",
        json={"name": name, "model_version_id": version_id, **body},
        headers=headers or world.developer.headers,
    )


def deployed(client: TestClient, world: World, name: str, version_id: str, **body: Any) -> dict[str, Any]:
    response = deploy(client, world, name, version_id, **body)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def predict(
    client: TestClient, name: str, headers: dict[str, str], instances: Any, *, batch: bool = False
) -> Response:
    path = f"/api/v1/inference/{name}" + ("/batch" if batch else "")
    return client.post(path, json={"instances": instances}, headers=headers)


def flush(app: FastAPI) -> FlushReport:
    """Write what the serving process holds in memory (prediction logs, request counts)."""
    return app.state.serving.recorder.flush()


def inference_at_the_front_door(app: Any) -> bool:
    """Whether ``app`` answers platform inference on its fast path (``MAESTRO_FAST_PATHS``)."""
    return any(isinstance(route, InferenceFastPath) for route in getattr(app, "fast_routes", ()))
