"""The short memory of checked credentials: a repeated credential costs no lookup, every
change to what a principal is built from applies at once in the process that made it,
and another process sees it within the TTL."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from maestro.app import create_app
from maestro.db import utcnow
from maestro.identity.models import ApiKey
from tests.conftest import wait_until
from tests.factories import Factory


def statements_during(app: FastAPI, call: Any) -> list[str]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(app.state.database.engine, "before_cursor_execute", note)
    try:
        call()
    finally:
        event.remove(app.state.database.engine, "before_cursor_execute", note)
    return seen


def test_a_repeated_credential_is_not_looked_up_again(app: FastAPI, factory: Factory) -> None:
    org = factory.organization()
    key = factory.api_key(org, {"organizations": ["read"]})
    client = TestClient(app)  # no lifespan, so no background statements
    headers = {"X-API-Key": key}
    assert client.get(f"/api/v1/organizations/{org}", headers=headers).status_code == 200
    again = statements_during(app, lambda: client.get(f"/api/v1/organizations/{org}", headers=headers))
    assert not any("api_keys" in statement for statement in again)


def test_a_role_change_applies_at_once(client: TestClient, factory: Factory) -> None:
    org = factory.organization()
    admin = factory.user(org, "admin")
    member = factory.user(org, "developer")
    project = factory.project(org, admin, "organization")
    body = {"name": "Churn", "model_type": "classification"}
    assert (
        client.post(f"/api/v1/projects/{project}/models", json=body, headers=member.headers).status_code
        == 201
    )
    demoted = client.put(
        f"/api/v1/organizations/{org}/users/{member.user_id}/role",
        json={"role": "viewer"},
        headers=admin.headers,
    )
    assert demoted.status_code == 200, demoted.text
    body["name"] = "Churn 2"
    assert (
        client.post(f"/api/v1/projects/{project}/models", json=body, headers=member.headers).status_code
        == 403
    )


def test_a_change_made_directly_in_the_database_applies_at_once(client: TestClient, factory: Factory) -> None:
    org = factory.organization()
    key = factory.api_key(org, {"organizations": ["read"]})
    assert client.get(f"/api/v1/organizations/{org}", headers={"X-API-Key": key}).status_code == 200
    with factory.database.session() as session:
        session.execute(update(ApiKey).where(ApiKey.organization_id == org).values(expires_at=utcnow()))
    assert client.get(f"/api/v1/organizations/{org}", headers={"X-API-Key": key}).status_code == 401


def test_another_process_sees_a_revocation_within_the_ttl(make_settings: Any) -> None:
    here = create_app(make_settings(auth_cache_seconds=0.2))
    elsewhere = create_app(make_settings(auth_cache_seconds=0.2))
    factory = Factory(here)
    org = factory.organization()
    admin = factory.user(org, "admin")
    viewer = factory.user(org, "viewer")
    with TestClient(here) as first, TestClient(elsewhere) as second:
        path = f"/api/v1/organizations/{org}"
        assert second.get(path, headers=viewer.headers).status_code == 200
        removed = first.delete(f"/api/v1/organizations/{org}/users/{viewer.user_id}", headers=admin.headers)
        assert removed.status_code == 204
        assert first.get(path, headers=viewer.headers).status_code == 404
        wait_until(lambda: second.get(path, headers=viewer.headers).status_code == 404, timeout=5)


def test_a_ttl_of_zero_checks_every_request(make_settings: Any) -> None:
    app = create_app(make_settings(auth_cache_seconds=0))
    factory = Factory(app)
    org = factory.organization()
    viewer = factory.user(org, "viewer")
    client = TestClient(app)
    path = f"/api/v1/organizations/{org}"
    assert client.get(path, headers=viewer.headers).status_code == 200
    again = statements_during(app, lambda: client.get(path, headers=viewer.headers))
    assert any("auth_sessions" in statement for statement in again)
    assert len(app.state.credential_cache) == 0
