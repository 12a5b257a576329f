"""A model version's ``source`` names one of this server's own locations (``models:/``,
``runs:/``, ``mlflow-artifacts:/``): anything else (a file path, a bucket, another
server) is refused before anything is looked up or stored, and a foreign source stored
before is never handed to a client by ``get-download-uri``."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.registry.models import ModelVersion, RegisteredModel
from tests.mlflow_compat.conftest import World, error_of, mlflow_call, ok

FOREIGN = [
    "file:///etc/passwd",
    "/etc/passwd",
    "../../etc/passwd",
    "s3://bucket/model",
    "gs://bucket/model",
    "http://evil.example/model",
    "https://evil.example/model",
    "mlflow-artifacts://evil.example/0/run/artifacts/model",
    "models://evil.example/m/1",
    "runs://evil.example/r/model",
    "dbfs:/model",
    "C:\\models\\m",
    "MODELS:/m/1",
]


def registered(client: TestClient, world: World, name: str = "Fraud") -> None:
    ok(mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": name}))


def version_count(app: FastAPI) -> int:
    with app.state.database.session(write=False) as session:
        return session.scalar(select(func.count()).select_from(ModelVersion)) or 0


@pytest.mark.parametrize("source", FOREIGN)
def test_a_foreign_source_is_refused_and_nothing_is_stored(
    app: FastAPI, client: TestClient, world: World, source: str, tmp_path: Path
) -> None:
    registered(client, world)
    before = sorted(tmp_path.rglob("*"))
    response = mlflow_call(
        client, "POST", "model-versions/create", world.headers(), {"name": "Fraud", "source": source}
    )
    assert "mlflow-artifacts:/" in error_of(response, 400, "INVALID_PARAMETER_VALUE")
    assert version_count(app) == 0
    assert sorted(tmp_path.rglob("*")) == before


def test_this_servers_own_sources_register(client: TestClient, world: World) -> None:
    registered(client, world)
    experiment_id = ok(mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "e"}))[
        "experiment_id"
    ]
    run_id = ok(
        mlflow_call(client, "POST", "runs/create", world.headers(), {"experiment_id": experiment_id})
    )["run"]["info"]["run_id"]
    for source, download in (
        ("models:/Other/3", "models:/Other/3"),
        (f"runs:/{run_id}/model", f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts/model"),
        ("", None),
    ):
        created = ok(
            mlflow_call(
                client, "POST", "model-versions/create", world.headers(), {"name": "Fraud", "source": source}
            )
        )["model_version"]
        uri = mlflow_call(
            client,
            "GET",
            "model-versions/get-download-uri",
            world.headers(),
            {"name": "Fraud", "version": created["version"]},
        )
        if download is None:
            error_of(uri, 404, "RESOURCE_DOES_NOT_EXIST")
        else:
            assert ok(uri) == {"artifact_uri": download}


def test_a_foreign_source_stored_earlier_is_never_handed_out(
    app: FastAPI, client: TestClient, world: World
) -> None:
    registered(client, world)
    ok(mlflow_call(client, "POST", "model-versions/create", world.headers(), {"name": "Fraud"}))
    with app.state.database.session() as session:
        model_id = session.scalar(select(RegisteredModel.id).where(RegisteredModel.name == "Fraud"))
        row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id))
        assert row is not None
        row.source = "file:///etc/passwd"
    response = mlflow_call(
        client, "GET", "model-versions/get-download-uri", world.headers(), {"name": "Fraud", "version": "1"}
    )
    message = error_of(response, 404, "RESOURCE_DOES_NOT_EXIST")
    assert "/etc/passwd" not in message and "/file" in message
