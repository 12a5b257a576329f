"""A request whose rows mix objects of named features and lists of values (a first-time
user's mistake) is refused naming the odd row, on the platform's inference routes (the
plain ASGI fast path and the FastAPI routes alike) and on every model-server route that
takes rows, each in its protocol's shape; the next request is served as usual."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.deployments.platform import Tiny, deployed, onnx_file, records, register, upload
from tests.deployments.test_platform_fast_path import without_fast_path
from tests.factories import World
from tests.model_server.test_model_server_hostile import OPERATOR, server_settings, started
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import FEATURES, onnx_bytes, skops_bytes


@pytest.fixture
def routed(settings: Settings) -> Iterator[TestClient]:
    """The same platform (same database) with the inference fast path taken out."""
    with TestClient(without_fast_path(settings), raise_server_exceptions=False) as client:
        yield client


def test_platform_inference_refuses_mixed_rows_on_both_paths(
    client: TestClient, routed: TestClient, world: World, tiny: Tiny
) -> None:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    deployed(client, world, "fraud-api", version["id"])
    good = records(tiny.X[:2])
    mixed = [good[0], list(good[1].values())]
    for http in (client, routed):
        for path in ("/api/v1/inference/fraud-api", "/api/v1/inference/fraud-api/batch"):
            refused = http.post(path, json={"instances": mixed}, headers=world.key_headers)
            assert refused.status_code == 422, refused.text
            body = refused.json()
            assert body["success"] is False
            assert body["error"]["code"] == "VALIDATION_ERROR"
            assert body["error"]["details"][0]["field"] == "instances.1"
            assert "Row 1" in body["error"]["message"]
            served = http.post(path, json={"instances": good}, headers=world.key_headers)
            assert served.status_code == 200, served.text
            assert len(served.json()["predictions"]) == 2


@pytest.fixture(params=["logreg", "forest"])
def model_server(
    request: pytest.FixtureRequest, tmp_path: Path, logreg: Any, forest: Any
) -> Iterator[TestClient]:
    """The model server with an ONNX model (answered on the event loop when small) and
    a skops one (answered on a prediction thread), either of them the default."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "logreg.onnx").write_bytes(onnx_bytes(logreg))
    (models / "forest.skops").write_bytes(skops_bytes(forest))
    settings = server_settings(
        tmp_path,
        model_server_preload=["logreg=file:logreg.onnx", "forest=file:forest.skops"],
        model_server_default_model=request.param,
    )
    yield from started(settings)


def _post(client: TestClient, path: str, document: Any) -> Any:
    return client.post(
        path, content=orjson.dumps(document), headers={**OPERATOR, "Content-Type": "application/json"}
    )


def test_the_model_server_refuses_mixed_rows_in_every_protocol(model_server: TestClient, data: Data) -> None:
    model = model_server.app.state.model_server.settings.model_server_default_model  # type: ignore[attr-defined]
    row = data.fresh[0].tolist()
    named = {f"f{i}": value for i, value in enumerate(row)}
    mixed = [named, row]

    batch = _post(model_server, "/api/v1/batch-predict", {"features": mixed, "model_name": model})
    assert batch.status_code == 422, batch.text
    assert batch.json()["error"]["code"] == "VALIDATION_ERROR"
    assert batch.json()["error"]["details"][0]["field"] == "features.1"

    for key in ("instances", "inputs", "dataframe_records"):
        invoked = _post(model_server, "/invocations", {key: mixed})
        assert invoked.status_code == 400, invoked.text
        assert invoked.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
        assert "Row 1" in invoked.json()["message"] or key == "dataframe_records"

    split = _post(
        model_server,
        "/invocations",
        {"dataframe_split": {"columns": list(named), "data": [row, named]}},
    )
    assert split.status_code == 400, split.text

    v2 = _post(
        model_server,
        f"/v2/models/{model}/infer",
        {"inputs": [{"name": "x", "shape": [2, FEATURES], "datatype": "FP64", "data": mixed}]},
    )
    assert v2.status_code == 400, v2.text
    assert set(v2.json()) == {"error"}

    # The server keeps serving, on the same routes.
    served = _post(model_server, "/api/v1/batch-predict", {"features": [row, row], "model_name": model})
    assert served.status_code == 200, served.text
    assert served.json()["count"] == 2
