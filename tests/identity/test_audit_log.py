"""The audit log: one row per state-changing request, written with the request's
own id, one per denied authorisation, readable and filterable by the organisation's
admins only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.db import utcnow
from maestro.identity.api_keys import router as api_keys_router
from maestro.identity.audit_log import router as audit_log_router
from maestro.identity.models import AuditLog
from tests.factories import Factory, Org

LOGS = "/api/v1/organizations/{org_id}/audit-logs"
KEYS = "/api/v1/organizations/{org_id}/api-keys"


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    """The real app, with the audit log and API key routes when it does not mount them yet."""
    paths = app.openapi()["paths"]
    if "/api/v1/organizations/{org_id}/audit-logs" not in paths:
        app.include_router(audit_log_router)
    if "/api/v1/organizations/{org_id}/api-keys" not in paths:
        app.include_router(api_keys_router)
    app.openapi_schema = None
    return app


@pytest.fixture
def org(factory: Factory) -> Org:
    return Org.new(factory)


@pytest.fixture
def other_org(factory: Factory) -> Org:
    return Org.new(factory)


def logs(client: TestClient, org: Org, **params: Any) -> list[dict[str, Any]]:
    response = client.get(LOGS.format(org_id=org.id), params=params, headers=org.admin.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def create_key(client: TestClient, org: Org, name: str = "CI key") -> Any:
    return client.post(
        KEYS.format(org_id=org.id),
        json={"name": name, "permissions": {"models": ["read"]}},
        headers=org.admin.headers,
    )


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


class TestListAuditLogs:
    def test_a_mutation_writes_exactly_one_success_row_with_its_request_id(
        self, client: TestClient, org: Org
    ) -> None:
        response = create_key(client, org)
        assert response.status_code == 201
        key = response.json()["data"]
        request_id = response.headers["x-request-id"]
        rows = [row for row in logs(client, org) if row["request_id"] == request_id]
        assert len(rows) == 1
        (row,) = rows
        assert set(row) == {
            "id",
            "created_at",
            "actor_type",
            "actor_id",
            "action",
            "resource_type",
            "resource_id",
            "outcome",
            "status_code",
            "method",
            "path",
            "ip",
            "request_id",
            "details",
        }
        assert row["outcome"] == "success"
        assert row["action"] == "api_keys:create_api_key"
        assert row["resource_type"] == "api_keys"
        assert row["resource_id"] == key["id"]
        assert row["actor_type"] == "user"
        assert row["actor_id"] == org.admin.user_id
        assert row["status_code"] == 201
        assert row["method"] == "POST"
        assert row["path"] == KEYS.format(org_id=org.id)
        assert row["ip"]
        assert row["created_at"].endswith("Z")
        assert row["details"]["name"] == "CI key"
        assert row["details"]["permissions"] == {"models": ["read"]}
        # The secret never reaches the log.
        assert key["key"] not in str(row)

    def test_a_client_request_id_is_recorded(self, client: TestClient, org: Org) -> None:
        response = client.post(
            KEYS.format(org_id=org.id),
            json={"name": "traced", "permissions": {}},
            headers={**org.admin.headers, "X-Request-ID": "trace-42"},
        )
        assert response.headers["x-request-id"] == "trace-42"
        (row,) = logs(client, org, action="api_keys:create_api_key")
        assert row["request_id"] == "trace-42"

    def test_every_key_mutation_is_logged_without_the_key(self, client: TestClient, org: Org) -> None:
        created = create_key(client, org).json()["data"]
        key_url = f"/api/v1/api-keys/{created['id']}"
        assert client.put(key_url, json={"name": "Renamed"}, headers=org.admin.headers).status_code == 200
        assert client.delete(key_url, headers=org.admin.headers).status_code == 204
        rows = logs(client, org, resource_type="api_keys")
        assert [row["action"] for row in rows] == [
            "api_keys:delete_api_key",
            "api_keys:update_api_key",
            "api_keys:create_api_key",
        ]
        assert {row["resource_id"] for row in rows} == {created["id"]}
        assert [row["status_code"] for row in rows] == [204, 200, 201]
        assert rows[1]["details"]["changed"] == ["name"]
        assert all(created["key"] not in str(row) for row in rows)

    def test_a_denied_request_is_logged_for_the_admin(
        self, client: TestClient, factory: Factory, org: Org
    ) -> None:
        developer = factory.user(org.id, "developer")
        denied = client.get(KEYS.format(org_id=org.id), headers=developer.headers)
        assert denied.status_code == 403
        (row,) = logs(client, org, outcome="denied")
        assert row["actor_id"] == developer.user_id
        assert row["actor_type"] == "user"
        assert row["action"] == "api_keys:list_api_keys"
        assert row["resource_type"] == "api_keys"
        assert row["request_id"] == denied.headers["x-request-id"]
        assert row["method"] == "GET"
        assert row["details"]["attempted"] == "read"

    def test_a_denied_mutation_changes_nothing_but_is_logged(
        self, client: TestClient, factory: Factory, org: Org
    ) -> None:
        viewer = factory.user(org.id, "viewer")
        response = client.post(
            KEYS.format(org_id=org.id), json={"name": "sneaky", "permissions": {}}, headers=viewer.headers
        )
        assert response.status_code == 403
        assert logs(client, org, outcome="success") == []
        (row,) = logs(client, org, actor_id=viewer.user_id)
        assert (row["outcome"], row["action"]) == ("denied", "api_keys:create_api_key")
        assert client.get(KEYS.format(org_id=org.id), headers=org.admin.headers).json()["data"] == []

    def test_filters(self, client: TestClient, factory: Factory, org: Org) -> None:
        developer = factory.user(org.id, "developer")
        create_key(client, org, "one")
        create_key(client, org, "two")
        client.get(KEYS.format(org_id=org.id), headers=developer.headers)  # denied
        everything = logs(client, org)
        assert len(everything) == 3
        assert [row["created_at"] for row in everything] == sorted(
            (row["created_at"] for row in everything), reverse=True
        )

        assert len(logs(client, org, action="api_keys:create_api_key")) == 2
        assert logs(client, org, action="api_keys:create") == []  # exact match only
        assert len(logs(client, org, outcome="success")) == 2
        assert len(logs(client, org, outcome="denied")) == 1
        assert len(logs(client, org, actor_id=org.admin.user_id)) == 2
        assert len(logs(client, org, actor_id=developer.user_id)) == 1
        assert len(logs(client, org, resource_type="api_keys")) == 3
        assert logs(client, org, resource_type="projects") == []
        assert len(logs(client, org, actor_id=org.admin.user_id, outcome="denied")) == 0

        oldest, newest = everything[-1]["created_at"], everything[0]["created_at"]
        assert len(logs(client, org, since=oldest)) == 3
        assert len(logs(client, org, until=newest)) == 2  # `until` is exclusive
        assert len(logs(client, org, since=newest, until=newest)) == 0
        later = (utcnow() + timedelta(minutes=1)).isoformat()
        assert logs(client, org, since=later) == []
        naive_past = (utcnow() - timedelta(hours=1)).replace(tzinfo=None).isoformat()
        assert len(logs(client, org, since=naive_past)) == 3

    def test_login_rows_are_found_by_action(self, client: TestClient, org: Org) -> None:
        response = client.post(
            "/api/v1/auth/login", json={"email": org.admin.email, "password": org.admin.password}
        )
        assert response.status_code == 200
        (row,) = logs(client, org, action="auth:login")
        assert row["actor_id"] == org.admin.user_id
        assert row["request_id"] == response.headers["x-request-id"]

    def test_pages_newest_first_by_cursor(self, client: TestClient, app: FastAPI, org: Org) -> None:
        # Rows that share a timestamp must still be walked once each, newest id first.
        moment = utcnow()
        with app.state.database.session() as session:
            session.add_all(
                AuditLog(
                    organization_id=org.id,
                    created_at=moment - timedelta(seconds=i % 2),
                    actor_type="user",
                    actor_id=org.admin.user_id,
                    action="test:seed",
                    outcome="success",
                )
                for i in range(7)
            )
        seen: list[tuple[str, str]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {
                "limit": 3,
                "action": "test:seed",
                **({"cursor": cursor} if cursor else {}),
            }
            response = client.get(LOGS.format(org_id=org.id), params=params, headers=org.admin.headers)
            page = response.json()
            assert page["pagination"]["total"] == 7
            seen += [(row["created_at"], row["id"]) for row in page["data"]]
            cursor = page["pagination"]["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 7
        assert seen == sorted(seen, reverse=True)

    def test_other_organisations_rows_are_not_shown(
        self, client: TestClient, org: Org, other_org: Org
    ) -> None:
        create_key(client, other_org)
        assert logs(client, org) == []
        assert len(logs(client, other_org)) == 1

    def test_another_organisations_admin_is_404(self, client: TestClient, org: Org, other_org: Org) -> None:
        create_key(client, org)
        response = client.get(LOGS.format(org_id=org.id), headers=other_org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
        response = client.get(LOGS.format(org_id="org_nosuch"), headers=org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")

    @pytest.mark.parametrize(
        ("org_id", "status"),
        [("org_%00", 422), ("x" * 65, 422), ("..%2F..%2Fetc", 404)],  # the last one matches no route
    )
    def test_malformed_organisation_id_is_refused(
        self, client: TestClient, org: Org, org_id: str, status: int
    ) -> None:
        response = client.get(f"/api/v1/organizations/{org_id}/audit-logs", headers=org.admin.headers)
        assert response.status_code == status, response.text

    @pytest.mark.parametrize("role", ["viewer", "developer"])
    def test_viewers_and_developers_are_403(
        self, client: TestClient, factory: Factory, org: Org, role: str
    ) -> None:
        response = client.get(LOGS.format(org_id=org.id), headers=factory.user(org.id, role).headers)
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_api_keys_cannot_read_the_log(self, client: TestClient, factory: Factory, org: Org) -> None:
        key = factory.api_key(org.id, {"organizations": ["read", "write", "delete"]})
        response = client.get(LOGS.format(org_id=org.id), headers={"X-API-Key": key})
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        (row,) = logs(client, org, outcome="denied")
        assert row["actor_type"] == "api_key"

    def test_anonymous_is_401(self, client: TestClient, org: Org) -> None:
        assert_error(client.get(LOGS.format(org_id=org.id)), 401, "AUTHENTICATION_REQUIRED")

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"outcome": "maybe"}, "outcome"),
            ({"since": "yesterday"}, "since"),
            ({"until": "2024-13-45T00:00:00Z"}, "until"),
            ({"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "until"),
            ({"since": "9999-12-31T23:59:59-12:00"}, "since"),
            ({"actor_id": "x" * 41}, "actor_id"),
            ({"actor_id": "user_\x00"}, "path"),  # NUL is refused before routing
            ({"action": "auth:\x00login"}, "path"),
            ({"resource_type": "api_keys\x00"}, "path"),
            ({"action": "x" * 101}, "action"),
            ({"limit": 1000}, "limit"),
            ({"cursor": "garbage"}, "cursor"),
        ],
    )
    def test_malformed_filters_are_422(
        self, client: TestClient, org: Org, params: dict[str, Any], field: str
    ) -> None:
        response = client.get(LOGS.format(org_id=org.id), params=params, headers=org.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert field in {detail["field"] for detail in response.json()["error"]["details"]}
