"""Hostile input to the model server: paths that try to leave the models directory,
pickles that run code, numbers and bodies that are not what a model takes. Each gets
a clear error in its protocol's shape, nothing outside the models directory is read
or run, and the server keeps serving."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from maestro.model_server.app import create_model_server
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import FEATURES, joblib_bytes, pickle_bytes, skops_bytes
from tests.runtimes.payloads import BenignModel, CreatesFile

KEY = "operator-key-for-the-tests-0002"
OPERATOR = {"X-API-Key": KEY}


def server_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        data_dir=tmp_path / "data",
        access_log=False,
        rate_limits_enabled=False,
        model_server_api_keys=[KEY],
        model_server_platform_auth=False,
        model_server_models_dir=tmp_path / "models",
        **values,
    )


def started(settings: Settings) -> Iterator[TestClient]:
    """The model server's app, once its preloading thread has said it ended."""
    with TestClient(create_model_server(settings), raise_server_exceptions=False) as client:
        server = client.app.state.model_server  # type: ignore[attr-defined]
        assert server.preload_done.wait(timeout=120), "preloading did not finish"
        assert client.get("/api/v1/health").json()["status"] != "loading"
        yield client


@pytest.fixture
def world(tmp_path: Path, logreg: Any) -> dict[str, Path]:
    models = tmp_path / "models"
    (models / "nested").mkdir(parents=True)
    (models / "logreg.skops").write_bytes(skops_bytes(logreg))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.skops").write_bytes(skops_bytes(logreg))
    (models / "escape.skops").symlink_to(outside / "secret.skops")
    (models / "nested" / "up").symlink_to(outside)
    (models / "inside-link.skops").symlink_to(models / "logreg.skops")
    marker = tmp_path / "code-ran"
    (models / "evil.pkl").write_bytes(pickle_bytes(CreatesFile(str(marker))))
    (models / "evil.joblib").write_bytes(joblib_bytes(CreatesFile(str(marker))))
    (models / "benign.joblib").write_bytes(joblib_bytes(BenignModel([1.0] * FEATURES)))
    (models / "junk.skops").write_bytes(b"PK\x03\x04 not really a zip")
    return {"models": models, "outside": outside, "marker": marker}


@pytest.fixture
def client(tmp_path: Path, world: dict[str, Path]) -> Iterator[TestClient]:
    yield from started(server_settings(tmp_path, model_server_preload=["file:logreg.skops"]))


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def still_serving(client: TestClient, data: Data) -> None:
    answer = client.post("/api/v1/predict", json={"features": data.fresh[0].tolist()}, headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    assert client.get("/api/v1/health").status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "nested/../../outside/secret.skops",
        "nested/up/secret.skops",
        "escape.skops",
        "logreg.skops\x00.txt",
        "..",
        ".",
        "",
        "C:\\Windows\\system.ini",
        "~/secret.skops",
        ".hidden",
        "nested//logreg.skops",
        "%2e%2e/etc/passwd",
        "a" * 2000,
    ],
)
def test_paths_never_leave_the_models_directory(
    client: TestClient, world: dict[str, Path], data: Data, name: str
) -> None:
    before = os.stat(world["outside"] / "secret.skops").st_atime_ns
    response = client.post("/api/v1/models/load", json={"model_path": name}, headers=OPERATOR)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code != 401
    assert error_of(response)["code"] in ("VALIDATION_ERROR", "RESOURCE_NOT_FOUND")
    assert os.stat(world["outside"] / "secret.skops").st_atime_ns == before
    assert [m["name"] for m in client.get("/api/v1/models", headers=OPERATOR).json()["models"]] == ["logreg"]
    still_serving(client, data)


def test_a_symlink_that_stays_inside_loads(client: TestClient) -> None:
    response = client.post(
        "/api/v1/models/load",
        json={"model_path": "inside-link.skops", "model_name": "linked"},
        headers=OPERATOR,
    )
    assert response.status_code == 200, response.text
    assert response.json()["source"]["file"] == "logreg.skops"


def test_nul_in_the_url_is_refused(client: TestClient) -> None:
    response = client.delete("/api/v1/models/logreg%00", headers=OPERATOR)
    assert response.status_code == 422
    assert client.get("/api/v1/models/logreg/info", headers=OPERATOR).status_code == 200


@pytest.mark.parametrize("name", ["evil.pkl", "evil.joblib", "benign.joblib"])
def test_pickles_are_refused_without_the_operators_opt_in(
    client: TestClient, world: dict[str, Path], data: Data, name: str
) -> None:
    response = client.post("/api/v1/models/load", json={"model_path": name}, headers=OPERATOR)
    assert response.status_code == 409, response.text
    assert "MAESTRO_MODEL_SERVER_TRUST_MODELS_DIR" in error_of(response)["message"]
    assert not world["marker"].exists()
    still_serving(client, data)


def test_the_opt_in_trusts_the_models_directory(tmp_path: Path, world: dict[str, Path], data: Data) -> None:
    for client in started(server_settings(tmp_path, model_server_trust_models_dir=True)):
        loaded = client.post("/api/v1/models/load", json={"model_path": "benign.joblib"}, headers=OPERATOR)
        assert loaded.status_code == 200, loaded.text
        answer = client.post("/api/v1/predict/benign", json={"features": [1.0] * FEATURES}, headers=OPERATOR)
        assert answer.json()["prediction"] == pytest.approx(FEATURES)


def test_a_broken_file_is_a_clear_error(client: TestClient, data: Data) -> None:
    response = client.post("/api/v1/models/load", json={"model_path": "junk.skops"}, headers=OPERATOR)
    assert response.status_code == 422, response.text
    still_serving(client, data)


def test_load_requests_are_checked(client: TestClient) -> None:
    cases = [
        ({"model_path": "logreg.skops", "model_id": "model_x"}, 422),
        ({"model_path": "logreg.skops", "model_name": "bad name!"}, 422),
        ({"model_path": 5}, 422),
        ({"model_path": "logreg.skops", "surprise": True}, 422),
        ({}, 422),
        ({"model_path": "absent.skops"}, 404),
    ]
    for body, status in cases:
        response = client.post("/api/v1/models/load", json=body, headers=OPERATOR)
        assert response.status_code == status, (body, response.text)


def raw(client: TestClient, path: str, body: bytes, content_type: str = "application/json") -> Any:
    return client.post(path, content=body, headers={**OPERATOR, "Content-Type": content_type})


def test_numbers_a_model_cannot_take_are_refused(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    huge = orjson.dumps({"features": [1e301, *row[1:]]})
    response = raw(client, "/api/v1/predict", huge)
    assert response.status_code == 422
    assert error_of(response)["details"][0]["field"] == "features.0.f0"
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 400):
        body = b'{"features": [' + literal + b"," + b",".join(b"0" for _ in range(FEATURES - 1)) + b"]}"
        response = raw(client, "/api/v1/predict", body)
        assert response.status_code == 422, (literal, response.text)
    for bad in ([None, *row[1:]], ["1", *row[1:]], [True, *row[1:]], row[:-1], [*row, 1.0], [row]):
        response = client.post("/api/v1/predict", json={"features": bad}, headers=OPERATOR)
        assert response.status_code == 422, (bad, response.text)
        assert error_of(response)["code"] == "VALIDATION_ERROR"
    still_serving(client, data)


def test_bodies_that_are_not_requests_are_refused(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    assert raw(client, "/api/v1/predict", b'{"features": [1, 2').status_code == 422
    assert raw(client, "/api/v1/predict", b"[1, 2, 3]").status_code == 422
    assert raw(client, "/api/v1/predict", b"\xff\xfe").status_code == 422
    wrong_type = raw(client, "/api/v1/predict", orjson.dumps({"features": row}), "text/plain")
    assert wrong_type.status_code == 415
    assert error_of(wrong_type)["code"] == "UNSUPPORTED_MEDIA_TYPE"
    form = raw(client, "/api/v1/batch-predict", b"features=1", "application/x-www-form-urlencoded")
    assert form.status_code == 415
    too_many = client.post("/api/v1/batch-predict", json={"features": [row] * 1001}, headers=OPERATOR)
    assert too_many.status_code == 422
    assert "At most 1000 rows" in error_of(too_many)["message"]
    paths = client.post(
        "/api/v1/predict-async", json={"data_path": "/etc/passwd", "features": [row]}, headers=OPERATOR
    )
    assert paths.status_code == 422
    assert "inline" in error_of(paths)["message"]
    proba = client.post(
        "/api/v1/predict", json={"features": row, "return_probabilities": "yes"}, headers=OPERATOR
    )
    assert proba.status_code == 422
    missing = client.post("/api/v1/predict/nope", json={"features": row}, headers=OPERATOR)
    assert missing.status_code == 404
    huge_body = raw(client, "/api/v1/batch-predict", b" " * (64 * 1024**2 + 1))
    assert huge_body.status_code == 413
    still_serving(client, data)


def tensor(shape: list[int], datatype: str, values: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": values}]}


def test_open_inference_errors(client: TestClient, data: Data) -> None:
    rows = data.fresh[:2]
    flat = rows.ravel().tolist()
    cases = [
        tensor([2, FEATURES + 1], "FP64", flat),
        tensor([3, FEATURES], "FP64", flat),
        tensor([2, FEATURES], "FP128", flat),
        tensor([2, FEATURES], "INT32", flat),
        tensor([2, FEATURES], "INT8", [1000] * (2 * FEATURES)),
        tensor([2, FEATURES], "FP32", [1e39] * (2 * FEATURES)),
        tensor([2, FEATURES], "BOOL", [1] * (2 * FEATURES)),
        tensor([2, FEATURES], "BYTES", ["one"] * (2 * FEATURES)),
        tensor([2, FEATURES, 1], "FP64", flat),
        tensor([-1, FEATURES], "FP64", flat),
        tensor([2 * FEATURES], "FP64", flat),
        {"inputs": "everything"},
        {"inputs": [{"name": "input", "shape": [2, FEATURES], "datatype": "FP64"}]},
        {**tensor([2, FEATURES], "FP64", flat), "outputs": [{"name": "explain"}]},
        {"inputs": [{"name": "f0", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]},
    ]
    for body in cases:
        response = client.post("/v2/models/logreg/infer", json=body, headers=OPERATOR)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()) == {"error"}
    bad_header = client.post(
        "/v2/models/logreg/infer",
        content=b'{"inputs": []}',
        headers={**OPERATOR, "Inference-Header-Content-Length": "999"},
    )
    assert bad_header.status_code == 400
    binary_short = client.post(
        "/v2/models/logreg/infer",
        content=orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, FEATURES],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            }
        )
        + b"\x00" * 8,
        headers={
            **OPERATOR,
            "Inference-Header-Content-Length": str(
                len(
                    orjson.dumps(
                        {
                            "inputs": [
                                {
                                    "name": "input",
                                    "shape": [1, FEATURES],
                                    "datatype": "FP32",
                                    "parameters": {"binary_data_size": 8},
                                }
                            ]
                        }
                    )
                )
            ),
        },
    )
    assert binary_short.status_code == 400
    assert (
        client.post(
            "/v2/models/absent/infer", json=tensor([2, FEATURES], "FP64", flat), headers=OPERATOR
        ).status_code
        == 404
    )
    assert client.get("/v2/models/absent", headers=OPERATOR).json() == {
        "error": "No model named 'absent' is loaded on this server"
    }
    assert client.get("/v2/nowhere").json() == {"error": "No such route"}
    ok = client.post(
        "/v2/models/logreg/infer",
        json=tensor([2, FEATURES], "BYTES", [str(v) for v in flat]),
        headers=OPERATOR,
    )
    assert ok.status_code == 200, ok.text
    per_feature = {
        "inputs": [
            {"name": f"f{i}", "shape": [2, 1], "datatype": "FP64", "data": rows[:, i].tolist()}
            for i in range(FEATURES)
        ]
    }
    assert (
        client.post("/v2/models/logreg/infer", json=per_feature, headers=OPERATOR).json()["outputs"][0][
            "data"
        ]
        == ok.json()["outputs"][0]["data"]
    )
    still_serving(client, data)


def test_mlflow_errors(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    csv = raw(client, "/invocations", b"f0,f1\n1,2\n", "text/csv")
    assert csv.status_code == 415
    assert csv.json()["error_code"] == "BAD_REQUEST"
    latin = raw(
        client, "/invocations", orjson.dumps({"instances": [row]}), "application/json; charset=latin-1"
    )
    assert latin.status_code == 415
    malformed = raw(client, "/invocations", b"{not json")
    assert malformed.status_code == 400
    assert malformed.json()["error_code"] == "BAD_REQUEST"
    for body in (
        {"dataframe_split": {"columns": ["f0"], "data": [[1.0]]}},
        {"dataframe_split": {"columns": [f"f{i}" for i in range(FEATURES)], "data": [["x"] * FEATURES]}},
        {"dataframe_records": [{"nope": 1}]},
        {"inputs": {"f0": [1.0], "f1": [1.0, 2.0]}},
        {"instances": [row] * 1001},
    ):
        response = client.post("/invocations", json=body, headers=OPERATOR)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert set(response.json()) == {"error_code", "message"}
    unauthenticated = client.post("/invocations", json={"instances": [row]})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error_code"] == "UNAUTHENTICATED"
    still_serving(client, data)


def test_keys_in_the_query_string_and_unknown_keys_are_refused(client: TestClient, data: Data) -> None:
    row = data.fresh[0].tolist()
    assert client.post(f"/api/v1/predict?api_key={KEY}", json={"features": row}).status_code == 401
    assert (
        client.post("/api/v1/predict", json={"features": row}, headers={"X-API-Key": KEY[:-1]}).status_code
        == 401
    )
    platform_style = {"Authorization": "Bearer mk_abcdefabcdefabcdefabcdefabcdefab_abcdef"}
    assert client.post("/api/v1/predict", json={"features": row}, headers=platform_style).status_code == 401
    assert client.get("/api/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.get("/api/v1/health").status_code == 200  # probes need no key
    assert client.get("/v2/health/live").status_code == 200
    assert np.isfinite(
        client.post("/api/v1/predict", json={"features": row}, headers=OPERATOR).json()["prediction"]
    )
