"""A version's ``model_schema.class_labels`` name its classes the same on every serving
path: the model server's ``prediction_label``, the platform's predictions and
probability keys (through the fast path and through the FastAPI routes), and a batch
job's ``prediction`` and ``probability_<name>`` columns. A list that is not one distinct
name per class is ignored alike everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.model_server.app import create_model_server
from tests.deployments.platform import (
    FEATURES,
    SCHEMA,
    Tiny,
    deployed,
    inference_at_the_front_door,
    onnx_file,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import World
from tests.fast_path_equality import assert_same_answer, switched_off
from tests.runtimes.modelfiles import lightgbm_bytes

LABELS = ["legit", "fraud"]  # tiny.first's classes 0 and 1
OPERATOR_KEY = "operator-key-for-the-class-label-tests"


def answered(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.fixture
def routed(app: FastAPI) -> Iterator[TestClient]:
    """A second platform app on the same database and files, with the fast paths off."""
    assert inference_at_the_front_door(app)
    other = create_app(switched_off(app.state.settings))
    assert not inference_at_the_front_door(other)
    with TestClient(other, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def model_server(app: FastAPI) -> Iterator[TestClient]:
    """An in-process model server sharing the platform's database and artifact store."""
    settings = app.state.settings.model_copy(update={"model_server_api_keys": [OPERATOR_KEY]})
    with TestClient(create_model_server(settings), raise_server_exceptions=False) as client:
        yield client


def deploy_labelled(
    client: TestClient, world: World, tiny: Tiny, content: bytes, class_labels: Any = LABELS
) -> str:
    """Deploy ``content`` (tiny.first) as "fraud-api" with ``class_labels``; its model's id."""
    model = register(client, world)
    schema = {**SCHEMA, "class_labels": class_labels}
    version = upload(client, model, world.developer.headers, content, schema=schema)
    deployed(client, world, "fraud-api", version["id"])
    return model


def served_by_the_model_server(
    server: TestClient, world: World, model_id: str, rows: np.ndarray
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The model's info and batch predictions (with probabilities) on the model server."""
    loaded = server.post(
        "/api/v1/models/load", json={"model_id": model_id, "model_name": "fraud"}, headers=world.admin.headers
    )
    assert loaded.status_code == 200, loaded.text
    info = server.get("/api/v1/models/fraud/info", headers=world.admin.headers)
    assert info.status_code == 200, info.text
    batch = server.post(
        "/api/v1/batch-predict",
        json={"features": records(rows), "model_name": "fraud", "return_probabilities": True},
        headers=world.admin.headers,
    )
    return info.json(), answered(batch)


def batch_job_csv(client: TestClient, app: FastAPI, world: World, rows: np.ndarray) -> pl.DataFrame:
    frame = pl.DataFrame({name: rows[:, i] for i, name in enumerate(FEATURES)})
    submitted = client.post(
        "/api/v1/inference/fraud-api/batch-jobs",
        content=frame.write_csv().encode(),
        headers={**world.developer.headers, "Content-Type": "text/csv"},
    )
    assert submitted.status_code == 202, submitted.text
    accepted = submitted.json()["data"]
    app.state.queue.execute(accepted["job_id"])
    download = client.get(accepted["result_url"], headers=world.viewer.headers)
    assert download.status_code == 200, download.text
    return pl.read_csv(download.content)


def served_model(fmt: str, tiny: Tiny) -> tuple[bytes, Any]:
    """The file of a classifier of tiny's rows in ``fmt``, and the classifier."""
    if fmt == "onnx":
        return onnx_file(tiny.first), tiny.first
    if fmt == "skops":
        return skops_file(tiny.first), tiny.first
    lightgbm = pytest.importorskip("lightgbm")  # served from an isolated process
    model = lightgbm.LGBMClassifier(n_estimators=8, min_child_samples=5, verbose=-1)
    model.fit(tiny.X, tiny.first.predict(tiny.X))
    return lightgbm_bytes(model), model


@pytest.mark.parametrize("fmt", ["onnx", "skops", "lightgbm"])
def test_every_path_names_the_classes_alike(
    client: TestClient,
    app: FastAPI,
    routed: TestClient,
    model_server: TestClient,
    world: World,
    tiny: Tiny,
    fmt: str,
) -> None:
    content, estimator = served_model(fmt, tiny)
    model_id = deploy_labelled(client, world, tiny, content)
    rows = tiny.X[:40]
    expected = [LABELS[c] for c in estimator.predict(rows)]
    assert set(expected) == set(LABELS)
    proba = estimator.predict_proba(rows)

    # The model server: the prediction is the class, prediction_label its declared name.
    info, served = served_by_the_model_server(model_server, world, model_id, rows)
    assert info["class_labels"] == LABELS
    assert [p["prediction_label"] for p in served] == expected
    assert [p["prediction"] for p in served] == estimator.predict(rows).tolist()
    by_name = [dict(zip(info["class_labels"], p["probabilities"], strict=True)) for p in served]

    # The platform, fast path and routes alike: the name is the prediction and keys the probabilities.
    for path_batch in (False, True):
        fast = predict(client, "fraud-api", world.key_headers, records(rows), batch=path_batch)
        slow = predict(routed, "fraud-api", world.key_headers, records(rows), batch=path_batch)
        assert_same_answer(fast, slow)
        platform = answered(fast)
        assert [p["prediction"] for p in platform] == expected
        assert all(list(p["probabilities"]) == LABELS for p in platform)
        np.testing.assert_allclose(
            [[p["probabilities"][n] for n in LABELS] for p in platform], proba, atol=1e-5
        )
        for ours, theirs in zip(platform, by_name, strict=True):
            assert ours["probabilities"] == pytest.approx(theirs, abs=1e-6)
    schema = client.get("/api/v1/inference/fraud-api/schema", headers=world.key_headers)
    assert schema.json()["data"]["outputs"]["class_labels"] == LABELS

    # A batch job: the same names in its prediction column and probability columns.
    result = batch_job_csv(client, app, world, rows)
    assert result.columns == [*FEATURES, "prediction", "probability_legit", "probability_fraud"]
    assert result["prediction"].to_list() == expected
    np.testing.assert_allclose(
        result.select("probability_legit", "probability_fraud").to_numpy(), proba, atol=1e-5
    )


@pytest.mark.parametrize(
    "class_labels",
    [["legit"], ["same", "same"], "legit,fraud", None],
    ids=["too-few", "twice", "text", "none"],
)
def test_labels_that_do_not_name_each_class_once_are_ignored_alike(
    client: TestClient,
    app: FastAPI,
    model_server: TestClient,
    world: World,
    tiny: Tiny,
    class_labels: Any,
) -> None:
    model_id = deploy_labelled(client, world, tiny, onnx_file(tiny.first), class_labels)
    rows = tiny.X[:20]
    classes = tiny.first.predict(rows).tolist()

    info, served = served_by_the_model_server(model_server, world, model_id, rows)
    assert info["class_labels"] == ["0", "1"]
    assert [p["prediction_label"] for p in served] == [str(c) for c in classes]

    platform = answered(predict(client, "fraud-api", world.key_headers, records(rows)))
    assert [p["prediction"] for p in platform] == classes
    assert all(list(p["probabilities"]) == ["0", "1"] for p in platform)
    result = batch_job_csv(client, app, world, rows)
    assert result.columns == [*FEATURES, "prediction", "probability_0", "probability_1"]
    assert result["prediction"].to_list() == classes
