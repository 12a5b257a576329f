from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.identity.models import AuditLog
from maestro.projects.models import ProjectMember
from tests.factories import Factory, api_key_headers
from tests.projects.conftest import ProjectsWorld

MEMBER_FIELDS = {"user_id", "email", "first_name", "last_name", "role", "added_at"}


def members_url(project_id: str, user_id: str | None = None) -> str:
    url = f"/api/v1/projects/{project_id}/members"
    return f"{url}/{user_id}" if user_id else url


def member_roles(client: TestClient, world: ProjectsWorld, project_id: str) -> dict[str, str]:
    response = client.get(members_url(project_id), params={"limit": 100}, headers=world.admin.headers)
    assert response.status_code == 200, response.text
    return {item["user_id"]: item["role"] for item in response.json()["data"]}


def last_audit(factory: Factory) -> AuditLog:
    with factory.database.session(write=False) as session:
        return session.scalars(
            select(AuditLog)
            .where(AuditLog.outcome == "success")
            .order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
        ).first()


class TestListProjectMembers:
    def test_members_with_their_project_roles(self, client: TestClient, world: ProjectsWorld) -> None:
        response = client.get(members_url(world.organization), headers=world.viewer.headers)
        assert response.status_code == 200
        body = response.json()
        assert body["pagination"]["total"] == 2
        by_user = {item["user_id"]: item for item in body["data"]}
        assert set(by_user) == {world.admin.user_id, world.member.user_id}
        member = by_user[world.member.user_id]
        assert set(member) == MEMBER_FIELDS
        assert (member["email"], member["first_name"], member["role"]) == (
            world.member.email,
            "User",
            "viewer",
        )
        assert member["added_at"].endswith("Z")
        # In the order they were added.
        assert [item["user_id"] for item in body["data"]] == [world.admin.user_id, world.member.user_id]

    def test_pagination(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        for _ in range(3):
            factory.add_project_member(world.public, factory.user(world.org, "viewer"), "developer")
        first = client.get(members_url(world.public), params={"limit": 3}, headers=world.admin.headers).json()
        assert first["pagination"]["total"] == 5
        assert first["pagination"]["has_next"] is True
        second = client.get(
            members_url(world.public),
            params={"limit": 3, "cursor": first["pagination"]["next_cursor"]},
            headers=world.admin.headers,
        ).json()
        ids = [item["user_id"] for item in first["data"] + second["data"]]
        assert len(ids) == len(set(ids)) == 5
        assert second["pagination"]["has_next"] is False

    def test_invisible_and_foreign_projects(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.get(members_url(world.private), headers=world.developer.headers).status_code == 404
        assert client.get(members_url(world.other_private), headers=world.admin.headers).status_code == 404
        assert client.get(members_url("proj_nope"), headers=world.admin.headers).status_code == 404

    def test_api_keys(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        reader = api_key_headers(factory.api_key(world.org, {"projects": ["read"]}))
        assert client.get(members_url(world.private), headers=reader).status_code == 200
        other = api_key_headers(factory.api_key(world.org, {"models": ["read"]}))
        assert client.get(members_url(world.private), headers=other).status_code == 403

    def test_malformed_paging(self, client: TestClient, world: ProjectsWorld) -> None:
        response = client.get(members_url(world.public), params={"limit": 1000}, headers=world.admin.headers)
        assert response.status_code == 422

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.get(members_url(world.public)).status_code == 401


class TestAddProjectMember:
    def test_project_admin_adds_an_organization_member(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        response = client.post(
            members_url(world.private),
            json={"user_id": world.viewer.user_id, "role": "developer"},
            headers=world.admin.headers,
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == MEMBER_FIELDS
        assert (data["user_id"], data["email"], data["role"]) == (
            world.viewer.user_id,
            world.viewer.email,
            "developer",
        )
        assert member_roles(client, world, world.private)[world.viewer.user_id] == "developer"
        # The private project is now visible to them.
        assert (
            client.get(f"/api/v1/projects/{world.private}", headers=world.viewer.headers).status_code == 200
        )
        row = last_audit(factory)
        assert (row.action, row.resource_type, row.resource_id, row.organization_id) == (
            "projects:add_project_member",
            "project_members",
            world.private,
            world.org,
        )
        assert row.details["user_id"] == world.viewer.user_id

    def test_project_admin_who_is_org_developer(self, client: TestClient, world: ProjectsWorld) -> None:
        project = client.post(
            f"/api/v1/organizations/{world.org}/projects",
            json={"name": "Team"},
            headers=world.developer.headers,
        ).json()["data"]["id"]
        response = client.post(
            members_url(project),
            json={"user_id": world.viewer.user_id, "role": "viewer"},
            headers=world.developer.headers,
        )
        assert response.status_code == 201

    def test_already_a_member_is_a_conflict(self, client: TestClient, world: ProjectsWorld) -> None:
        response = client.post(
            members_url(world.private),
            json={"user_id": world.member.user_id, "role": "admin"},
            headers=world.admin.headers,
        )
        assert response.status_code == 409
        assert member_roles(client, world, world.private)[world.member.user_id] == "viewer"

    def test_users_outside_the_organization_are_not_found(
        self, client: TestClient, world: ProjectsWorld
    ) -> None:
        for user_id in (world.outsider.user_id, "user_doesnotexist"):
            response = client.post(
                members_url(world.public),
                json={"user_id": user_id, "role": "viewer"},
                headers=world.admin.headers,
            )
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert world.outsider.user_id not in member_roles(client, world, world.public)

    def test_without_project_admin_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        body = {"user_id": world.viewer.user_id, "role": "admin"}
        for headers in (world.developer.headers, world.member.headers, world.viewer.headers):
            assert client.post(members_url(world.organization), json=body, headers=headers).status_code == 403
        # A key can never change who has access, whatever it is granted.
        key = factory.api_key(world.org, {"projects": ["read", "write", "delete"], "members": ["write"]})
        assert (
            client.post(members_url(world.organization), json=body, headers=api_key_headers(key)).status_code
            == 403
        )
        assert world.viewer.user_id not in member_roles(client, world, world.organization)

    def test_invisible_and_foreign_projects(self, client: TestClient, world: ProjectsWorld) -> None:
        body = {"user_id": world.developer.user_id, "role": "admin"}
        # A developer may not grant themselves a private project they cannot see.
        assert (
            client.post(members_url(world.private), json=body, headers=world.developer.headers).status_code
            == 404
        )
        assert (
            client.post(
                members_url(world.other_private),
                json={"user_id": world.admin.user_id, "role": "admin"},
                headers=world.admin.headers,
            ).status_code
            == 404
        )

    def test_malformed_input(self, client: TestClient, world: ProjectsWorld) -> None:
        for body in (
            {"user_id": "x", "role": "owner"},
            {"role": "viewer"},
            {"user_id": "x"},
            {"user_id": "u" * 41, "role": "viewer"},
            {"user_id": "x", "role": "viewer", "project_id": "proj_other"},
            {"user_id": "user_\x00", "role": "viewer"},
        ):
            response = client.post(members_url(world.public), json=body, headers=world.admin.headers)
            assert response.status_code == 422, body

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        body = {"user_id": world.viewer.user_id, "role": "viewer"}
        assert client.post(members_url(world.public), json=body).status_code == 401


class TestUpdateProjectMember:
    def test_project_admin_changes_a_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        response = client.put(
            members_url(world.private, world.member.user_id),
            json={"role": "admin"},
            headers=world.admin.headers,
        )
        assert response.status_code == 200
        assert response.json()["data"]["role"] == "admin"
        # Now a project admin, the member may administer the project.
        response = client.put(
            f"/api/v1/projects/{world.private}", json={"description": "theirs"}, headers=world.member.headers
        )
        assert response.status_code == 200
        row = last_audit(factory)
        assert row.action == "projects:update_project"
        with factory.database.session(write=False) as session:
            change = session.scalar(
                select(AuditLog).where(AuditLog.action == "projects:update_project_member")
            )
            assert change.details == {
                "user_id": world.member.user_id,
                "role": "admin",
                "previous_role": "viewer",
            }

    def test_not_a_member(self, client: TestClient, world: ProjectsWorld) -> None:
        for user_id in (world.developer.user_id, world.outsider.user_id, "user_nope"):
            response = client.put(
                members_url(world.private, user_id), json={"role": "admin"}, headers=world.admin.headers
            )
            assert response.status_code == 404

    def test_without_project_admin_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        url = members_url(world.organization, world.member.user_id)
        for headers in (world.developer.headers, world.member.headers, world.viewer.headers):
            assert client.put(url, json={"role": "admin"}, headers=headers).status_code == 403
        key = factory.api_key(world.org, {"projects": ["write"]})
        assert client.put(url, json={"role": "admin"}, headers=api_key_headers(key)).status_code == 403
        assert member_roles(client, world, world.organization)[world.member.user_id] == "viewer"

    def test_invisible_and_foreign_projects(self, client: TestClient, world: ProjectsWorld) -> None:
        assert (
            client.put(
                members_url(world.private, world.member.user_id),
                json={"role": "admin"},
                headers=world.developer.headers,
            ).status_code
            == 404
        )
        assert (
            client.put(
                members_url(world.other_private, world.outsider.user_id),
                json={"role": "viewer"},
                headers=world.admin.headers,
            ).status_code
            == 404
        )

    def test_malformed_input(self, client: TestClient, world: ProjectsWorld) -> None:
        url = members_url(world.private, world.member.user_id)
        for body in ({"role": "owner"}, {}, {"role": "admin", "user_id": "user_x"}, {"role": None}):
            assert client.put(url, json=body, headers=world.admin.headers).status_code == 422, body

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert (
            client.put(members_url(world.private, world.member.user_id), json={"role": "admin"}).status_code
            == 401
        )


class TestRemoveProjectMember:
    def test_project_admin_removes_a_member(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        response = client.delete(
            members_url(world.private, world.member.user_id), headers=world.admin.headers
        )
        assert response.status_code == 204
        assert response.content == b""
        assert world.member.user_id not in member_roles(client, world, world.private)
        # The private project is invisible to them again.
        assert (
            client.get(f"/api/v1/projects/{world.private}", headers=world.member.headers).status_code == 404
        )
        row = last_audit(factory)
        assert (row.action, row.resource_id) == ("projects:remove_project_member", world.private)

    def test_not_a_member(self, client: TestClient, world: ProjectsWorld) -> None:
        for user_id in (world.developer.user_id, world.outsider.user_id):
            assert (
                client.delete(members_url(world.public, user_id), headers=world.admin.headers).status_code
                == 404
            )

    def test_without_project_admin_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        url = members_url(world.organization, world.admin.user_id)
        for headers in (world.developer.headers, world.member.headers, world.viewer.headers):
            assert client.delete(url, headers=headers).status_code == 403
        key = factory.api_key(world.org, {"projects": ["read", "write", "delete"]})
        assert client.delete(url, headers=api_key_headers(key)).status_code == 403
        with factory.database.session(write=False) as session:
            assert session.scalar(
                select(ProjectMember.id).where(
                    ProjectMember.project_id == world.organization,
                    ProjectMember.user_id == world.admin.user_id,
                )
            )

    def test_invisible_and_foreign_projects(self, client: TestClient, world: ProjectsWorld) -> None:
        assert (
            client.delete(
                members_url(world.private, world.member.user_id), headers=world.developer.headers
            ).status_code
            == 404
        )
        assert (
            client.delete(
                members_url(world.other_private, world.outsider.user_id), headers=world.admin.headers
            ).status_code
            == 404
        )

    def test_malformed_id(self, client: TestClient, world: ProjectsWorld) -> None:
        assert (
            client.delete(members_url(world.public, "u" * 65), headers=world.admin.headers).status_code == 422
        )

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.delete(members_url(world.public, world.member.user_id)).status_code == 401
