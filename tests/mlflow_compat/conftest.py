"""An organisation with an admin, a developer and a viewer, a project, an API key with
the experiments and models permissions, and another organisation with its own run; and,
for the client tests, the real `mlflow` client pointed at a real `maestro serve`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.factories import Actor, Factory

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
ALL_ACTIONS = ["read", "write", "delete"]


@dataclass
class World:
    org: str
    admin: Actor
    developer: Actor
    viewer: Actor
    project: str  # visibility "organization"
    key: str  # an API key with experiments and models permissions
    other_org: str
    outsider: Actor  # admin of the other organisation
    other_project: str
    other_key: str

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.key}"}

    def headers(self, token: str | None = None, project: str | None = None) -> dict[str, str]:
        return {**self.bearer(token), "X-Maestro-Project": project or self.project}


@pytest.fixture
def world(factory: Factory) -> World:
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    other_org = factory.organization("Globex")
    outsider = factory.user(other_org, "admin")
    grants = {"experiments": ALL_ACTIONS, "models": ALL_ACTIONS}
    return World(
        org=org,
        admin=admin,
        developer=factory.user(org, "developer"),
        viewer=factory.user(org, "viewer"),
        project=factory.project(org, admin, "organization", name="Fraud"),
        key=factory.api_key(org, grants),
        other_org=other_org,
        outsider=outsider,
        other_project=factory.project(other_org, outsider, "organization", name="Globex"),
        other_key=factory.api_key(other_org, grants),
    )


def mlflow_call(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: Any = None, **kwargs: Any
) -> Response:
    if method == "GET":
        return client.get(f"{API}/{path}", params=body, headers=headers, **kwargs)
    return client.request(method, f"{API}/{path}", json=body, headers=headers, **kwargs)


def ok(response: Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json() if response.content else None


def error_of(response: Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code, body
    return body["message"]


# --- the real client against a real server -------------------------------------------------
@pytest.fixture
def sqlite_only(settings: Settings) -> None:
    if not settings.uses_embedded_database:
        pytest.skip("the MLflow client runs against SQLite; one smoke test covers PostgreSQL")


@pytest.fixture
def maestro(serve: Callable[..., RunningProcess], make_settings: Callable[..., Settings]) -> RunningProcess:
    """`maestro serve` on this test's database, with the audit of every request and
    without rate limits."""
    return serve(make_settings())


@pytest.fixture
def mlflow_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Any]]:
    """Points the `mlflow` module at a tracking URI with a token, through the
    environment as a user would, and forgets the client's cached state afterwards."""
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service, fluent

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

    def reset() -> None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        fluent._active_experiment_id = None
        _tracking_service.utils._tracking_uri = None
        _model_registry.utils._registry_uri = None

    def point(uri: str, token: str) -> Any:
        reset()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        return mlflow

    yield point
    reset()
