"""``POST /api/v1/inference/{name}[/batch]`` answered by the plain ASGI layer
(``serving.platform_fast_path``) exactly as the FastAPI routes answer it: the same
statuses and bodies for answers, missing or insufficient credentials, another
organisation's caller, wrong content types, malformed and oversized bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.deployments.fast_path import BATCH, SINGLE, InferenceFastPath, match
from tests.deployments.platform import Tiny, deployed, onnx_file, records, register, upload
from tests.factories import Factory, World

VOLATILE = frozenset({"request_id", "prediction_id", "latency_ms", "timestamp"})


def without_fast_path(settings: Settings) -> FastAPI:
    app = create_app(settings.model_copy(update={"fast_paths": False}))
    assert not any(m.cls is InferenceFastPath for m in app.user_middleware)
    return app


@pytest.fixture
def routed(settings: Settings) -> Iterator[TestClient]:
    """The same platform (same database) with the inference fast path taken out."""
    with TestClient(without_fast_path(settings), raise_server_exceptions=False) as client:
        yield client


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def test_paths_it_takes() -> None:
    assert match("/api/v1/inference/fraud-api") == (SINGLE, "fraud-api")
    assert match("/api/v1/inference/fraud-api/batch") == (BATCH, "fraud-api")
    assert match("/api/v1/inference/batch") == (SINGLE, "batch")
    for path in (
        "/api/v1/inference/Fraud",
        "/api/v1/inference/-x",
        "/api/v1/inference/a/b",
        "/api/v1/inference/fraud-api/batch-jobs",
        "/api/v1/inference/fraud-api/",
        "/api/v1/inference/" + "a" * 64,
        "/api/v1/inference/",
    ):
        assert match(path) is None, path


def test_the_fast_path_answers_like_the_routes(
    client: TestClient, routed: TestClient, factory: Factory, world: World, tiny: Tiny
) -> None:
    assert any(m.cls is InferenceFastPath for m in client.app.user_middleware)  # type: ignore[attr-defined]
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    deployed(client, world, "fraud-api", version["id"])
    no_scope_key = factory.api_key(world.org, {"models": ["read"]})
    json_type = {"Content-Type": "application/json"}
    rows = orjson.dumps({"instances": records(tiny.X[:5])})
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/fraud-api", rows, {**world.key_headers, **json_type}),
        ("/fraud-api/batch", rows, {**world.key_headers, **json_type}),
        ("/fraud-api", rows, {**world.viewer.headers, **json_type}),
        ("/fraud-api", rows, json_type),  # no credentials
        ("/fraud-api", rows, {"X-API-Key": "mk_not-a-key", **json_type}),
        ("/fraud-api", rows, {"X-API-Key": no_scope_key, **json_type}),
        ("/fraud-api", rows, {**world.outsider.headers, **json_type}),  # another organisation
        ("/missing", rows, {**world.key_headers, **json_type}),
        ("/fraud-api", rows, {**world.key_headers, "Content-Type": "text/csv"}),
        ("/fraud-api", b'{"instances": [', {**world.key_headers, **json_type}),
        ("/fraud-api", b'{"rows": []}', {**world.key_headers, **json_type}),
        ("/fraud-api", orjson.dumps({"instances": [{"amount": 1}]}), {**world.key_headers, **json_type}),
        (
            "/fraud-api",
            orjson.dumps({"instances": records(tiny.X[:101])}),  # over MAESTRO_INFERENCE_MAX_ROWS
            {**world.key_headers, **json_type},
        ),
        ("/Not_A_Name", rows, {**world.key_headers, **json_type}),
    ]
    for path, body, headers in cases:
        fast = client.post(f"/api/v1/inference{path}", content=body, headers=headers)
        slow = routed.post(f"/api/v1/inference{path}", content=body, headers=headers)
        assert fast.status_code == slow.status_code, (path, headers, fast.text, slow.text)
        assert stable(fast.json()) == stable(slow.json()), (path, headers)
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.headers["x-request-id"]
    statuses = [client.post(f"/api/v1/inference{p}", content=b, headers=h).status_code for p, b, h in cases]
    assert statuses == [200, 200, 200, 401, 401, 403, 404, 404, 415, 422, 422, 422, 413, 422]


def test_metrics_name_the_route_template(client: TestClient, world: World, tiny: Tiny) -> None:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    deployed(client, world, "fraud-api", version["id"])
    answer = client.post(
        "/api/v1/inference/fraud-api/batch",
        json={"instances": records(tiny.X[:3])},
        headers=world.key_headers,
    )
    assert answer.status_code == 200, answer.text
    metrics = client.get("/metrics").text
    assert 'route="/api/v1/inference/{deployment_name}/batch"' in metrics
