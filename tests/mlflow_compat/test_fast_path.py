"""The fast path for MLflow's hottest routes (``mlflow_compat.fast_path``): each request is
sent twice, once answered by the fast layer and once by the FastAPI route it stands in
for (the layer switched off), and both answers must be the same bytes: successes,
MLflow-shaped errors, authentication failures, other tenants' ids, malformed bodies and
refused writes, with the same audit rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from maestro.identity.models import AuditLog
from maestro.mlflow_compat import fast_path
from maestro.mlflow_compat.fast_path import match
from tests.factories import Factory
from tests.mlflow_compat.conftest import API, World, error_of, mlflow_call, ok

PER_REQUEST_HEADERS = {"x-request-id", "x-process-time", "x-ratelimit-remaining", "x-ratelimit-reset"}


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many requests the fast layer answered itself."""
    counts = {"fast": 0}
    shape = fast_path.in_mlflow_shape

    async def counting(handler: Any, request: Any) -> Any:
        counts["fast"] += 1
        return await shape(handler, request)

    monkeypatch.setattr(fast_path, "in_mlflow_shape", counting)
    return counts


@pytest.fixture
def both(
    client: TestClient, answered: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[], Response]], Response]:
    """Sends a request through the fast layer, then with it off (every request goes on
    to FastAPI), and checks the two answers are identical; returns the first."""

    def send(request: Callable[[], Response]) -> Response:
        before = answered["fast"]
        fast = request()
        assert answered["fast"] == before + 1, "the fast layer did not answer"
        with monkeypatch.context() as off:
            off.setattr(fast_path, "FAST_ROUTES", frozenset())
            slow = request()
        assert answered["fast"] == before + 1, "the fast layer answered with the layer off"
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
        assert _headers(fast) == _headers(slow)
        return fast

    return send


def _headers(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in PER_REQUEST_HEADERS}


def _experiment(client: TestClient, world: World, name: str, token: str | None = None, **kw: Any) -> str:
    body = {"name": name}
    return ok(mlflow_call(client, "POST", "experiments/create", world.headers(token, **kw), body))[
        "experiment_id"
    ]


def _run(client: TestClient, world: World, experiment_id: str, token: str | None = None, **kw: Any) -> str:
    body = {"experiment_id": experiment_id, "start_time": 1_700_000_000_000, "run_name": "r1"}
    response = mlflow_call(client, "POST", "runs/create", world.headers(token, **kw), body)
    return ok(response)["run"]["info"]["run_id"]


def _metric(run_id: str, step: int = 0) -> dict[str, Any]:
    return {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1_800_000_000_000, "step": step}


@pytest.fixture
def run_id(client: TestClient, world: World) -> str:
    return _run(client, world, _experiment(client, world, "fast"))


class TestMatching:
    @pytest.mark.parametrize(
        ("method", "path", "expected"),
        [
            ("POST", f"{API}/runs/log-metric", (f"{API}/runs/log-metric", {})),
            ("POST", f"{API}/runs/log-batch", (f"{API}/runs/log-batch", {})),
            ("POST", f"{API}/runs/search", (f"{API}/runs/search", {})),
            ("GET", f"{API}/runs/get", (f"{API}/runs/get", {})),
            (
                "POST",
                f"/mlflow/proj_1{API}/runs/log-metric",
                (f"/mlflow/{{project_id}}{API}/runs/log-metric", {"project_id": "proj_1"}),
            ),
            ("GET", f"{API}/runs/log-metric", None),
            ("POST", f"{API}/runs/get", None),
            ("POST", f"{API}/runs/log-metric/", None),
            ("POST", f"{API}/runs/create", None),
            ("POST", f"/mlflow/{API}/runs/log-metric", None),
            ("POST", f"/mlflow//{API}/runs/log-metric", None),
            ("POST", f"/mlflow/a/b{API}/runs/log-metric", None),
            ("POST", "/mlflow/proj_1", None),
        ],
    )
    def test_only_the_fast_routes(self, method: str, path: str, expected: Any) -> None:
        assert match(method, path) == expected

    def test_other_routes_go_on_to_the_app(
        self, client: TestClient, world: World, answered: dict[str, int]
    ) -> None:
        _experiment(client, world, "elsewhere")
        response = mlflow_call(client, "GET", "runs/log-metric", world.headers())
        error_of(response, 404, "ENDPOINT_NOT_FOUND")
        assert answered["fast"] == 0


class TestSameAnswers:
    def test_logging_getting_and_searching(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response]
    ) -> None:
        headers = world.headers()
        assert (
            ok(both(lambda: client.post(f"{API}/runs/log-metric", json=_metric(run_id), headers=headers)))
            == {}
        )
        batch = {"run_id": run_id, "metrics": [{**_metric(run_id, step), "key": "acc"} for step in range(50)]}
        assert ok(both(lambda: client.post(f"{API}/runs/log-batch", json=batch, headers=headers))) == {}
        got = ok(both(lambda: client.get(f"{API}/runs/get", params={"run_id": run_id}, headers=headers)))
        assert {metric["key"] for metric in got["run"]["data"]["metrics"]} == {"loss", "acc"}
        search = {"experiment_ids": [got["run"]["info"]["experiment_id"]], "filter": "metrics.acc > 0.1"}
        found = ok(both(lambda: client.post(f"{API}/runs/search", json=search, headers=headers)))
        assert [run["info"]["run_id"] for run in found["runs"]] == [run_id]

    def test_the_project_in_the_path(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response]
    ) -> None:
        path = f"/mlflow/{world.project}{API}/runs"
        bearer = world.bearer()
        ok(both(lambda: client.post(f"{path}/log-metric", json=_metric(run_id), headers=bearer)))
        ok(both(lambda: client.get(f"{path}/get", params={"run_id": run_id}, headers=bearer)))
        error_of(
            both(
                lambda: client.post(
                    "/mlflow/proj_nothing" + API + "/runs/log-metric", json=_metric(run_id), headers=bearer
                )
            ),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )

    def test_one_audit_row_per_change_named_after_the_route(
        self, client: TestClient, world: World, run_id: str, factory: Factory, both: Callable[..., Response]
    ) -> None:
        ok(both(lambda: client.post(f"{API}/runs/log-metric", json=_metric(run_id), headers=world.headers())))
        with factory.database.session(write=False) as session:
            rows = session.scalars(select(AuditLog).where(AuditLog.action == "mlflow:log_metric")).all()
        assert len(rows) == 2
        assert {(row.resource_id, row.outcome, row.path, row.status_code) for row in rows} == {
            (run_id, "success", f"{API}/runs/log-metric", 200)
        }


class TestRefusals:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer not-a-jwt"},
            {"Authorization": "Bearer mk_not_a_real_key_at_all"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"X-API-Key": "mk_forged"},
        ],
        ids=["no credentials", "forged token", "forged key", "another scheme", "forged key header"],
    )
    def test_without_valid_credentials(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response], headers: dict
    ) -> None:
        headers = {**headers, "X-Maestro-Project": world.project}
        for request in (
            lambda: client.post(f"{API}/runs/log-metric", json=_metric(run_id), headers=headers),
            lambda: client.post(
                f"{API}/runs/log-batch", json={"run_id": run_id, "metrics": []}, headers=headers
            ),
            lambda: client.get(f"{API}/runs/get", params={"run_id": run_id}, headers=headers),
            lambda: client.post(f"{API}/runs/search", json={"experiment_ids": ["0"]}, headers=headers),
        ):
            error_of(both(request), 401, "UNAUTHENTICATED")

    def test_credentials_in_the_query_string(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response]
    ) -> None:
        response = both(
            lambda: client.get(
                f"{API}/runs/get", params={"run_id": run_id, "api_key": world.key}, headers=world.headers()
            )
        )
        error_of(response, 401, "UNAUTHENTICATED")

    def test_another_tenants_run_is_missing(
        self, client: TestClient, world: World, both: Callable[..., Response]
    ) -> None:
        theirs = _run(
            client,
            world,
            _experiment(client, world, "theirs", world.other_key, project=world.other_project),
            world.other_key,
            project=world.other_project,
        )
        headers = world.headers()
        batch = {"run_id": theirs, "metrics": [_metric(theirs)]}
        for request in (
            lambda: client.post(f"{API}/runs/log-metric", json=_metric(theirs), headers=headers),
            lambda: client.post(f"{API}/runs/log-batch", json=batch, headers=headers),
            lambda: client.get(f"{API}/runs/get", params={"run_id": theirs}, headers=headers),
            lambda: client.get(
                f"/mlflow/{world.other_project}{API}/runs/get",
                params={"run_id": theirs},
                headers=world.bearer(),
            ),
        ):
            error_of(both(request), 404, "RESOURCE_DOES_NOT_EXIST")

    @pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"run_id": ', b"\xff\xfe", b'"a string"'])
    def test_malformed_bodies(
        self, client: TestClient, world: World, both: Callable[..., Response], raw: bytes
    ) -> None:
        headers = {**world.headers(), "Content-Type": "application/json"}
        for route in ("log-metric", "log-batch", "search"):
            response = both(
                lambda route=route: client.post(f"{API}/runs/{route}", content=raw, headers=headers)
            )
            error_of(response, 400, "INVALID_PARAMETER_VALUE")

    def test_invalid_values(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response]
    ) -> None:
        headers = world.headers()
        for body in (
            {**_metric(run_id), "value": "high"},
            {**_metric(run_id), "key": "a/../b"},
            {"key": "x"},
        ):
            response = both(
                lambda body=body: client.post(f"{API}/runs/log-metric", json=body, headers=headers)
            )
            error_of(response, 400, "INVALID_PARAMETER_VALUE")

    def test_a_body_over_the_limit(
        self, client: TestClient, world: World, run_id: str, both: Callable[..., Response]
    ) -> None:
        huge = b'{"run_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
        headers = {**world.headers(), "Content-Type": "application/json"}
        response = both(lambda: client.post(f"{API}/runs/log-metric", content=huge, headers=headers))
        error_of(response, 413, "INVALID_PARAMETER_VALUE")

    def test_a_viewer_cannot_log(
        self, client: TestClient, world: World, run_id: str, factory: Factory, both: Callable[..., Response]
    ) -> None:
        headers = world.headers(world.viewer.access_token)
        batch = {"run_id": run_id, "metrics": [_metric(run_id)]}
        error_of(
            both(lambda: client.post(f"{API}/runs/log-metric", json=_metric(run_id), headers=headers)),
            403,
            "PERMISSION_DENIED",
        )
        error_of(
            both(lambda: client.post(f"{API}/runs/log-batch", json=batch, headers=headers)),
            403,
            "PERMISSION_DENIED",
        )
        ok(both(lambda: client.get(f"{API}/runs/get", params={"run_id": run_id}, headers=headers)))
        with factory.database.session(write=False) as session:
            denied = session.scalars(select(AuditLog).where(AuditLog.outcome == "denied")).all()
        assert sorted(row.action for row in denied) == ["mlflow:log_batch"] * 2 + ["mlflow:log_metric"] * 2
        points = ok(mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": run_id}))["run"][
            "data"
        ]["metrics"]
        assert points == []


class TestFailures:
    def test_an_unexpected_error_is_an_mlflow_shaped_500(
        self,
        client: TestClient,
        world: World,
        run_id: str,
        answered: dict[str, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        from maestro.mlflow_compat import routes

        def broken(*_args: Any) -> Any:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(routes, "transact", broken)
        response = client.post(f"{API}/runs/log-metric", json=_metric(run_id), headers=world.headers())
        message = error_of(response, 500, "INTERNAL_ERROR")
        assert answered["fast"] == 1
        assert response.headers["x-request-id"] in message and "database" not in message
