"""The model server's cheap paths answer exactly like the general ones: small ONNX
predictions run on the event loop (``ModelServer.runs_inline``), large ONNX batches
are split over the cores (``runtimes.parallel``), and the platform's prediction logs are
written as JSON text serialised by orjson (``deployments.predictions``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from maestro.model_server.auth import Caller
from maestro.runtimes.errors import InputError
from maestro.runtimes.parallel import SPLIT_MIN_ROWS, SPLIT_MIN_SECONDS, RowSplitter, splittable
from maestro.runtimes.service import load_runtime
from tests.model_server.test_model_server_hostile import KEY, OPERATOR, server_settings, started
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import FEATURES, onnx_bytes, skops_bytes

VOLATILE = ("prediction_time", "timestamp")


@pytest.fixture
def client(tmp_path: Path, logreg: Any, forest: Any) -> Iterator[TestClient]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "logreg.onnx").write_bytes(onnx_bytes(logreg))
    (models / "forest.skops").write_bytes(skops_bytes(forest))
    settings = server_settings(
        tmp_path,
        model_server_preload=["logreg=file:logreg.onnx", "forest=file:forest.skops"],
        model_server_default_model="logreg",
    )
    yield from started(settings)


def post(client: TestClient, path: str, body: bytes, **headers: str) -> Any:
    return client.post(
        path, content=body, headers={**OPERATOR, "Content-Type": "application/json", **headers}
    )


def stable(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in VOLATILE}


def test_small_onnx_predictions_run_inline_and_large_or_estimator_ones_do_not(client: TestClient) -> None:
    server = client.app.state.model_server  # type: ignore[attr-defined]
    operator = Caller("operator", "operator_test")
    assert server.models["logreg"].inline
    assert server.runs_inline(operator, "logreg", 200)
    assert server.runs_inline(operator, None, 200)  # the default model
    assert not server.runs_inline(operator, "logreg", 1024 * 1024)
    assert not server.runs_inline(operator, "missing", 200)
    forest = server.models["forest"]
    assert forest.inline == (forest.runtime.serving.startswith("onnx"))


def test_an_inline_prediction_answers_like_the_threaded_one(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    for proba in (False, True):
        inline = post(
            client, "/api/v1/predict/logreg", orjson.dumps({"features": row, "return_probabilities": proba})
        )
        # A body naming its model is answered on a prediction thread.
        threaded = post(
            client,
            "/api/v1/predict",
            orjson.dumps({"features": row, "model_name": "logreg", "return_probabilities": proba}),
        )
        assert inline.status_code == threaded.status_code == 200
        assert stable(inline.json()) == stable(threaded.json())
        assert inline.headers["x-request-id"]


def test_inline_errors_keep_each_protocols_shape(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    malformed = post(client, "/api/v1/predict/logreg", b'{"features": [1, 2')
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "VALIDATION_ERROR"
    narrow = post(client, "/api/v1/predict/logreg", orjson.dumps({"features": row[:-1]}))
    assert narrow.status_code == 422
    wrong_type = post(
        client, "/api/v1/predict/logreg", orjson.dumps({"features": row}), **{"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    unknown_key = client.post(
        "/api/v1/predict/logreg", json={"features": row}, headers={"X-API-Key": KEY + "-wrong"}
    )
    assert unknown_key.status_code == 401
    no_key = client.post("/api/v1/predict/logreg", json={"features": row})
    assert no_key.status_code == 401

    v2 = post(client, "/v2/models/logreg/infer", orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3]}]}))
    assert v2.status_code == 400
    assert set(v2.json()) == {"error"}
    v2_ok = post(
        client,
        "/v2/models/logreg/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP64", "data": row}]}),
    )
    assert v2_ok.status_code == 200
    assert v2_ok.json()["outputs"][0]["data"] == [
        post(client, "/api/v1/predict/logreg", orjson.dumps({"features": row})).json()["prediction"]
    ]

    mlflow = post(client, "/invocations", b"[1, 2")
    assert mlflow.status_code == 400
    assert mlflow.json()["error_code"] == "BAD_REQUEST"
    invoked = post(client, "/invocations", orjson.dumps({"inputs": [row]}))
    assert invoked.status_code == 200
    assert len(invoked.json()["predictions"]) == 1


def test_an_oversized_batch_is_refused_by_the_fast_path(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    too_many = post(client, "/api/v1/batch-predict", orjson.dumps({"features": [row] * 1001}))
    assert too_many.status_code == 422
    assert "At most 1000 rows" in too_many.json()["error"]["message"]


def test_a_split_batch_answers_like_one_call(forest: Any, data: Data) -> None:
    runtime = load_runtime(onnx_bytes(forest), format="onnx")
    assert splittable(runtime)
    splitter = RowSplitter(parts=2)
    try:
        rng = np.random.default_rng(3)
        matrix = rng.normal(size=(SPLIT_MIN_ROWS * 2 + 3, FEATURES))
        splitter._seconds_per_row[runtime] = 1.0  # as if the model were slow: always split
        labels, proba = splitter.run(runtime, runtime.predict_with_proba, matrix)
        whole_labels, whole_proba = runtime.predict_with_proba(matrix)
        assert np.array_equal(labels, whole_labels)
        assert proba is not None and whole_proba is not None
        assert np.array_equal(proba, whole_proba)
        assert np.array_equal(splitter.run(runtime, runtime.predict, matrix), runtime.predict(matrix))

        # An error in the second block names the row of the whole batch.
        matrix[SPLIT_MIN_ROWS + 10, 4] = 1e39  # beyond float32
        with pytest.raises(InputError) as raised:
            splitter.run(runtime, runtime.predict_with_proba, matrix)
        assert raised.value.row == SPLIT_MIN_ROWS + 10

        # A small batch is never split, and a cheap model is measured, not split.
        cheap = RowSplitter(parts=2)
        cheap.run(runtime, runtime.predict, matrix[:10])
        assert runtime not in cheap._seconds_per_row
        cheap.close()
    finally:
        splitter.close()


def test_a_cheap_model_that_waited_during_its_measured_call_is_not_split(logreg: Any) -> None:
    """A call held up (here by a sleep, as by the interpreter's lock or a busy core) costs
    its thread no processor time: the model stays measured as cheap, and is not split."""
    runtime = load_runtime(onnx_bytes(logreg), format="onnx")
    splitter = RowSplitter(parts=2)
    matrix = np.random.default_rng(4).normal(size=(SPLIT_MIN_ROWS * 2, FEATURES))

    def held_up(rows: np.ndarray) -> Any:
        time.sleep(SPLIT_MIN_SECONDS * 5)
        return runtime.predict(rows)

    try:
        splitter.run(runtime, held_up, matrix)
        assert splitter._seconds_per_row[runtime] * len(matrix) < SPLIT_MIN_SECONDS
        splitter.run(runtime, runtime.predict, matrix)
        assert splitter._pool is None  # no helper thread was ever needed
    finally:
        splitter.close()


def test_the_model_server_batch_with_a_split_model_matches_the_runtime(
    client: TestClient, data: Data
) -> None:
    server = client.app.state.model_server  # type: ignore[attr-defined]
    model = server.models["forest"]
    rows = np.random.default_rng(5).normal(size=(600, FEATURES))
    server.splitter._seconds_per_row[model.runtime] = 1.0
    answer = post(
        client,
        "/api/v1/batch-predict",
        orjson.dumps({"features": rows.tolist(), "model_name": "forest", "return_probabilities": True}),
    )
    assert answer.status_code == 200, answer.text
    labels, proba = model.runtime.predict_with_proba(rows)
    body = answer.json()
    assert [p["prediction"] for p in body["predictions"]] == labels.tolist()
    assert [p["probabilities"] for p in body["predictions"]] == proba.tolist()
    assert [p["prediction_label"] for p in body["predictions"]] == [str(v) for v in labels.tolist()]
