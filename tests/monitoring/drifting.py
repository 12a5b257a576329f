"""Helpers for the reference and drift tests: a deployed classifier whose version declares
its inputs, class labels and feature importances; traffic served at chosen times through
the serving recorder (as inference records it) and folded; datasets uploaded through the
API; jobs run in the test's thread."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import polars as pl
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.db import new_id
from maestro.deployments.predictions import MAX_LOGGED_ROWS, Served
from maestro.jobs.models import Job
from maestro.monitoring.folding import fold_new_predictions
from tests.deployments.platform import FEATURES, SCHEMA, Tiny, deployed, flush, onnx_file, register, upload
from tests.factories import World

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)  # a past hour: reference traffic is served from here
LABELS = ["legit", "fraud"]
IMPORTANCES = {"amount": 0.5, "merchant_risk": 0.3, "time_of_day": 0.15, "day_of_week": 0.05}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def deploy_classifier(
    client: TestClient, world: World, tiny: Tiny, name: str = "fraud-api"
) -> dict[str, Any]:
    schema = {**SCHEMA, "class_labels": LABELS, "feature_importances": IMPORTANCES}
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first), schema=schema)
    return deployed(client, world, name, version["id"])


def rows(n: int, seed: int, *, shift: float = 0.0) -> np.ndarray:
    """``n`` rows of the four features (standard normal), ``amount`` moved by ``shift``."""
    matrix = np.random.default_rng(seed).normal(size=(n, len(FEATURES)))
    matrix[:, 0] += shift
    return matrix


def labels(matrix: np.ndarray) -> list[str]:
    return np.where(matrix[:, 0] + matrix[:, 3] > 0, "fraud", "legit").tolist()


def serve(app: FastAPI, world: World, live: dict[str, Any], at: datetime, matrix: np.ndarray) -> None:
    """Answered requests at ``at`` (at most ``MAX_LOGGED_ROWS`` rows each), logged as
    inference logs them, then written."""
    for first in range(0, len(matrix), MAX_LOGGED_ROWS):
        part = matrix[first : first + MAX_LOGGED_ROWS]
        app.state.serving.recorder.record(
            Served(
                deployment_id=live["id"],
                organization_id=world.org,
                version_id=live["model_version"]["id"],
                request_id=new_id("req"),
                prediction_id=new_id("pred"),
                status_code=200,
                latency_ms=2.0,
                rows=len(part),
                names=FEATURES,
                matrix=part,
                values=labels(part),
                at=at.timestamp() + first / 1_000_000,
            ),
            log=True,
        )
    flush(app)


def serve_and_fold(
    app: FastAPI, world: World, live: dict[str, Any], at: datetime, matrix: np.ndarray
) -> None:
    serve(app, world, live, at, matrix)
    fold_new_predictions(app.state.database, live["id"])


def dataset_csv(matrix: np.ndarray, *, extra: dict[str, Any] | None = None) -> bytes:
    frame = pl.DataFrame({name: matrix[:, i] for i, name in enumerate(FEATURES)})
    frame = frame.with_columns(pl.Series("label", labels(matrix)))
    for name, values in (extra or {}).items():
        frame = frame.with_columns(pl.Series(name, values))
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def upload_dataset(client: TestClient, world: World, content: bytes, *, filename: str = "train.csv") -> str:
    response = client.post(
        "/api/v1/upload/datasets",
        data={"project_id": world.project},
        files={"file": (filename, content, "application/octet-stream")},
        headers=world.developer.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["id"])


def monitoring_path(deployment_id: str, what: str) -> str:
    return f"/api/v1/deployments/{deployment_id}/monitoring/{what}"


def run_job(app: FastAPI, job_id: str) -> Job:
    app.state.queue.execute(job_id)
    with app.state.database.session(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def set_reference(
    client: TestClient, app: FastAPI, world: World, deployment_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Set the reference and run its job; the reference as GET shows it afterwards."""
    response = client.put(
        monitoring_path(deployment_id, "reference"), json=body, headers=world.developer.headers
    )
    assert response.status_code == 202, response.text
    run_job(app, response.json()["data"]["job_id"])
    shown = client.get(monitoring_path(deployment_id, "reference"), headers=world.viewer.headers)
    assert shown.status_code == 200, shown.text
    return dict(shown.json()["data"])


def drift(
    client: TestClient, world: World, deployment_id: str, start: datetime, hours: int = 1, **params: Any
) -> Any:
    return client.get(
        monitoring_path(deployment_id, "drift"),
        params={"start": iso(start), "end": iso(start + timedelta(hours=hours)), **params},
        headers=world.viewer.headers,
    )


def by_column(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {column["column"]: column for column in data["columns"]}


def data_of(response: httpx.Response, status: int = 200) -> Any:
    """The envelope's ``data`` of a response that must have ``status``."""
    assert response.status_code == status, response.text
    return response.json()["data"]


def send_over_http(
    http: httpx.Client, headers: dict[str, str], matrix: np.ndarray, rows_per_request: int
) -> list[tuple[str, list[str]]]:
    """Serve ``matrix`` to the ``fraud-api`` deployment of a real server, in requests of
    ``rows_per_request`` rows: (prediction id, the rows' predicted labels) per request."""
    served = []
    for first in range(0, len(matrix), rows_per_request):
        part = matrix[first : first + rows_per_request]
        instances = [dict(zip(FEATURES, row, strict=True)) for row in part.tolist()]
        answer = http.post("/api/v1/inference/fraud-api", json={"instances": instances}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        served.append(
            (body["model_info"]["prediction_id"], [str(p["prediction"]) for p in body["predictions"]])
        )
    return served
