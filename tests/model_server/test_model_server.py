"""The model server as users run it: `maestro model-server` in its own process, sharing
the platform's settings, serving a skops model uploaded through the platform API and a
file of the models directory, over Maestro's routes, the Open Inference Protocol and
MLflow's scoring protocol."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.conftest import RunningProcess, wait_until
from tests.factories import Factory
from tests.registry.conftest import new_model, new_version
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import FEATURES, skops_bytes

pytestmark = pytest.mark.slow

OPERATOR_KEY = "operator-key-for-the-tests-0001"
OPERATOR = {"X-API-Key": OPERATOR_KEY}
NAMES = [f"f{i}" for i in range(FEATURES)]


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    """The platform's settings, which the model server process shares."""
    models = tmp_path / "models"
    models.mkdir()
    return make_settings(
        model_server_api_keys=[OPERATOR_KEY],
        model_server_models_dir=models,
        model_server_auth_cache_seconds=0.5,
    )


def platform_model(client: TestClient, factory: Factory, model: Any) -> dict[str, Any]:
    """An organisation with an admin, a viewer's API key and another organisation's
    key, and a skops version of ``model`` uploaded through the platform API."""
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    project = factory.project(org, admin, "organization", name="Churn")
    registered = new_model(client, project, admin.headers, name="Churn Predictor")
    version = new_version(
        client, registered["id"], admin.headers, content=skops_bytes(model), filename="churn.skops"
    )
    other = factory.organization("Globex")
    return {
        "admin": admin,
        "model": registered,
        "version": version,
        "inference_key": {"X-API-Key": factory.api_key(org, {"inference": ["read"]})},
        "outsider_key": {
            "X-API-Key": factory.api_key(other, {"inference": ["read"], "deployments": ["write"]})
        },
    }


def expect(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_registry_model_served_over_every_protocol(
    client: TestClient,
    factory: Factory,
    settings: Settings,
    model_server: Callable[..., RunningProcess],
    logreg: Any,
    data: Data,
) -> None:
    world = platform_model(client, factory, logreg)
    model_id = world["model"]["id"]
    preloaded = settings.model_copy(update={"model_server_preload": [f"churn={model_id}:1.0.0"]})
    server = model_server(preloaded)
    rows = data.fresh[:5]
    expected = logreg.predict(rows).tolist()
    expected_proba = logreg.predict_proba(rows)

    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        health = expect(http.get("/api/v1/health"))
        assert health["status"] == "healthy"
        assert health["checks"]["models"]["loaded"] == 1

        # Authentication: none, a wrong key, a malformed token are refused alike.
        for headers in ({}, {"X-API-Key": "not-a-key-of-this-server"}, {"Authorization": "Bearer nope"}):
            refused = http.post("/api/v1/predict", json={"features": rows[0].tolist()}, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"

        # A platform API key with inference:read predicts with its organisation's model.
        key = world["inference_key"]
        one = expect(
            http.post(
                "/api/v1/predict",
                json={"features": rows[0].tolist(), "return_probabilities": True},
                headers=key,
            )
        )
        assert one["prediction"] == expected[0]
        assert one["prediction_label"] == str(expected[0])
        assert one["model_name"] == "churn"
        assert one["model_version"] == "1.0.0"
        assert np.allclose(one["probabilities"], expected_proba[0], atol=1e-5)
        assert one["prediction_time"] >= 0
        assert one["timestamp"].endswith("Z")
        by_name = dict(zip(NAMES, rows[1].tolist(), strict=True))
        named = expect(http.post("/api/v1/predict/churn", json={"features": by_name}, headers=key))
        assert named["prediction"] == expected[1]
        assert named["probabilities"] is None

        # Another organisation's key sees no such model; the viewer's key may not load.
        hidden = http.post(
            "/api/v1/predict/churn", json={"features": rows[0].tolist()}, headers=world["outsider_key"]
        )
        assert hidden.status_code == 404, hidden.text
        denied = http.post("/api/v1/models/load", json={"model_id": model_id, "model_name": "x"}, headers=key)
        assert denied.status_code == 403, denied.text

        # The admin loads the same version under a second name, with an access token.
        admin = world["admin"].headers
        loaded = expect(
            http.post(
                "/api/v1/models/load",
                json={"model_name": "fraud", "registry_model": "Churn Predictor", "version": "1.0.0"},
                headers=admin,
            )
        )
        assert loaded["source"]["model_id"] == model_id
        assert loaded["serving"] == "onnx (converted from skops)"
        assert loaded["replaced_version"] is None
        listed = expect(http.get("/api/v1/models", headers=key))
        assert {m["name"] for m in listed["models"]} == {"churn", "fraud"}
        assert listed["default_model"] == "churn"
        assert expect(http.get("/api/v1/models", headers=world["outsider_key"]))["models"] == []

        batch = expect(
            http.post(
                "/api/v1/batch-predict",
                json={"features": rows.tolist(), "model_name": "fraud", "return_probabilities": True},
                headers=admin,
            )
        )
        assert [p["prediction"] for p in batch["predictions"]] == expected
        assert batch["count"] == 5
        assert np.allclose(
            [p["confidence"] for p in batch["predictions"]], expected_proba.max(axis=1), atol=1e-5
        )

        # Asynchronous prediction: a job, polled until it completes; only its owner sees it.
        job = expect(
            http.post("/api/v1/predict-async", json={"features": data.fresh.tolist()}, headers=key), 202
        )
        status_url = job["status_url"]

        def finished() -> Any:
            state = expect(http.get(status_url, headers=key))
            return state if state["status"] in ("completed", "failed") else None

        done = wait_until(finished, timeout=30)
        assert done["status"] == "completed", done
        assert [p["prediction"] for p in done["result"]["predictions"]] == logreg.predict(data.fresh).tolist()
        assert http.get(status_url, headers=OPERATOR).status_code == 404

        info = expect(http.get("/api/v1/models/churn/info", headers=key))
        assert info["classes"] == [0, 1]
        assert info["n_features"] == FEATURES
        assert info["source"]["version_id"] == world["version"]["id"]
        status = expect(http.get("/api/v1/status", headers=OPERATOR))
        assert status["preload"] == {"status": "ready", "total": 1, "loaded": 1, "errors": []}
        assert status["async_jobs"]["completed"] == 1
        metrics = http.get("/api/v1/metrics", headers=OPERATOR)
        assert metrics.status_code == 200
        text = metrics.text
        assert (
            f'maestro_model_server_predictions_total{{model="fraud",organization="{loaded["namespace"]}",'
            'status="success",version="1.0.0"} 5.0' in text
        )
        assert 'route="/api/v1/predict/{model_name}"' in text
        assert 'le="0.0005"' in text
        assert "process_resident_memory_bytes" in text
        assert "maestro_model_server_models_loaded 2.0" in text

        # Open Inference Protocol, FP32 and FP64 tensors.
        assert expect(http.get("/v2/health/live"))["live"] is True
        assert http.get("/v2/health/ready").status_code == 200
        assert expect(http.get("/v2"))["extensions"] == ["binary_tensor_data"]
        meta = expect(http.get("/v2/models/churn", headers=key))
        assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, FEATURES]}]
        assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
        assert http.get("/v2/models/churn/versions/1.0.0/ready", headers=key).status_code == 200
        assert http.get("/v2/models/churn/versions/9.9.9/ready", headers=key).status_code == 404
        for datatype in ("FP32", "FP64"):
            tensor = rows.astype(np.float32) if datatype == "FP32" else rows
            answer = expect(
                http.post(
                    "/v2/models/churn/versions/1.0.0/infer",
                    json={
                        "id": "request-1",
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [5, FEATURES],
                                "datatype": datatype,
                                "data": tensor.ravel().tolist(),
                            }
                        ],
                    },
                    headers=key,
                )
            )
            assert answer["id"] == "request-1"
            assert answer["model_version"] == "1.0.0"
            predict, proba = answer["outputs"]
            assert predict == {"name": "predict", "shape": [5], "datatype": "INT64", "data": expected}
            assert proba["shape"] == [5, 2]
            assert np.allclose(np.reshape(proba["data"], (5, 2)), expected_proba, atol=1e-4)
        only = expect(
            http.post(
                "/v2/models/churn/infer",
                json={
                    "inputs": [
                        {"name": "x", "shape": [1, FEATURES], "datatype": "FP64", "data": [rows[0].tolist()]}
                    ],
                    "outputs": [{"name": "predict"}],
                },
                headers=key,
            )
        )
        assert [o["name"] for o in only["outputs"]] == ["predict"]
        assert http.post("/v2/models/churn/infer", json={"inputs": []}, headers={}).json() == {
            "error": "Send a Maestro API key or access token (Authorization: Bearer … or X-API-Key)"
        }

        # MLflow's scoring protocol, each input form, on the default model.
        assert http.get("/ping").status_code == 200
        assert http.get("/health").status_code == 200
        assert http.get("/version").text
        bodies = {
            "dataframe_split": {"columns": NAMES[::-1], "data": [row[::-1] for row in rows.tolist()]},
            "dataframe_records": [dict(zip(NAMES, row, strict=True)) for row in rows.tolist()],
            "instances": rows.tolist(),
            "inputs": {name: rows[:, i].tolist() for i, name in enumerate(NAMES)},
        }
        for form, payload in bodies.items():
            scored = expect(http.post("/invocations", json={form: payload}, headers=key))
            assert scored == {"predictions": expected}, form
        with_params = expect(
            http.post(
                "/invocations",
                json={"inputs": rows.tolist(), "params": {"return_probabilities": True}},
                headers=key,
            )
        )
        assert np.allclose(with_params["predictions"], expected_proba, atol=1e-5)
        mismatch = http.post("/invocations", json={"instances": [[1.0, 2.0]]}, headers=key)
        assert mismatch.status_code == 400
        assert mismatch.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        both = http.post("/invocations", json={"instances": [], "inputs": []}, headers=key)
        assert both.status_code == 400
        assert both.json()["error_code"] == "BAD_REQUEST"

        # Unloading: the name stops answering, the other keeps serving.
        gone = expect(http.delete("/api/v1/models/fraud", headers=admin))
        assert gone["name"] == "fraud"
        assert (
            http.post("/api/v1/predict/fraud", json={"features": rows[0].tolist()}, headers=key).status_code
            == 404
        )
        assert http.delete("/api/v1/models/churn", headers=key).status_code == 403
        assert (
            expect(http.post("/api/v1/predict", json={"features": rows[0].tolist()}, headers=key))[
                "model_name"
            ]
            == "churn"
        )


def test_models_directory_file_and_rate_limits(
    make_settings: Callable[..., Settings],
    model_server: Callable[..., RunningProcess],
    tmp_path: Path,
    forest: Any,
    data: Data,
) -> None:
    models = tmp_path / "models"
    (models / "team").mkdir(parents=True)
    (models / "team" / "forest.skops").write_bytes(skops_bytes(forest))
    settings = make_settings(
        model_server_api_keys=[OPERATOR_KEY],
        model_server_models_dir=models,
        rate_limits_enabled=True,
        model_server_rate_limit_predict="5/minute",
        model_server_rate_limit_management="2/minute",
    )
    server = model_server(settings)
    rows = data.fresh[:3]
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        assert expect(http.get("/api/v1/models", headers=OPERATOR))["models"] == []
        assert (
            http.post("/api/v1/predict", json={"features": rows[0].tolist()}, headers=OPERATOR).status_code
            == 404
        )
        loaded = expect(
            http.post("/api/v1/models/load", json={"model_path": "team/forest.skops"}, headers=OPERATOR)
        )
        assert loaded["name"] == "forest"
        assert loaded["source"]["type"] == "file"
        assert loaded["source"]["file"] == "team/forest.skops"
        assert loaded["default"] is True
        for _ in range(3):
            answer = expect(
                http.post("/api/v1/predict", json={"features": rows[0].tolist()}, headers=OPERATOR)
            )
            assert answer["prediction"] == forest.predict(rows[:1])[0]
        limited = http.post("/v2/models/forest/infer", json={"inputs": []}, headers=OPERATOR)
        assert limited.status_code == 400  # the fifth request of the minute is still answered
        over = http.post("/api/v1/predict", json={"features": rows[0].tolist()}, headers=OPERATOR)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(over.headers["Retry-After"]) >= 1
        assert over.headers["X-RateLimit-Limit"] == "5"
        over_oip = http.post("/v2/models/forest/infer", json={"inputs": []}, headers=OPERATOR)
        assert over_oip.status_code == 429
        assert "error" in over_oip.json()
        # Other groups keep their own budget: batches are not predictions.
        assert (
            expect(http.post("/api/v1/batch-predict", json={"features": rows.tolist()}, headers=OPERATOR))[
                "count"
            ]
            == 3
        )
        assert expect(http.delete("/api/v1/models/forest", headers=OPERATOR))["name"] == "forest"
        third = http.post("/api/v1/models/load", json={"model_path": "team/forest.skops"}, headers=OPERATOR)
        assert third.status_code == 429
        assert "Retry-After" in third.headers


def test_readiness_waits_for_preloading_and_tritonclient_infers(
    make_settings: Callable[..., Settings],
    model_server: Callable[..., RunningProcess],
    tmp_path: Path,
    logreg: Any,
    data: Data,
) -> None:
    tritonclient = pytest.importorskip("tritonclient.http")
    models = tmp_path / "models"
    models.mkdir()
    (models / "logreg.skops").write_bytes(skops_bytes(logreg))
    settings = make_settings(
        model_server_api_keys=[OPERATOR_KEY],
        model_server_models_dir=models,
        model_server_preload=["file:logreg.skops", "missing=file:absent.skops"],
    )
    server = model_server(settings, ready=False)

    def preloading_over() -> Any:
        document = httpx.get(f"{server.base_url}/api/v1/health").json()
        return document if document["status"] != "loading" else None

    health = wait_until(preloading_over, timeout=60)
    assert health["status"] == "unhealthy"  # one entry names a file that is not there
    assert httpx.get(f"{server.base_url}/api/v1/health").status_code == 503
    assert httpx.get(f"{server.base_url}/v2/health/ready").status_code == 503
    assert health["checks"]["models"]["preload"]["errors"][0]["entry"] == "missing=file:absent.skops"

    # tritonclient adds its own headers to the dict it is given: a fresh one per call.
    client = tritonclient.InferenceServerClient(url=server.base_url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_model_ready("logreg", headers=dict(OPERATOR))
        metadata = client.get_model_metadata("logreg", headers=dict(OPERATOR))
        assert metadata["inputs"][0]["shape"] == [-1, FEATURES]
        rows = data.fresh[:4]
        for binary in (True, False):
            tensor = tritonclient.InferInput("input", [4, FEATURES], "FP32")
            tensor.set_data_from_numpy(rows.astype(np.float32), binary_data=binary)
            outputs = [tritonclient.InferRequestedOutput("predict", binary_data=binary)]
            result = client.infer("logreg", [tensor], outputs=outputs, headers=dict(OPERATOR))
            assert result.as_numpy("predict").tolist() == logreg.predict(rows).tolist()
        default_outputs = client.infer(
            "logreg", [tensor], headers=dict(OPERATOR)
        )  # no outputs named: every output, in binary
        assert np.allclose(default_outputs.as_numpy("predict_proba"), logreg.predict_proba(rows), atol=1e-4)
        with pytest.raises(Exception, match="the model takes 20 features"):
            bad = tritonclient.InferInput("input", [4, FEATURES + 1], "FP32")
            bad.set_data_from_numpy(np.zeros((4, FEATURES + 1), dtype=np.float32))
            client.infer("logreg", [bad], headers=dict(OPERATOR))
    finally:
        client.close()
    assert httpx.get(f"{server.base_url}/v2/health/live").status_code == 200
