"""API keys: created by organisation admins, shown in full exactly once, accepted in
the Authorization or X-API-Key header only, limited to their grants, and refused at
once when mistyped, expired or revoked."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.db import utcnow
from maestro.identity import security
from maestro.identity.api_keys import router as api_keys_router
from maestro.identity.models import ApiKey
from maestro.identity.rbac import Target, authorize
from tests.factories import Factory, Org

KEYS = "/api/v1/organizations/{org_id}/api-keys"
KEY = "/api/v1/api-keys/{key_id}"
PROBE = "/_test/probe/{action}/{kind}"


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    """The real app with the API key routes (when the app does not mount them yet) and a
    probe route that answers 200 when the caller may do ``action`` on ``kind``."""
    if "/api/v1/organizations/{org_id}/api-keys" not in app.openapi()["paths"]:
        app.include_router(api_keys_router)

    @app.get("/_test/probe/{action}/{kind}", tags=["test"])
    def probe(action: str, kind: str, principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
        assert principal.organization_id is not None
        authorize(session, principal, action, Target(kind, principal.organization_id))  # type: ignore[arg-type]
        return {"kind": principal.kind, "id": principal.id, "organization_id": principal.organization_id}

    app.openapi_schema = None
    return app


@pytest.fixture
def org(factory: Factory) -> Org:
    return Org.new(factory)


@pytest.fixture
def other_org(factory: Factory) -> Org:
    return Org.new(factory)


def create_key(client: TestClient, org: Org, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "Production API Key")
    body.setdefault("permissions", {"models": ["read"], "inference": ["read"]})
    response = client.post(KEYS.format(org_id=org.id), json=body, headers=org.admin.headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def key_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def error_fields(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "VALIDATION_ERROR"
    return {detail["field"] for detail in body["error"]["details"]}


class TestCreateApiKey:
    def test_full_key_is_returned_once_with_the_item(self, client: TestClient, org: Org) -> None:
        expires = (utcnow() + timedelta(days=30)).replace(microsecond=0)
        data = create_key(
            client,
            org,
            permissions={"inference": ["read"], "models": ["read", "read"], "deployments": ["write", "read"]},
            expires_at=expires.isoformat().replace("+00:00", "Z"),
        )
        assert security.api_key_is_well_formed(data["key"])
        assert data["key"].startswith("mk_")
        assert data["prefix"] == data["key"][: len(data["prefix"])]
        assert data["id"].startswith("key_")
        assert data["name"] == "Production API Key"
        assert data["permissions"] == {
            "inference": ["read"],
            "models": ["read"],
            "deployments": ["read", "write"],
        }
        assert data["expires_at"] == expires.isoformat().replace("+00:00", "Z")
        assert data["last_used_at"] is None
        number = org.admin.email.removeprefix("user").split("@")[0]
        assert data["created_by"] == {"id": org.admin.user_id, "name": f"User {number}"}
        assert data["created_at"].endswith("Z")
        assert data["revoked"] is False

    def test_only_the_hash_is_stored(self, client: TestClient, org: Org, app: FastAPI) -> None:
        data = create_key(client, org)
        with app.state.database.session() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.id == data["id"])).one()
            assert row.key_hash == security.sha256_hex(data["key"])
            assert data["key"] not in {row.name, row.prefix, row.key_hash}

    def test_key_works_as_bearer_and_as_x_api_key(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        for headers in (key_headers(data["key"]), {"X-API-Key": data["key"]}):
            response = client.get(PROBE.format(action="read", kind="models"), headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == {"kind": "api_key", "id": data["id"], "organization_id": org.id}

    def test_unknown_organisation_or_another_organisations_admin_is_404(
        self, client: TestClient, org: Org, other_org: Org
    ) -> None:
        body = {"name": "k", "permissions": {"models": ["read"]}}
        for org_id in (other_org.id, "org_doesnotexist"):
            response = client.post(KEYS.format(org_id=org_id), json=body, headers=org.admin.headers)
            assert_error(response, 404, "RESOURCE_NOT_FOUND")

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_developers_and_viewers_cannot_create_keys(
        self, client: TestClient, factory: Factory, org: Org, role: str
    ) -> None:
        member = factory.user(org.id, role)
        response = client.post(
            KEYS.format(org_id=org.id), json={"name": "k", "permissions": {}}, headers=member.headers
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_a_key_cannot_create_keys(self, client: TestClient, factory: Factory, org: Org) -> None:
        everything = {kind: ["read", "write", "delete"] for kind in ("organizations", "projects", "models")}
        key = factory.api_key(org.id, everything)
        response = client.post(
            KEYS.format(org_id=org.id),
            json={"name": "k", "permissions": everything},
            headers=key_headers(key),
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_anonymous_is_401(self, client: TestClient, org: Org) -> None:
        response = client.post(KEYS.format(org_id=org.id), json={"name": "k", "permissions": {}})
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"name": "k", "permissions": {"root": ["read"]}}, "permissions.root"),
            ({"name": "k", "permissions": {"api_keys": ["write"]}}, "permissions.api_keys"),
            ({"name": "k", "permissions": {"models": ["admin"]}}, "permissions.models.0"),
            ({"name": "k", "permissions": {"models": "read"}}, "permissions.models"),
            ({"name": "k", "permissions": ["models"]}, "permissions"),
            ({"name": "k"}, "permissions"),
            ({"name": "k", "permissions": {}, "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
            ({"name": "k", "permissions": {}, "expires_at": "next tuesday"}, "expires_at"),
            ({"name": "k", "permissions": {}, "expires_at": "9999-12-31T23:59:59-12:00"}, "expires_at"),
            ({"name": "x" * 10_000, "permissions": {}}, "name"),
            ({"name": "   ", "permissions": {}}, "name"),
            ({"name": "a\x00b", "permissions": {}}, "name"),
            ({"name": "line\nbreak", "permissions": {}}, "name"),
            ({"permissions": {}}, "name"),
            ({"name": "k", "permissions": {}, "organization_id": "org_x"}, "organization_id"),
            ({"name": "k", "permissions": {}, "key": "mk_chosen"}, "key"),
        ],
    )
    def test_malformed_bodies_are_422_naming_the_field(
        self, client: TestClient, org: Org, body: dict[str, Any], field: str
    ) -> None:
        response = client.post(KEYS.format(org_id=org.id), json=body, headers=org.admin.headers)
        assert field in error_fields(response)
        listed = client.get(KEYS.format(org_id=org.id), headers=org.admin.headers).json()
        assert listed["data"] == []


class TestApiKeyAuthentication:
    def test_key_in_query_string_is_refused_even_with_a_valid_header(
        self, client: TestClient, org: Org
    ) -> None:
        key = create_key(client, org)["key"]
        probe = PROBE.format(action="read", kind="models")
        for name in ("api_key", "token", "access_token", "API_KEY"):
            response = client.get(probe, params={name: key}, headers=key_headers(key))
            assert_error(response, 401, "AUTHENTICATION_REQUIRED")
        assert_error(client.get(probe, params={"api_key": key}), 401, "AUTHENTICATION_REQUIRED")

    def test_a_mistyped_key_is_refused(self, client: TestClient, org: Org) -> None:
        key = create_key(client, org)["key"]
        probe = PROBE.format(action="read", kind="models")
        for position in (5, len(key) - 1):
            replacement = "A" if key[position] != "A" else "B"
            typo = key[:position] + replacement + key[position + 1 :]
            assert not security.api_key_is_well_formed(typo)
            assert_error(client.get(probe, headers=key_headers(typo)), 401, "AUTHENTICATION_REQUIRED")
            assert_error(client.get(probe, headers={"X-API-Key": typo}), 401, "AUTHENTICATION_REQUIRED")
        assert client.get(probe, headers=key_headers(key)).status_code == 200

    def test_a_well_formed_unknown_key_is_refused(self, client: TestClient, org: Org) -> None:
        unknown = security.generate_api_key().key
        response = client.get(PROBE.format(action="read", kind="models"), headers=key_headers(unknown))
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")

    def test_an_expired_key_is_refused(self, client: TestClient, factory: Factory, org: Org) -> None:
        expired = factory.api_key(org.id, {"models": ["read"]}, expires_at=utcnow() - timedelta(seconds=1))
        live = factory.api_key(org.id, {"models": ["read"]}, expires_at=utcnow() + timedelta(hours=1))
        probe = PROBE.format(action="read", kind="models")
        assert_error(client.get(probe, headers=key_headers(expired)), 401, "AUTHENTICATION_REQUIRED")
        assert client.get(probe, headers=key_headers(live)).status_code == 200

    def test_scope_is_enforced(self, client: TestClient, org: Org) -> None:
        key = create_key(client, org, permissions={"models": ["read"], "projects": ["read"]})["key"]
        headers = key_headers(key)
        assert client.get(PROBE.format(action="read", kind="models"), headers=headers).status_code == 200
        for action, kind in (("write", "models"), ("delete", "models"), ("read", "deployments")):
            response = client.get(PROBE.format(action=action, kind=kind), headers=headers)
            assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_scope_exceeded_on_project_creation_is_403(
        self, client: TestClient, app: FastAPI, org: Org
    ) -> None:
        if "/api/v1/organizations/{org_id}/projects" not in app.openapi()["paths"]:
            pytest.skip("the projects routes are not mounted yet")
        key = create_key(client, org, permissions={"projects": ["read"]})["key"]
        response = client.post(
            f"/api/v1/organizations/{org.id}/projects", json={"name": "Churn"}, headers=key_headers(key)
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_no_key_may_touch_person_only_resources(
        self, client: TestClient, factory: Factory, org: Org
    ) -> None:
        everything = {kind: ["read", "write", "delete"] for kind in ("organizations", "projects", "models")}
        key = factory.api_key(org.id, everything)
        for kind in ("api_keys", "audit_logs", "members"):
            response = client.get(PROBE.format(action="read", kind=kind), headers=key_headers(key))
            assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        assert_error(
            client.get(KEYS.format(org_id=org.id), headers=key_headers(key)), 403, "INSUFFICIENT_PERMISSIONS"
        )

    def test_a_key_sees_nothing_of_another_organisation(
        self, client: TestClient, factory: Factory, org: Org, other_org: Org
    ) -> None:
        key = factory.api_key(org.id, {"models": ["read"]})
        response = client.get(KEYS.format(org_id=other_org.id), headers=key_headers(key))
        assert_error(response, 404, "RESOURCE_NOT_FOUND")

    def test_last_used_at_is_set_after_use(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        before = utcnow()
        assert (
            client.get(
                PROBE.format(action="read", kind="models"), headers={"X-API-Key": data["key"]}
            ).status_code
            == 200
        )
        listed = client.get(KEYS.format(org_id=org.id), headers=org.admin.headers).json()["data"]
        (item,) = [item for item in listed if item["id"] == data["id"]]
        assert item["last_used_at"] is not None
        assert datetime.fromisoformat(item["last_used_at"]) >= before - timedelta(seconds=1)


class TestListApiKeys:
    def test_lists_keys_newest_first_without_secrets(
        self, client: TestClient, org: Org, other_org: Org
    ) -> None:
        first = create_key(client, org, name="first")
        second = create_key(client, org, name="second", permissions={"deployments": ["read", "write"]})
        create_key(client, other_org, name="elsewhere")
        response = client.get(KEYS.format(org_id=org.id), headers=org.admin.headers)
        assert response.status_code == 200
        body = response.json()
        assert [item["name"] for item in body["data"]] == ["second", "first"]
        assert body["pagination"]["total"] == 2
        item = body["data"][0]
        assert set(item) == {
            "id",
            "name",
            "prefix",
            "permissions",
            "expires_at",
            "last_used_at",
            "created_by",
            "created_at",
            "revoked",
        }
        assert item["permissions"] == {"deployments": ["read", "write"]}
        assert item["created_by"]["id"] == org.admin.user_id
        for secret in (first["key"], second["key"], security.sha256_hex(second["key"])):
            assert secret not in response.text

    def test_revoked_keys_are_listed_only_on_request(self, client: TestClient, org: Org) -> None:
        kept = create_key(client, org, name="kept")
        gone = create_key(client, org, name="gone")
        assert client.delete(KEY.format(key_id=gone["id"]), headers=org.admin.headers).status_code == 204
        default = client.get(KEYS.format(org_id=org.id), headers=org.admin.headers).json()["data"]
        assert [item["id"] for item in default] == [kept["id"]]
        everything = client.get(
            KEYS.format(org_id=org.id), params={"include_revoked": "true"}, headers=org.admin.headers
        ).json()["data"]
        assert {item["id"]: item["revoked"] for item in everything} == {kept["id"]: False, gone["id"]: True}

    def test_pages_by_cursor(self, client: TestClient, org: Org) -> None:
        ids = [create_key(client, org, name=f"k{i}")["id"] for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = client.get(KEYS.format(org_id=org.id), params=params, headers=org.admin.headers).json()
            seen += [item["id"] for item in page["data"]]
            cursor = page["pagination"]["next_cursor"]
            if not cursor:
                break
        assert seen == list(reversed(ids))

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_developers_and_viewers_cannot_list_keys(
        self, client: TestClient, factory: Factory, org: Org, role: str
    ) -> None:
        response = client.get(KEYS.format(org_id=org.id), headers=factory.user(org.id, role).headers)
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_another_organisations_admin_is_404(self, client: TestClient, org: Org, other_org: Org) -> None:
        create_key(client, org)
        response = client.get(KEYS.format(org_id=org.id), headers=other_org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")

    def test_anonymous_is_401(self, client: TestClient, org: Org) -> None:
        assert_error(client.get(KEYS.format(org_id=org.id)), 401, "AUTHENTICATION_REQUIRED")

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"include_revoked": "perhaps"}, "include_revoked"),
            ({"cursor": "not-a-cursor"}, "cursor"),
        ],
    )
    def test_malformed_query_is_422(
        self, client: TestClient, org: Org, params: dict[str, Any], field: str
    ) -> None:
        response = client.get(KEYS.format(org_id=org.id), params=params, headers=org.admin.headers)
        assert field in error_fields(response)


class TestUpdateApiKey:
    def test_changes_name_permissions_and_expiry(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org, permissions={"models": ["read"]})
        expires = (utcnow() + timedelta(days=7)).replace(microsecond=0)
        response = client.put(
            KEY.format(key_id=data["id"]),
            json={
                "name": "Renamed",
                "permissions": {"deployments": ["read"]},
                "expires_at": expires.isoformat(),
            },
            headers=org.admin.headers,
        )
        assert response.status_code == 200, response.text
        updated = response.json()["data"]
        assert "key" not in updated
        assert updated["name"] == "Renamed"
        assert updated["permissions"] == {"deployments": ["read"]}
        assert updated["expires_at"] == expires.isoformat().replace("+00:00", "Z")
        assert updated["prefix"] == data["prefix"]
        # The new grants apply on the next request.
        headers = key_headers(data["key"])
        assert client.get(PROBE.format(action="read", kind="deployments"), headers=headers).status_code == 200
        assert client.get(PROBE.format(action="read", kind="models"), headers=headers).status_code == 403

    def test_omitted_fields_are_kept_and_null_expiry_clears_it(self, client: TestClient, org: Org) -> None:
        expires = (utcnow() + timedelta(days=7)).isoformat()
        data = create_key(client, org, expires_at=expires)
        renamed = client.put(KEY.format(key_id=data["id"]), json={"name": "New"}, headers=org.admin.headers)
        assert renamed.json()["data"]["permissions"] == data["permissions"]
        assert renamed.json()["data"]["expires_at"] is not None
        cleared = client.put(
            KEY.format(key_id=data["id"]), json={"expires_at": None}, headers=org.admin.headers
        )
        assert cleared.status_code == 200
        assert cleared.json()["data"]["expires_at"] is None
        assert cleared.json()["data"]["name"] == "New"

    def test_expiring_a_key_in_the_past_is_refused(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        response = client.put(
            KEY.format(key_id=data["id"]),
            json={"expires_at": "2020-01-01T00:00:00Z"},
            headers=org.admin.headers,
        )
        assert error_fields(response) == {"expires_at"}

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"name": None}, "name"),
            ({"name": ""}, "name"),
            ({"name": "x" * 10_000}, "name"),
            ({"permissions": None}, "permissions"),
            ({"permissions": {"root": ["read"]}}, "permissions.root"),
            ({"permissions": {"models": ["admin"]}}, "permissions.models.0"),
            ({"revoked": False}, "revoked"),
            ({"organization_id": "org_x"}, "organization_id"),
        ],
    )
    def test_malformed_bodies_are_422(
        self, client: TestClient, org: Org, body: dict[str, Any], field: str
    ) -> None:
        data = create_key(client, org)
        response = client.put(KEY.format(key_id=data["id"]), json=body, headers=org.admin.headers)
        assert field in error_fields(response)

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_developers_and_viewers_cannot_change_keys(
        self, client: TestClient, factory: Factory, org: Org, role: str
    ) -> None:
        data = create_key(client, org)
        response = client.put(
            KEY.format(key_id=data["id"]), json={"name": "mine"}, headers=factory.user(org.id, role).headers
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_another_organisations_key_is_404(self, client: TestClient, org: Org, other_org: Org) -> None:
        data = create_key(client, org)
        response = client.put(
            KEY.format(key_id=data["id"]), json={"name": "x"}, headers=other_org.admin.headers
        )
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
        response = client.put(KEY.format(key_id="key_unknown"), json={"name": "x"}, headers=org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")

    def test_a_key_cannot_widen_itself(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        response = client.put(
            KEY.format(key_id=data["id"]),
            json={"permissions": {"models": ["read", "write", "delete"]}},
            headers=key_headers(data["key"]),
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_a_revoked_key_cannot_be_changed(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        client.delete(KEY.format(key_id=data["id"]), headers=org.admin.headers)
        response = client.put(KEY.format(key_id=data["id"]), json={"name": "back"}, headers=org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")

    def test_anonymous_is_401(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        assert_error(
            client.put(KEY.format(key_id=data["id"]), json={"name": "x"}), 401, "AUTHENTICATION_REQUIRED"
        )


class TestDeleteApiKey:
    def test_a_revoked_key_answers_401_at_once(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        probe = PROBE.format(action="read", kind="models")
        assert client.get(probe, headers=key_headers(data["key"])).status_code == 200
        response = client.delete(KEY.format(key_id=data["id"]), headers=org.admin.headers)
        assert response.status_code == 204
        assert response.content == b""
        assert_error(client.get(probe, headers=key_headers(data["key"])), 401, "AUTHENTICATION_REQUIRED")
        assert_error(client.get(probe, headers={"X-API-Key": data["key"]}), 401, "AUTHENTICATION_REQUIRED")

    def test_deleting_twice_is_404(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        assert client.delete(KEY.format(key_id=data["id"]), headers=org.admin.headers).status_code == 204
        assert_error(
            client.delete(KEY.format(key_id=data["id"]), headers=org.admin.headers), 404, "RESOURCE_NOT_FOUND"
        )

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_developers_and_viewers_cannot_revoke_keys(
        self, client: TestClient, factory: Factory, org: Org, role: str
    ) -> None:
        data = create_key(client, org)
        response = client.delete(KEY.format(key_id=data["id"]), headers=factory.user(org.id, role).headers)
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        assert (
            client.get(
                PROBE.format(action="read", kind="models"), headers=key_headers(data["key"])
            ).status_code
            == 200
        )

    def test_a_key_cannot_revoke_keys(self, client: TestClient, factory: Factory, org: Org) -> None:
        data = create_key(client, org)
        other_key = factory.api_key(org.id, {"models": ["read", "write", "delete"]})
        response = client.delete(KEY.format(key_id=data["id"]), headers=key_headers(other_key))
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")

    def test_another_organisations_key_is_404(self, client: TestClient, org: Org, other_org: Org) -> None:
        data = create_key(client, org)
        response = client.delete(KEY.format(key_id=data["id"]), headers=other_org.admin.headers)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
        assert (
            client.get(
                PROBE.format(action="read", kind="models"), headers=key_headers(data["key"])
            ).status_code
            == 200
        )

    @pytest.mark.parametrize(
        ("key_id", "field"), [("k" * 65, "key_id"), ("key_%00", "path"), ("key_%27%20OR%201=1", "key_id")]
    )
    def test_malformed_id_is_422(self, client: TestClient, org: Org, key_id: str, field: str) -> None:
        response = client.delete(KEY.format(key_id=key_id), headers=org.admin.headers)
        assert error_fields(response) == {field}

    def test_anonymous_is_401(self, client: TestClient, org: Org) -> None:
        data = create_key(client, org)
        assert_error(client.delete(KEY.format(key_id=data["id"])), 401, "AUTHENTICATION_REQUIRED")
