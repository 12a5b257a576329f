"""The model server's fast path (``model_server.fast_path``) answers every request exactly
as the FastAPI routes it stands in for: two model servers on the same settings and
platform database, one with ``MAESTRO_FAST_PATHS`` on and one with it off, get the same
requests (predict, batch, Open Inference Protocol, MLflow scoring; successes and every
error class) and must give the same status, headers that matter and body, and the
status the routes document.

The rule for a body of the wrong type and too large: the content type is checked first
(415, before any byte of the body is read), then the size (413)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.model_server.app import create_model_server
from maestro.model_server.fast_path import FastPredictions
from tests.deployments.platform import FEATURES, Tiny, onnx_file, records, register, skops_file, upload
from tests.factories import Factory, World
from tests.fast_path_equality import (
    assert_same_answer,
    equality_settings,
    module_database_url,  # noqa: F401 - a fixture
    stalled_post,
    switched_off,
)

OPERATOR_KEY = "operator-key-for-the-equality-tests"
MAX_BODY = 4096  # MAESTRO_MODEL_SERVER_MAX_BODY_BYTES here: small enough to pass
JSON = {"Content-Type": "application/json"}


@dataclass
class Apps:
    fast: TestClient
    routed: TestClient
    callers: dict[str, dict[str, str]]
    version: str
    settings: Settings
    database_url: str
    data_dir: Path


def _ready(client: TestClient) -> None:
    """Wait for the app's preloading thread to say it has ended."""
    server = client.app.state.model_server
    assert server.preload_done.wait(timeout=120), "preloading did not finish"
    assert client.get("/api/v1/health").json()["status"] != "loading"


def _pair(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    fast_app, routed_app = create_model_server(settings), create_model_server(switched_off(settings))
    assert any(m.cls is FastPredictions for m in fast_app.user_middleware)
    assert not any(m.cls is FastPredictions for m in routed_app.user_middleware)
    with (
        TestClient(fast_app, raise_server_exceptions=False) as fast,
        TestClient(routed_app, raise_server_exceptions=False) as routed,
    ):
        _ready(fast)
        _ready(routed)
        yield fast, routed


def _models_dir(root: Path, tiny: Tiny) -> Path:
    models = root / "models"
    models.mkdir(exist_ok=True)
    (models / "shared.skops").write_bytes(skops_file(tiny.second))
    return models


@pytest.fixture(scope="module")
def world(module_database_url: str, tmp_path_factory: pytest.TempPathFactory, tiny: Tiny) -> Iterator[Apps]:  # noqa: F811
    """Acme's registry model "Fraud" (ONNX) loaded as "fraud" among Acme's names on both
    servers, and the operator's "shared" (skops, the default model) preloaded."""
    root = tmp_path_factory.mktemp("model-server-equality")
    data_dir = root / "data"
    with TestClient(create_app(equality_settings(module_database_url, data_dir))) as platform:
        factory = Factory(platform.app)  # type: ignore[arg-type]
        team = World.build(factory)
        model_id = register(platform, team)
        version = upload(platform, model_id, team.developer.headers, onnx_file(tiny.first))["version"]
        no_inference_key = factory.api_key(team.org, {"models": ["read"]})
    settings = equality_settings(
        module_database_url,
        data_dir,
        model_server_api_keys=[OPERATOR_KEY],
        model_server_models_dir=_models_dir(root, tiny),
        model_server_preload=["shared=file:shared.skops"],
        model_server_max_body_bytes=MAX_BODY,
    )
    for fast, routed in _pair(settings):
        for client in (fast, routed):
            loaded = client.post(
                "/api/v1/models/load",
                json={"model_id": model_id, "model_name": "fraud"},
                headers=team.admin.headers,
            )
            assert loaded.status_code == 200, loaded.text
        callers = {
            "operator": {"X-API-Key": OPERATOR_KEY},
            "admin": team.admin.headers,
            "key": team.key_headers,
            "viewer": team.viewer.headers,
            "outsider": team.outsider.headers,  # another organisation's admin
            "no-inference-scope": {"X-API-Key": no_inference_key},
            "none": {},
            "bad-key": {"X-API-Key": "mk_not-a-key"},
            "bad-token": {"Authorization": "Bearer not.a.token"},
        }
        yield Apps(fast, routed, callers, version, settings, module_database_url, data_dir)


# --- the requests ---------------------------------------------------------------------------------
ROWS = np.random.default_rng(7).normal(size=(3, len(FEATURES)))
ROW = ROWS[0].tolist()


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: bytes
    status: int  # what the route documents
    caller: str = "key"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    streamed: bool = False  # sent without Content-Length, in chunks

    def send(self, client: TestClient, world: Apps) -> httpx.Response:
        path = self.path.replace("{version}", world.version)
        headers = {**world.callers[self.caller], **self.headers}
        if self.streamed:
            chunks = [self.body[i : i + 1000] for i in range(0, len(self.body), 1000)]
            return client.post(path, content=iter(chunks), headers=headers)
        return client.post(path, content=self.body, headers=headers)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _tensor(rows: np.ndarray, **extra: Any) -> bytes:
    shape = list(rows.shape)
    return _json(
        {
            "inputs": [{"name": "input", "shape": shape, "datatype": "FP64", "data": rows.ravel().tolist()}],
            **extra,
        }
    )


def _binary(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = struct.pack(f"<{rows.size}d", *rows.ravel().tolist())
    header = _json(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


BINARY, BINARY_HEADERS = _binary(ROWS[:2])
ONE = _json({"features": records(ROWS[:1])[0]})
BATCH = _json({"features": records(ROWS), "model_name": "fraud"})
HUGE = b'{"features": [' + b"0.5, " * (MAX_BODY // 5) + b"0.5]}"
CSV = b"amount,time_of_day,day_of_week,merchant_risk\n" + b"0.1,0.2,0.3,0.4\n" * (MAX_BODY // 16 + 1)
TEXT = {"Content-Type": "text/csv"}

CASES = [
    # successes: one row, a batch, each protocol, on the event loop and on the threads
    Case("predict-named-onnx-inline", "/api/v1/predict/fraud", ONE, 200),
    Case("predict-default-operator", "/api/v1/predict", _json({"features": ROW}), 200, "operator"),
    Case(
        "predict-body-names-model",
        "/api/v1/predict",
        _json({"features": records(ROWS[:1])[0], "model_name": "fraud", "return_probabilities": True}),
        200,
        "admin",
    ),
    Case("predict-viewer-token", "/api/v1/predict/fraud", ONE, 200, "viewer"),
    Case("predict-without-content-type", "/api/v1/predict/fraud", ONE, 200, headers={}),
    Case("batch", "/api/v1/batch-predict", BATCH, 200),
    Case(
        "batch-operator-default", "/api/v1/batch-predict", _json({"features": ROWS.tolist()}), 200, "operator"
    ),
    Case("infer", "/v2/models/fraud/infer", _tensor(ROWS, id="req-1"), 200),
    Case("infer-version", "/v2/models/fraud/versions/{version}/infer", _tensor(ROWS[:1]), 200),
    Case("infer-binary", "/v2/models/fraud/infer", BINARY, 200, headers=BINARY_HEADERS),
    Case("invocations", "/invocations", _json({"dataframe_split": {"data": ROWS.tolist()}}), 200, "operator"),
    Case("invocations-platform-caller", "/invocations", _json({"instances": ROWS.tolist()}), 200),
    # unknown model, another organisation's, no right to predict with it: all missing
    Case("predict-unknown-model", "/api/v1/predict/nope", ONE, 404),
    Case(
        "batch-unknown-model", "/api/v1/batch-predict", _json({"features": [ROW], "model_name": "nope"}), 404
    ),
    Case("infer-unknown-model", "/v2/models/nope/infer", _tensor(ROWS), 404),
    Case("infer-unknown-version", "/v2/models/fraud/versions/9.9.9/infer", _tensor(ROWS), 404),
    Case("predict-other-organisation", "/api/v1/predict/fraud", ONE, 404, "outsider"),
    Case("infer-other-organisation", "/v2/models/fraud/infer", _tensor(ROWS), 404, "outsider"),
    Case("predict-key-without-inference-scope", "/api/v1/predict/fraud", ONE, 404, "no-inference-scope"),
    # malformed JSON and wrong shapes, in each protocol's shape
    Case("predict-malformed-json", "/api/v1/predict/fraud", b'{"features": [', 422),
    Case("batch-malformed-json", "/api/v1/batch-predict", b"[1, 2", 422),
    Case("infer-malformed-json", "/v2/models/fraud/infer", b'{"inputs": [', 400),
    Case("invocations-malformed-json", "/invocations", b"{not json", 400),
    Case("predict-wrong-shape", "/api/v1/predict/fraud", _json({"features": ROW[:-1]}), 422),
    Case("predict-unknown-field", "/api/v1/predict/fraud", _json({"rows": [ROW]}), 422),
    Case(
        "batch-wrong-shape",
        "/api/v1/batch-predict",
        _json({"features": [ROW[:-1]], "model_name": "fraud"}),
        422,
    ),
    Case("infer-wrong-shape", "/v2/models/fraud/infer", _tensor(ROWS[:, :-1]), 400),
    Case(
        "infer-bad-binary-header",
        "/v2/models/fraud/infer",
        BINARY,
        400,
        headers={**BINARY_HEADERS, "Inference-Header-Content-Length": "99999"},
    ),
    Case("invocations-wrong-shape", "/invocations", _json({"instances": [ROW[:-1]]}), 400),
    Case("invocations-no-input-field", "/invocations", _json({"rows": [ROW]}), 400),
    # wrong content type, too large, and both: the type is checked first
    Case("predict-wrong-type", "/api/v1/predict/fraud", ONE, 415, headers=TEXT),
    Case(
        "batch-wrong-type",
        "/api/v1/batch-predict",
        BATCH,
        415,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Case("infer-wrong-type", "/v2/models/fraud/infer", _tensor(ROWS), 415, headers=TEXT),
    Case("invocations-wrong-type", "/invocations", CSV[:100], 415, headers=TEXT),
    Case(
        "invocations-wrong-charset",
        "/invocations",
        _json({"instances": [ROW]}),
        415,
        headers={"Content-Type": "application/json; charset=latin-1"},
    ),
    Case("predict-oversized", "/api/v1/predict/fraud", HUGE, 413),
    Case("batch-oversized", "/api/v1/batch-predict", HUGE, 413),
    Case("infer-oversized", "/v2/models/fraud/infer", HUGE, 413),
    Case("invocations-oversized", "/invocations", HUGE, 413),
    Case("predict-oversized-streamed", "/api/v1/predict/fraud", HUGE, 413, streamed=True),
    Case("infer-oversized-binary", "/v2/models/fraud/infer", HUGE, 413, headers=BINARY_HEADERS),
    Case("predict-oversized-wrong-type", "/api/v1/predict/fraud", CSV, 415, headers=TEXT),
    Case("invocations-oversized-wrong-type", "/invocations", CSV, 415, headers=TEXT),
    Case("invocations-oversized-streamed-wrong-type", "/invocations", CSV, 415, headers=TEXT, streamed=True),
    # credentials
    Case("predict-no-credentials", "/api/v1/predict/fraud", ONE, 401, "none"),
    Case("predict-unknown-key", "/api/v1/predict/fraud", ONE, 401, "bad-key"),
    Case("predict-bad-token", "/api/v1/predict/fraud", ONE, 401, "bad-token"),
    Case("batch-no-credentials", "/api/v1/batch-predict", BATCH, 401, "none"),
    Case("infer-no-credentials", "/v2/models/fraud/infer", _tensor(ROWS), 401, "none"),
    Case("invocations-unknown-key", "/invocations", _json({"instances": [ROW]}), 401, "bad-key"),
    Case("predict-no-credentials-wrong-type", "/api/v1/predict/fraud", CSV, 401, "none", headers=TEXT),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_fast_path_answers_like_the_routes(world: Apps, case: Case) -> None:
    fast = case.send(world.fast, world)
    routed = case.send(world.routed, world)
    assert_same_answer(fast, routed)
    assert fast.status_code == case.status, fast.text


def test_the_rate_limit_answers_alike(world: Apps, tmp_path: Path, tiny: Tiny) -> None:
    """The third prediction within a minute is refused, with the same headers both ways."""
    settings = world.settings.model_copy(
        update={
            "rate_limits_enabled": True,
            "model_server_rate_limit_predict": "2/minute",
            "model_server_models_dir": _models_dir(tmp_path, tiny),
        }
    )
    body = _json({"features": ROW})
    for fast, routed in _pair(settings):
        statuses = []
        for path in ("/api/v1/predict", "/v2/models/shared/infer", "/invocations"):
            content = (
                body
                if path == "/api/v1/predict"
                else (_tensor(ROWS) if path.startswith("/v2") else _json({"instances": [ROW]}))
            )
            fast_answer = fast.post(path, content=content, headers={**world.callers["operator"], **JSON})
            routed_answer = routed.post(path, content=content, headers={**world.callers["operator"], **JSON})
            assert_same_answer(fast_answer, routed_answer)
            statuses.append(fast_answer.status_code)
        assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/predict/fraud", JSON),
        ("/api/v1/batch-predict", JSON),
        ("/v2/models/shared/infer", JSON),
        ("/v2/models/shared/infer", BINARY_HEADERS),
        ("/invocations", JSON),
    ],
)
def test_a_stalled_body_is_cut_off_alike(world: Apps, path: str, headers: dict[str, str]) -> None:
    """A client that sends its headers and then nothing: 408, and the connection closed."""
    settings = world.settings.model_copy(
        update={"request_body_timeout_seconds": 0.05, "model_server_preload": []}
    )
    headers = {**world.callers["operator"], **headers}
    fast = stalled_post(create_model_server(settings), path, headers)
    routed = stalled_post(create_model_server(switched_off(settings)), path, headers)
    assert fast[0] == routed[0] == 408
    assert fast[1]["connection"] == routed[1]["connection"] == "close"
    assert (
        orjson.loads(fast[2])["error"]["code"]
        == orjson.loads(routed[2])["error"]["code"]
        == "REQUEST_TIMEOUT"
    )
