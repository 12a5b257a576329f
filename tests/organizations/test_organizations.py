"""Organisations: list, create, read, update and delete."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.identity.models import AuditLog, User
from maestro.organizations.models import Membership, Organization
from maestro.projects.models import Project
from tests.factories import Factory

SQL_NAME = "Robert'); DROP TABLE organizations;--"
ORG_FIELDS = {
    "id",
    "name",
    "slug",
    "description",
    "role",
    "subscription_plan",
    "member_count",
    "model_count",
    "created_at",
    "updated_at",
}


def url(org_id: str) -> str:
    return f"/api/v1/organizations/{org_id}"


class TestListOrganizations:
    def test_lists_only_my_organizations_with_my_role_and_counts(
        self, client: TestClient, factory: Factory
    ) -> None:
        home = factory.organization("Home")
        me = factory.user(home, "admin")
        factory.user(home, "viewer")
        other = factory.organization("Other")
        factory.user(other, "admin")
        elsewhere = factory.organization("Elsewhere")
        factory.user(elsewhere, "admin")
        with client.app.state.database.session() as session:  # type: ignore[attr-defined]
            session.add(Membership(organization_id=other, user_id=me.user_id, role="developer"))

        response = client.get("/api/v1/organizations", headers=me.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True
        by_id = {item["id"]: item for item in body["data"]}
        assert set(by_id) == {home, other}
        assert set(by_id[home]) == ORG_FIELDS
        assert by_id[home]["role"] == "admin"
        assert by_id[other]["role"] == "developer"
        assert by_id[home]["member_count"] == 2
        assert by_id[other]["member_count"] == 2
        assert by_id[home]["model_count"] == 0
        assert by_id[home]["subscription_plan"] == "enterprise"
        assert by_id[home]["created_at"].endswith("Z")
        assert body["pagination"]["total"] == 2

    def test_pages_through_many_organizations(self, client: TestClient, factory: Factory) -> None:
        first = factory.organization()
        me = factory.user(first, "viewer")
        ids = {first}
        with client.app.state.database.session() as session:  # type: ignore[attr-defined]
            for _ in range(4):
                org_id = factory.organization()
                ids.add(org_id)
                session.add(Membership(organization_id=org_id, user_id=me.user_id, role="viewer"))
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/api/v1/organizations", headers=me.headers, params=params).json()
            seen += [item["id"] for item in page["data"]]
            assert page["pagination"]["total"] == 5
            cursor = page["pagination"]["next_cursor"]
            if not page["pagination"]["has_next"]:
                break
        assert len(seen) == 5
        assert set(seen) == ids

    def test_api_key_sees_its_own_organization(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        factory.user(org_id, "admin")
        factory.user(factory.organization(), "admin")
        key = factory.api_key(org_id, {"organizations": ["read"]})
        response = client.get("/api/v1/organizations", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        [item] = response.json()["data"]
        assert item["id"] == org_id
        assert item["role"] is None

    def test_api_key_without_permission_is_forbidden(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"models": ["read"]})
        response = client.get("/api/v1/organizations", headers={"X-API-Key": key})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"

    def test_malformed_paging_is_rejected(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        for params in ({"limit": 0}, {"limit": 101}, {"page": "x"}, {"cursor": "not-a-cursor"}):
            response = client.get("/api/v1/organizations", headers=me.headers, params=params)
            assert response.status_code == 422, params
            assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_anonymous_is_refused(self, client: TestClient) -> None:
        response = client.get("/api/v1/organizations")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"


class TestCreateOrganization:
    def test_creator_becomes_admin(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        me = factory.user(factory.organization())
        response = client.post(
            "/api/v1/organizations",
            headers=me.headers,
            json={"name": "  Acme Corp  ", "description": "Fraud models"},
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == ORG_FIELDS
        assert data["name"] == "Acme Corp"
        assert data["slug"] == "acme-corp"
        assert data["description"] == "Fraud models"
        assert data["role"] == "admin"
        assert data["subscription_plan"] == "unlimited"  # MAESTRO_DEFAULT_PLAN's default
        assert data["member_count"] == 1
        assert data["model_count"] == 0
        assert data["id"].startswith("org_")

        listed = client.get("/api/v1/organizations", headers=me.headers).json()["data"]
        assert data["id"] in {item["id"] for item in listed}
        [row] = audit_rows(resource_type="organizations", resource_id=data["id"])
        assert row.outcome == "success"
        assert row.organization_id == data["id"]
        assert row.actor_id == me.user_id
        assert row.action == "organizations:create_organization"

    def test_same_name_gets_a_distinct_slug(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        slugs = {
            client.post("/api/v1/organizations", headers=me.headers, json={"name": "Twin"}).json()["data"][
                "slug"
            ]
            for _ in range(2)
        }
        assert len(slugs) == 2

    def test_a_user_without_organization_can_create_one(self, client: TestClient, factory: Factory) -> None:
        loner = factory.user()
        response = client.post("/api/v1/organizations", headers=loner.headers, json={"name": "Solo"})
        assert response.status_code == 201, response.text
        me = client.get("/api/v1/auth/me", headers=loner.headers).json()["data"]
        assert me["current_organization"]["id"] == response.json()["data"]["id"]

    def test_sql_looking_name_is_just_a_name(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        response = client.post("/api/v1/organizations", headers=me.headers, json={"name": SQL_NAME})
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert data["name"] == SQL_NAME
        assert data["slug"] == "robert-drop-table-organizations"
        again = client.get(url(data["id"]), headers=me.headers)
        assert again.status_code == 200
        assert again.json()["data"]["name"] == SQL_NAME
        assert len(client.get("/api/v1/organizations", headers=me.headers).json()["data"]) == 2

    def test_api_key_cannot_create(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"organizations": ["read", "write", "delete"]})
        response = client.post("/api/v1/organizations", headers={"X-API-Key": key}, json={"name": "Nope"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        [row] = audit_rows(outcome="denied", actor_type="api_key")
        assert row.organization_id == org_id
        assert row.action == "organizations:create_organization"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"name": ""},
            {"name": "   "},
            {"name": "x" * 201},
            {"name": 42},
            {"name": "Ok", "description": "d" * 2001},
            {"name": "Ok", "role": "admin"},
            {"name": "Ok", "organization_id": "org_x"},
            {"name": "Ok", "subscription_plan": "enterprise"},
            {"name": "Ok", "slug": "chosen"},
        ],
    )
    def test_malformed_bodies_are_rejected(self, client: TestClient, factory: Factory, body: dict) -> None:
        me = factory.user(factory.organization())
        response = client.post("/api/v1/organizations", headers=me.headers, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_not_json_is_rejected(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        response = client.post(
            "/api/v1/organizations",
            headers={**me.headers, "Content-Type": "application/json"},
            content=b"{not json",
        )
        assert response.status_code == 422

    def test_anonymous_is_refused(self, client: TestClient) -> None:
        assert client.post("/api/v1/organizations", json={"name": "Acme"}).status_code == 401


class TestGetOrganization:
    def test_member_reads_details(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization("Acme")
        factory.user(org_id, "admin")
        viewer = factory.user(org_id, "viewer")
        response = client.get(url(org_id), headers=viewer.headers)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert set(data) == ORG_FIELDS
        assert data["id"] == org_id
        assert data["name"] == "Acme"
        assert data["role"] == "viewer"
        assert data["member_count"] == 2

    def test_member_of_several_sees_the_role_in_this_one(self, client: TestClient, factory: Factory) -> None:
        home = factory.organization()
        me = factory.user(home, "admin")
        other = factory.organization()
        with client.app.state.database.session() as session:  # type: ignore[attr-defined]
            session.add(Membership(organization_id=other, user_id=me.user_id, role="viewer"))
        assert client.get(url(other), headers=me.headers).json()["data"]["role"] == "viewer"

    def test_api_key_with_permission_reads_its_organization(
        self, client: TestClient, factory: Factory
    ) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"organizations": ["read"]})
        assert client.get(url(org_id), headers={"X-API-Key": key}).status_code == 200
        bare = factory.api_key(org_id, {})
        assert client.get(url(org_id), headers={"X-API-Key": bare}).status_code == 403

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization()
        factory.user(mine, "admin")
        outsider = factory.user(factory.organization(), "admin")
        response = client.get(url(mine), headers=outsider.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        key = factory.api_key(factory.organization(), {"organizations": ["read"]})
        assert client.get(url(mine), headers={"X-API-Key": key}).status_code == 404

    def test_unknown_and_malformed_ids(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        assert client.get(url("org_doesnotexist"), headers=me.headers).status_code == 404
        assert client.get(url("x" * 65), headers=me.headers).status_code == 422
        assert client.get(url("' OR '1'='1"), headers=me.headers).status_code == 422

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        assert client.get(url(factory.organization())).status_code == 401


class TestUpdateOrganization:
    def test_admin_renames(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        org_id = factory.organization("Old")
        admin = factory.user(org_id, "admin")
        before = client.get(url(org_id), headers=admin.headers).json()["data"]
        response = client.put(
            url(org_id), headers=admin.headers, json={"name": "New name", "description": "About us"}
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["name"] == "New name"
        assert data["description"] == "About us"
        assert data["slug"] == before["slug"]
        assert data["subscription_plan"] == before["subscription_plan"]
        assert data["updated_at"] >= before["updated_at"]
        [row] = audit_rows(resource_type="organizations", resource_id=org_id, outcome="success")
        assert row.action == "organizations:update_organization"
        assert row.organization_id == org_id
        assert row.details["changed"] == ["description", "name"]

    def test_partial_update_and_clearing_the_description(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization("Keep")
        admin = factory.user(org_id, "admin")
        client.put(url(org_id), headers=admin.headers, json={"description": "text"})
        response = client.put(url(org_id), headers=admin.headers, json={"description": None})
        assert response.status_code == 200
        assert response.json()["data"]["name"] == "Keep"
        assert response.json()["data"]["description"] is None

    def test_sql_looking_name(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        response = client.put(url(org_id), headers=admin.headers, json={"name": SQL_NAME})
        assert response.status_code == 200
        assert client.get(url(org_id), headers=admin.headers).json()["data"]["name"] == SQL_NAME

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_non_admin_is_forbidden_and_the_denial_is_audited(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]], role: str
    ) -> None:
        org_id = factory.organization("Same")
        factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        response = client.put(url(org_id), headers=member.headers, json={"name": "Hijacked"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        assert client.get(url(org_id), headers=member.headers).json()["data"]["name"] == "Same"
        [row] = audit_rows(actor_id=member.user_id, outcome="denied")
        assert row.organization_id == org_id
        assert row.resource_type == "organizations"
        assert row.action == "organizations:update_organization"
        assert row.details["attempted"] == "write"

    def test_api_key_with_write_permission_may_update(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"organizations": ["read", "write"]})
        response = client.put(url(org_id), headers={"X-API-Key": key}, json={"name": "By key"})
        assert response.status_code == 200
        read_only = factory.api_key(org_id, {"organizations": ["read"]})
        assert (
            client.put(url(org_id), headers={"X-API-Key": read_only}, json={"name": "x"}).status_code == 403
        )

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization("Mine")
        owner = factory.user(mine, "admin")
        outsider = factory.user(factory.organization(), "admin")
        response = client.put(url(mine), headers=outsider.headers, json={"name": "Taken"})
        assert response.status_code == 404
        assert client.get(url(mine), headers=owner.headers).json()["data"]["name"] == "Mine"

    @pytest.mark.parametrize(
        "body",
        [
            {"name": None},
            {"name": ""},
            {"name": "x" * 201},
            {"subscription_plan": "enterprise"},
            {"slug": "mine"},
            {"role": "admin"},
            {"organization_id": "org_other"},
            {"name": ["a"]},
        ],
    )
    def test_malformed_bodies_are_rejected(self, client: TestClient, factory: Factory, body: dict) -> None:
        org_id = factory.organization("Stable")
        admin = factory.user(
            org_id,
            "admin",
        )
        response = client.put(url(org_id), headers=admin.headers, json=body)
        assert response.status_code == 422, response.text
        data = client.get(url(org_id), headers=admin.headers).json()["data"]
        assert data["name"] == "Stable"
        assert data["subscription_plan"] == "enterprise"

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        assert client.put(url(factory.organization()), json={"name": "x"}).status_code == 401


class TestDeleteOrganization:
    def test_admin_deletes_and_everything_goes(
        self,
        app: FastAPI,
        client: TestClient,
        factory: Factory,
        audit_rows: Callable[..., list[AuditLog]],
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        member = factory.user(org_id, "developer")
        project_id = factory.project(org_id, admin)
        factory.add_project_member(project_id, member, "developer")
        client.post(f"{url(org_id)}/users/invite", headers=admin.headers, json={"email": "new@example.com"})

        response = client.delete(url(org_id), headers=admin.headers)
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert client.get(url(org_id), headers=member.headers).status_code == 404
        with app.state.database.session(write=False) as session:
            assert session.get(Organization, org_id) is None
            assert session.get(Project, project_id) is None
            assert session.scalars(select(Membership).where(Membership.organization_id == org_id)).all() == []
            assert session.get(User, member.user_id).current_organization_id is None
        [row] = audit_rows(resource_type="organizations", resource_id=org_id)
        assert row.outcome == "success"
        assert row.action == "organizations:delete_organization"
        assert row.organization_id is None
        # The admin's account lives on and can still act.
        assert client.get("/api/v1/organizations", headers=admin.headers).json()["data"] == []

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_non_admin_is_forbidden(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]], role: str
    ) -> None:
        org_id = factory.organization()
        factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        assert client.delete(url(org_id), headers=member.headers).status_code == 403
        assert client.get(url(org_id), headers=member.headers).status_code == 200
        [row] = audit_rows(actor_id=member.user_id, outcome="denied")
        assert row.details["attempted"] == "delete"

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization()
        owner = factory.user(mine, "admin")
        outsider = factory.user(factory.organization(), "admin")
        assert client.delete(url(mine), headers=outsider.headers).status_code == 404
        assert client.get(url(mine), headers=owner.headers).status_code == 200

    def test_unknown_and_malformed_ids(self, client: TestClient, factory: Factory) -> None:
        me = factory.user(factory.organization())
        assert client.delete(url("org_nothere"), headers=me.headers).status_code == 404
        assert client.delete(url("o" * 65), headers=me.headers).status_code == 422

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        assert client.delete(url(factory.organization())).status_code == 401
