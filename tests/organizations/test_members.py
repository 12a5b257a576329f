"""Organisation members: list, change a role, remove (or leave)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.identity.models import AuditLog, User
from maestro.organizations.models import Membership
from maestro.projects.models import ProjectMember
from tests.factories import Actor, Factory

MEMBER_FIELDS = {"id", "email", "first_name", "last_name", "role", "avatar_url", "last_login_at", "joined_at"}


def users_url(org_id: str, user_id: str | None = None) -> str:
    base = f"/api/v1/organizations/{org_id}/users"
    return f"{base}/{user_id}" if user_id else base


def role_url(org_id: str, user_id: str) -> str:
    return f"{users_url(org_id, user_id)}/role"


def member_roles(client: TestClient, org_id: str, actor: Actor) -> dict[str, str]:
    response = client.get(users_url(org_id), headers=actor.headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    return {item["id"]: item["role"] for item in response.json()["data"]}


class TestListMembers:
    def test_lists_members_with_the_spec_shape(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        developer = factory.user(org_id, "developer")
        viewer = factory.user(org_id, "viewer")
        factory.user(factory.organization(), "admin")  # not a member

        response = client.get(users_url(org_id), headers=viewer.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [item["id"] for item in body["data"]] == [admin.user_id, developer.user_id, viewer.user_id]
        first = body["data"][0]
        assert set(first) == MEMBER_FIELDS
        assert first["email"] == admin.email
        assert first["first_name"] == "User"
        assert first["role"] == "admin"
        assert first["joined_at"].endswith("Z")
        assert body["pagination"] == {
            "total": 3,
            "page": 1,
            "limit": 20,
            "has_next": False,
            "has_prev": False,
            "next_cursor": None,
        }

    @pytest.mark.parametrize(("role", "count"), [("admin", 1), ("developer", 2), ("viewer", 1)])
    def test_filters_by_role(self, client: TestClient, factory: Factory, role: str, count: int) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        factory.user(org_id, "developer")
        factory.user(org_id, "developer")
        factory.user(org_id, "viewer")
        response = client.get(users_url(org_id), headers=admin.headers, params={"role": role})
        assert response.status_code == 200
        data = response.json()["data"]
        assert len(data) == count
        assert {item["role"] for item in data} == {role}
        assert response.json()["pagination"]["total"] == count

    def test_pages_by_cursor_and_by_page_number(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        for _ in range(6):
            factory.user(org_id, "viewer")
        with app.state.database.session(write=False) as session:
            rows = session.execute(
                select(Membership.joined_at, Membership.id, Membership.user_id).where(
                    Membership.organization_id == org_id
                )
            ).all()
        expected = [row.user_id for row in sorted(rows, key=lambda r: (r.joined_at, r.id))]

        by_cursor: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = client.get(users_url(org_id), headers=admin.headers, params=params).json()
            assert page["pagination"]["total"] == 7
            by_cursor += [item["id"] for item in page["data"]]
            cursor = page["pagination"]["next_cursor"]
            if not page["pagination"]["has_next"]:
                break
        assert by_cursor == expected

        by_page = []
        for number in (1, 2, 3):
            page = client.get(
                users_url(org_id), headers=admin.headers, params={"limit": 3, "page": number}
            ).json()
            assert page["pagination"]["has_prev"] is (number > 1)
            assert page["pagination"]["has_next"] is (number < 3)
            by_page += [item["id"] for item in page["data"]]
        assert by_page == expected

        filtered = client.get(
            users_url(org_id), headers=admin.headers, params={"role": "viewer", "limit": 4}
        ).json()
        rest = client.get(
            users_url(org_id),
            headers=admin.headers,
            params={"role": "viewer", "limit": 4, "cursor": filtered["pagination"]["next_cursor"]},
        ).json()
        assert [i["id"] for i in filtered["data"] + rest["data"]] == expected[1:]

    @pytest.mark.parametrize(
        "params",
        [
            {"role": "owner"},
            {"role": "ADMIN'--"},
            {"limit": 0},
            {"limit": 101},
            {"page": 0},
            {"cursor": "zz"},
        ],
    )
    def test_malformed_query_is_rejected(self, client: TestClient, factory: Factory, params: dict) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        response = client.get(users_url(org_id), headers=admin.headers, params=params)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_api_key_cannot_list_members(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"organizations": ["read", "write", "delete"]})
        assert client.get(users_url(org_id), headers={"X-API-Key": key}).status_code == 403

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization()
        factory.user(mine, "admin")
        outsider = factory.user(factory.organization(), "admin")
        response = client.get(users_url(mine), headers=outsider.headers)
        assert response.status_code == 404
        assert client.get(users_url("org_missing"), headers=outsider.headers).status_code == 404

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        assert client.get(users_url(factory.organization())).status_code == 401


class TestUpdateMemberRole:
    def test_admin_changes_a_role(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        developer = factory.user(org_id, "developer")
        response = client.put(
            role_url(org_id, developer.user_id), headers=admin.headers, json={"role": "admin"}
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert set(data) == MEMBER_FIELDS
        assert data["id"] == developer.user_id
        assert data["role"] == "admin"
        assert member_roles(client, org_id, admin)[developer.user_id] == "admin"
        [row] = audit_rows(resource_type="members", resource_id=developer.user_id)
        assert row.outcome == "success"
        assert row.organization_id == org_id
        assert row.details == {"previous_role": "developer", "role": "admin"}
        # The new role takes effect on the member's next request.
        assert (
            client.put(
                f"/api/v1/organizations/{org_id}", headers=developer.headers, json={"name": "Renamed"}
            ).status_code
            == 200
        )

    def test_last_admin_cannot_be_demoted(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        factory.user(org_id, "developer")
        response = client.put(role_url(org_id, admin.user_id), headers=admin.headers, json={"role": "viewer"})
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "CONFLICT"
        assert "at least one admin" in error["message"]
        assert member_roles(client, org_id, admin)[admin.user_id] == "admin"
        # Confirming the role an admin already has is fine.
        same = client.put(role_url(org_id, admin.user_id), headers=admin.headers, json={"role": "admin"})
        assert same.status_code == 200

    def test_an_admin_may_step_down_when_another_remains(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        first = factory.user(org_id, "admin")
        second = factory.user(org_id, "admin")
        response = client.put(role_url(org_id, first.user_id), headers=first.headers, json={"role": "viewer"})
        assert response.status_code == 200
        last = client.put(role_url(org_id, second.user_id), headers=second.headers, json={"role": "viewer"})
        assert last.status_code == 409

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_non_admin_cannot_change_roles_even_their_own(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]], role: str
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        mine = client.put(role_url(org_id, member.user_id), headers=member.headers, json={"role": "admin"})
        assert mine.status_code == 403
        theirs = client.put(role_url(org_id, admin.user_id), headers=member.headers, json={"role": "viewer"})
        assert theirs.status_code == 403
        assert member_roles(client, org_id, admin) == {admin.user_id: "admin", member.user_id: role}
        denied = audit_rows(actor_id=member.user_id, outcome="denied")
        assert len(denied) == 2
        assert {row.resource_type for row in denied} == {"members"}

    def test_api_key_cannot_change_roles(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        developer = factory.user(org_id, "developer")
        key = factory.api_key(org_id, {"organizations": ["read", "write", "delete"]})
        response = client.put(
            role_url(org_id, developer.user_id), headers={"X-API-Key": key}, json={"role": "admin"}
        )
        assert response.status_code == 403

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization()
        admin = factory.user(mine, "admin")
        member = factory.user(mine, "viewer")
        other = factory.organization()
        outsider = factory.user(other, "admin")
        # Another organisation's admin, on my organisation.
        response = client.put(
            role_url(mine, member.user_id), headers=outsider.headers, json={"role": "admin"}
        )
        assert response.status_code == 404
        # My admin, on a user who belongs to another organisation only.
        response = client.put(
            role_url(mine, outsider.user_id), headers=admin.headers, json={"role": "viewer"}
        )
        assert response.status_code == 404
        # My admin, on their own user id but in another organisation.
        response = client.put(role_url(other, admin.user_id), headers=admin.headers, json={"role": "admin"})
        assert response.status_code == 404
        assert member_roles(client, mine, admin)[member.user_id] == "viewer"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"role": "owner"},
            {"role": None},
            {"role": "admin", "organization_id": "org_x"},
            {"role": "admin", "user_id": "user_x"},
        ],
    )
    def test_malformed_bodies_are_rejected(self, client: TestClient, factory: Factory, body: dict) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        viewer = factory.user(org_id, "viewer")
        response = client.put(role_url(org_id, viewer.user_id), headers=admin.headers, json=body)
        assert response.status_code == 422
        assert member_roles(client, org_id, admin)[viewer.user_id] == "viewer"

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        viewer = factory.user(org_id, "viewer")
        assert client.put(role_url(org_id, viewer.user_id), json={"role": "admin"}).status_code == 401


class TestRemoveMember:
    def test_admin_removes_a_member_and_their_project_access(
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
        factory.add_project_member(project_id, member, "admin")
        other_org = factory.organization()
        other_admin = factory.user(other_org, "admin")
        other_project = factory.project(other_org, other_admin)
        factory.add_project_member(other_project, member, "viewer")

        response = client.delete(users_url(org_id, member.user_id), headers=admin.headers)
        assert response.status_code == 204, response.text
        assert member.user_id not in member_roles(client, org_id, admin)
        with app.state.database.session(write=False) as session:
            remaining = session.scalars(
                select(ProjectMember.project_id).where(ProjectMember.user_id == member.user_id)
            ).all()
            assert remaining == [other_project]
            assert session.get(User, member.user_id).current_organization_id is None
        # Their token no longer reaches the organisation.
        assert client.get(f"/api/v1/organizations/{org_id}", headers=member.headers).status_code == 404
        [row] = audit_rows(resource_type="members", resource_id=member.user_id)
        assert row.outcome == "success"
        assert row.organization_id == org_id

    def test_current_organization_elsewhere_is_kept(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        home = factory.organization()
        member = factory.user(home, "viewer")
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        with app.state.database.session() as session:
            session.add(Membership(organization_id=org_id, user_id=member.user_id, role="viewer"))
        assert client.delete(users_url(org_id, member.user_id), headers=admin.headers).status_code == 204
        with app.state.database.session(write=False) as session:
            assert session.get(User, member.user_id).current_organization_id == home

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_a_member_may_leave(self, client: TestClient, factory: Factory, role: str) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        assert client.delete(users_url(org_id, member.user_id), headers=member.headers).status_code == 204
        assert member.user_id not in member_roles(client, org_id, admin)

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_non_admin_cannot_remove_others(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]], role: str
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        other = factory.user(org_id, "viewer")
        assert client.delete(users_url(org_id, other.user_id), headers=member.headers).status_code == 403
        assert client.delete(users_url(org_id, admin.user_id), headers=member.headers).status_code == 403
        assert set(member_roles(client, org_id, admin)) == {admin.user_id, member.user_id, other.user_id}
        assert len(audit_rows(actor_id=member.user_id, outcome="denied")) == 2

    def test_last_admin_can_neither_be_removed_nor_leave(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        factory.user(org_id, "developer")
        response = client.delete(users_url(org_id, admin.user_id), headers=admin.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "CONFLICT"
        assert "at least one admin" in response.json()["error"]["message"]
        assert member_roles(client, org_id, admin)[admin.user_id] == "admin"

    def test_an_admin_may_remove_another_admin_but_not_the_last(
        self, client: TestClient, factory: Factory
    ) -> None:
        org_id = factory.organization()
        first = factory.user(org_id, "admin")
        second = factory.user(org_id, "admin")
        assert client.delete(users_url(org_id, second.user_id), headers=first.headers).status_code == 204
        assert client.delete(users_url(org_id, first.user_id), headers=first.headers).status_code == 409

    def test_api_key_cannot_remove_members(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        viewer = factory.user(org_id, "viewer")
        key = factory.api_key(org_id, {"organizations": ["read", "write", "delete"]})
        assert client.delete(users_url(org_id, viewer.user_id), headers={"X-API-Key": key}).status_code == 403

    def test_other_organization_is_not_found(self, client: TestClient, factory: Factory) -> None:
        mine = factory.organization()
        admin = factory.user(mine, "admin")
        member = factory.user(mine, "viewer")
        other = factory.organization()
        outsider = factory.user(other, "admin")
        assert client.delete(users_url(mine, member.user_id), headers=outsider.headers).status_code == 404
        assert client.delete(users_url(mine, outsider.user_id), headers=admin.headers).status_code == 404
        # "Leaving" an organisation one is not in reveals nothing either.
        assert client.delete(users_url(other, admin.user_id), headers=admin.headers).status_code == 404
        assert set(member_roles(client, mine, admin)) == {admin.user_id, member.user_id}

    def test_malformed_ids_are_rejected(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        assert client.delete(users_url(org_id, "u" * 65), headers=admin.headers).status_code == 422
        response = client.delete(users_url(org_id, "user_'; DELETE FROM users;--"), headers=admin.headers)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "user_id"

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        viewer = factory.user(org_id, "viewer")
        assert client.delete(users_url(org_id, viewer.user_id)).status_code == 401
