"""The MLflow API under database pressure answers MLflow's 503, never a 500: a write
that cannot get the lock, and a statement stopped at the request budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from tests.api.test_write_lock import write_lock_held
from tests.factories import Factory
from tests.mlflow_compat.conftest import World, error_of, mlflow_call, ok


@pytest.fixture
def locked(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, World, Settings]]:
    settings = make_settings(sqlite_busy_timeout_ms=50, statement_timeout_ms=2000)
    app = create_app(settings)
    factory = Factory(app)
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    grants = {"experiments": ["read", "write", "delete"], "models": ["read", "write", "delete"]}
    world = World(
        org=org,
        admin=admin,
        developer=admin,
        viewer=admin,
        project=factory.project(org, admin, "organization", name="Fraud"),
        key=factory.api_key(org, grants),
        other_org=org,
        outsider=admin,
        other_project="",
        other_key="",
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, world, settings


def test_a_write_that_cannot_get_the_lock_answers_temporarily_unavailable(
    locked: tuple[TestClient, World, Settings],
) -> None:
    client, world, settings = locked
    with write_lock_held(settings):
        refused = mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "churn"})
        message = error_of(refused, 503, "TEMPORARILY_UNAVAILABLE")
        # SQLite gives up waiting for its lock; PostgreSQL's statement waits out its budget.
        assert ("busy" in message) if settings.uses_embedded_database else ("longer" in message)
        assert int(refused.headers["retry-after"]) >= 1
    created = ok(mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "churn"}))
    found = ok(
        mlflow_call(
            client, "GET", "experiments/get", world.headers(), {"experiment_id": created["experiment_id"]}
        )
    )
    assert found["experiment"]["name"] == "churn"
