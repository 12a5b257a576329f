"""``POST /api/v1/inference/{name}[/batch]`` answered at the app's front door
(``deployments.fast_path`` in ``api.front_door``) exactly as the FastAPI routes behind
the middleware answer it: the same statuses and bodies for answers, missing or
insufficient credentials, another organisation's caller, wrong content types, malformed
and oversized bodies; the same metrics and access lines; a 500 in the error shape for
an unexpected error; and CORS requests left to the middleware."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.deployments import inference
from maestro.deployments.fast_path import BATCH, SINGLE, match
from tests.deployments.platform import (
    Tiny,
    deployed,
    inference_at_the_front_door,
    onnx_file,
    records,
    register,
    upload,
)
from tests.factories import Factory, World

VOLATILE = frozenset({"request_id", "prediction_id", "latency_ms", "timestamp"})


def without_fast_path(settings: Settings) -> FastAPI:
    app = create_app(settings.model_copy(update={"fast_paths": False}))
    assert not inference_at_the_front_door(app)
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
    assert inference_at_the_front_door(client.app)
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


def _deployed_fraud_api(client: TestClient, world: World, tiny: Tiny) -> bytes:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    deployed(client, world, "fraud-api", version["id"])
    return orjson.dumps({"instances": records(tiny.X[:2])})


def _inference_counts(client: TestClient) -> list[str]:
    """The request counter's lines for the inference routes."""
    lines = client.get("/metrics").text.splitlines()
    return sorted(
        line
        for line in lines
        if line.startswith("maestro_http_requests_total") and "/api/v1/inference/" in line
    )


def test_the_front_door_counts_and_logs_requests_like_the_middleware(
    make_settings: Callable[..., Settings], world: World, tiny: Tiny, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(access_log=True)
    with (
        TestClient(create_app(settings)) as client,
        TestClient(without_fast_path(settings), raise_server_exceptions=False) as routed,
    ):
        rows = _deployed_fraud_api(client, world, tiny)
        json_type = {"Content-Type": "application/json"}
        cases = [
            ("fraud-api", rows, {**world.key_headers, **json_type}),
            ("fraud-api/batch", rows, {**world.key_headers, **json_type}),
            ("fraud-api", rows, json_type),
            ("missing", rows, {**world.key_headers, **json_type}),
            ("fraud-api", b"{", {**world.key_headers, **json_type}),
            ("fraud-api", rows, {**world.key_headers, "Content-Type": "text/csv"}),
        ]
        _compare_counts_and_lines(client, routed, cases, caplog)


def _compare_counts_and_lines(
    client: TestClient,
    routed: TestClient,
    cases: list[tuple[str, bytes, dict[str, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines: dict[str, list[tuple[str, str, int]]] = {}
    for name, app_client in (("fast", client), ("routed", routed)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="maestro.access"):
            for path, body, headers in cases:
                app_client.post(
                    f"/api/v1/inference/{path}", content=body, headers={**headers, "X-Request-ID": path}
                )
        lines[name] = [
            (record.args[0], record.args[1], record.args[2])  # type: ignore[index]
            for record in caplog.records
            if record.name == "maestro.access"
        ]
    assert lines["fast"] == lines["routed"]
    assert [status for *_, status in lines["fast"]] == [200, 200, 401, 404, 422, 415]
    assert _inference_counts(client) == _inference_counts(routed)
    assert any('status="415"' in line for line in _inference_counts(client))


def test_an_unexpected_error_is_a_500_in_the_error_shape_both_ways(
    client: TestClient,
    routed: TestClient,
    world: World,
    tiny: Tiny,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = _deployed_fraud_api(client, world, tiny)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(inference, "predict", broken)  # a defect anywhere below the route
    answers = []
    for app_client in (client, routed):
        with caplog.at_level(logging.ERROR, logger="maestro.errors"):
            answer = app_client.post(
                "/api/v1/inference/fraud-api",
                content=rows,
                headers={**world.key_headers, "Content-Type": "application/json"},
            )
        request_id = answer.headers["x-request-id"]
        assert answer.status_code == 500
        assert "secret" not in answer.text
        assert request_id in answer.json()["error"]["message"]
        logged = next(r for r in caplog.records if getattr(r, "request_id", None) == request_id)
        assert logged.exc_info is not None
        answers.append(stable(answer.json()) | {"error": answer.json()["error"]["code"]})
    assert answers[0] == answers[1]


def test_requests_with_an_origin_go_through_the_cors_middleware(
    make_settings: Callable[..., Settings], world: World, tiny: Tiny
) -> None:
    settings = make_settings(cors_origins=["https://app.example"])
    with TestClient(create_app(settings)) as client:
        rows = _deployed_fraud_api(client, world, tiny)
        headers = {**world.key_headers, "Content-Type": "application/json"}
        browser = client.post(
            "/api/v1/inference/fraud-api", content=rows, headers={**headers, "Origin": "https://app.example"}
        )
        assert browser.status_code == 200, browser.text
        assert browser.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in browser.headers["access-control-expose-headers"].lower()
        script = client.post("/api/v1/inference/fraud-api", content=rows, headers=headers)
        assert script.status_code == 200
        assert "access-control-allow-origin" not in script.headers


def test_a_nul_in_the_query_string_is_refused_before_anything_runs(
    client: TestClient, routed: TestClient, world: World, tiny: Tiny
) -> None:
    rows = _deployed_fraud_api(client, world, tiny)
    headers = {**world.key_headers, "Content-Type": "application/json"}
    fast = client.post("/api/v1/inference/fraud-api?x=%00", content=rows, headers=headers)
    slow = routed.post("/api/v1/inference/fraud-api?x=%00", content=rows, headers=headers)
    assert fast.status_code == slow.status_code == 422
    assert stable(fast.json()) == stable(slow.json())
