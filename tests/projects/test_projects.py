from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from maestro.db import utcnow
from maestro.identity.models import AuditLog
from maestro.identity.rbac import Principal, Target, can
from maestro.organizations.models import Role
from maestro.projects.models import Project, ProjectMember
from tests.factories import Factory, api_key_headers
from tests.projects.conftest import ProjectsWorld

PROJECT_FIELDS = {
    "id",
    "name",
    "description",
    "slug",
    "visibility",
    "model_count",
    "experiment_count",
    "deployment_count",
    "created_by",
    "created_at",
    "updated_at",
}


MALFORMED_CREATE = [
    {"name": "x", "visibility": "secret"},
    {"name": "x" * 10_000},
    {"name": ""},
    {"name": "   "},
    {},
    {"name": "x", "description": "d" * 2001},
    {"name": "x", "organization_id": "org_other"},
    {"name": "x", "created_by": "user_someone"},
    {"name": "x", "slug": "chosen"},
    {"name": "x", "model_count": 99},
    {"name": ["x"]},
    {"name": "nul\x00byte"},
    {"name": "line\nbreak"},
    {"name": "x", "description": "nul\x00byte"},
]
MALFORMED_UPDATE = [
    {"name": None},
    {"name": ""},
    {"name": "x" * 10_000},
    {"visibility": "secret"},
    {"visibility": None},
    {"organization_id": "org_other"},
    {"created_by": "user_x"},
    {"slug": "hijack"},
]


def create(client: TestClient, org: str, headers: dict[str, str], **body: object):
    body.setdefault("name", "Fraud Detection")
    return client.post(f"/api/v1/organizations/{org}/projects", json=body, headers=headers)


def listed(client: TestClient, org: str, headers: dict[str, str], **params: object) -> list[dict]:
    response = client.get(f"/api/v1/organizations/{org}/projects", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def names(items: list[dict]) -> set[str]:
    return {item["name"] for item in items}


def audit_rows(factory: Factory, resource_id: str) -> list[AuditLog]:
    with factory.database.session(write=False) as session:
        return list(
            session.scalars(
                select(AuditLog)
                .where(AuditLog.resource_id == resource_id, AuditLog.outcome == "success")
                .order_by(AuditLog.created_at, AuditLog.id)
            )
        )


# --- who can read which project ----------------------------------------------------------
def callers(factory: Factory, world: ProjectsWorld) -> dict[str, dict[str, str]]:
    return {
        "org admin": world.admin.headers,
        "org developer": world.developer.headers,
        "org viewer": world.viewer.headers,
        "project viewer member": world.member.headers,
        "user of another org": world.outsider.headers,
        "api key projects:read": api_key_headers(factory.api_key(world.org, {"projects": ["read"]})),
        "api key without projects": api_key_headers(factory.api_key(world.org, {"models": ["read"]})),
        "api key of another org": api_key_headers(factory.api_key(world.other_org, {"projects": ["read"]})),
        "anonymous": {},
    }


#                          private organization public
VISIBILITY_MATRIX = {
    "org admin": (200, 200, 200),
    "org developer": (404, 200, 200),
    "org viewer": (404, 200, 200),
    "project viewer member": (200, 200, 200),
    "user of another org": (404, 404, 200),
    "api key projects:read": (200, 200, 200),
    "api key without projects": (403, 403, 403),
    "api key of another org": (404, 404, 404),
    "anonymous": (401, 401, 401),
}


class TestVisibilityMatrix:
    def test_reading_a_project(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        wrong = []
        for caller, headers in callers(factory, world).items():
            for visibility, expected in zip(
                ("private", "organization", "public"), VISIBILITY_MATRIX[caller], strict=True
            ):
                response = client.get(f"/api/v1/projects/{world.projects[visibility]}", headers=headers)
                if response.status_code != expected:
                    wrong.append(f"{caller} / {visibility}: {response.status_code}, expected {expected}")
                if expected == 404:
                    assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert not wrong, "\n".join(wrong)

    def test_the_list_shows_exactly_the_readable_projects(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        wrong = []
        for caller, headers in callers(factory, world).items():
            readable = {
                world.projects[visibility]
                for visibility, status in zip(
                    ("private", "organization", "public"), VISIBILITY_MATRIX[caller], strict=True
                )
                if status == 200
            }
            response = client.get(f"/api/v1/organizations/{world.org}/projects", headers=headers)
            if not readable:
                expected = next(iter(set(VISIBILITY_MATRIX[caller])))
                if response.status_code != expected:
                    wrong.append(f"{caller}: list answered {response.status_code}, expected {expected}")
                continue
            if response.status_code != 200:
                wrong.append(f"{caller}: list answered {response.status_code}")
                continue
            shown = {item["id"] for item in response.json()["data"]}
            if shown != readable:
                wrong.append(f"{caller}: list shows {sorted(shown)}, can read {sorted(readable)}")
        assert not wrong, "\n".join(wrong)


class TestProjectRoles:
    """A project role narrows or widens the organisation role inside the project."""

    def principal(self, actor, org: str, role: Role) -> Principal:
        return Principal(
            kind="user", id=actor.user_id, user_id=actor.user_id, organization_id=org, org_role=role
        )

    def test_org_viewer_who_is_project_developer_writes_inside_but_cannot_administer(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        factory.add_project_member(world.organization, world.viewer, "developer")
        with factory.database.session(write=False) as session:
            project = session.get(Project, world.organization)
            principal = self.principal(world.viewer, world.org, Role.viewer)
            assert can(session, principal, "write", Target("models", world.org, project))
            assert not can(session, principal, "write", Target("models", world.org, None))
        response = client.put(
            f"/api/v1/projects/{world.organization}", json={"name": "Renamed"}, headers=world.viewer.headers
        )
        assert response.status_code == 403

    def test_org_developer_who_is_project_viewer_cannot_write_inside(
        self, factory: Factory, world: ProjectsWorld
    ) -> None:
        with factory.database.session(write=False) as session:
            project = session.get(Project, world.organization)
            principal = self.principal(world.member, world.org, Role.developer)
            assert can(session, principal, "read", Target("models", world.org, project))
            assert not can(session, principal, "write", Target("models", world.org, project))
            # Without the narrowing membership, the organisation role applies.
            other = self.principal(world.developer, world.org, Role.developer)
            assert can(session, other, "write", Target("models", world.org, project))

    def test_org_viewer_who_is_project_admin_administers_the_project(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        factory.add_project_member(world.private, world.viewer, "admin")
        response = client.put(
            f"/api/v1/projects/{world.private}",
            json={"description": "mine now"},
            headers=world.viewer.headers,
        )
        assert response.status_code == 200
        assert response.json()["data"]["description"] == "mine now"


# --- endpoints ---------------------------------------------------------------------------
class TestCreateProject:
    def test_developer_creates_and_becomes_project_admin(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        response = create(
            client, world.org, world.developer.headers, name="Fraud Detection", description="Card fraud"
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == PROJECT_FIELDS
        assert data["name"] == "Fraud Detection"
        assert data["slug"] == "fraud-detection"
        assert data["description"] == "Card fraud"
        assert data["visibility"] == "private"
        assert (data["model_count"], data["experiment_count"], data["deployment_count"]) == (0, 0, 0)
        assert data["created_by"]["id"] == world.developer.user_id
        assert data["created_by"]["name"].startswith("User ")
        assert data["id"].startswith("proj_")
        assert data["created_at"].endswith("Z")
        with factory.database.session(write=False) as session:
            role = session.scalar(
                select(ProjectMember.role).where(
                    ProjectMember.project_id == data["id"], ProjectMember.user_id == world.developer.user_id
                )
            )
            assert role == "admin"
        # The creator administers it, and it is private: other developers do not see it.
        assert (
            client.get(f"/api/v1/projects/{data['id']}", headers=world.developer.headers).status_code == 200
        )
        assert client.get(f"/api/v1/projects/{data['id']}", headers=world.member.headers).status_code == 404
        rows = audit_rows(factory, data["id"])
        assert [(r.action, r.outcome, r.resource_type, r.organization_id) for r in rows] == [
            ("projects:create_project", "success", "projects", world.org)
        ]

    def test_api_key_with_projects_write_creates_without_a_creator(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        key = factory.api_key(world.org, {"projects": ["read", "write"]})
        response = create(client, world.org, api_key_headers(key), visibility="organization")
        assert response.status_code == 201, response.text
        assert response.json()["data"]["created_by"] is None
        assert response.json()["data"]["visibility"] == "organization"

    def test_viewer_may_not_create(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        response = create(client, world.org, world.viewer.headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        read_only = factory.api_key(world.org, {"projects": ["read"]})
        assert create(client, world.org, api_key_headers(read_only)).status_code == 403
        with factory.database.session(write=False) as session:
            denied = session.scalars(select(AuditLog).where(AuditLog.outcome == "denied")).all()
            assert {row.actor_id for row in denied} >= {world.viewer.user_id}

    def test_another_organization_answers_404(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        assert create(client, world.other_org, world.admin.headers).status_code == 404
        key = factory.api_key(world.org, {"projects": ["write"]})
        assert create(client, world.other_org, api_key_headers(key)).status_code == 404
        assert create(client, "org_doesnotexist", world.admin.headers).status_code == 404

    def test_duplicate_name_in_the_organization_is_a_conflict(
        self, client: TestClient, world: ProjectsWorld
    ) -> None:
        assert create(client, world.org, world.admin.headers, name="Fraud Detection").status_code == 201
        for clash in ("Fraud Detection", "fraud detection", "  Fraud-Detection! "):
            response = create(client, world.org, world.developer.headers, name=clash)
            assert response.status_code == 409, clash
            assert response.json()["error"]["code"] == "CONFLICT"
        # The same name in another organisation is fine.
        assert (
            create(client, world.other_org, world.outsider.headers, name="Fraud Detection").status_code == 201
        )

    def test_names_without_letters_still_get_a_slug(self, client: TestClient, world: ProjectsWorld) -> None:
        first = create(client, world.org, world.admin.headers, name="!!!")
        second = create(client, world.org, world.admin.headers, name="???")
        assert first.status_code == second.status_code == 201
        assert first.json()["data"]["slug"] != second.json()["data"]["slug"]

    def test_malformed_input_is_rejected(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        for body in MALFORMED_CREATE:
            response = client.post(
                f"/api/v1/organizations/{world.org}/projects", json=body, headers=world.admin.headers
            )
            assert response.status_code == 422, body
            assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        with factory.database.session(write=False) as session:
            assert session.scalar(select(Project.id).where(Project.name == "x")) is None

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert create(client, world.org, {}).status_code == 401


class TestListProjects:
    def test_items_have_the_spec_shape_newest_first(self, client: TestClient, world: ProjectsWorld) -> None:
        items = listed(client, world.org, world.admin.headers)
        # Created in this order: "organization", "private", "public".
        assert [item["id"] for item in items] == [world.public, world.private, world.organization]
        for item in items:
            assert set(item) == PROJECT_FIELDS
            assert item["created_by"]["id"] == world.admin.user_id

    def test_filter_by_visibility(self, client: TestClient, world: ProjectsWorld) -> None:
        for visibility in ("private", "organization", "public"):
            items = listed(client, world.org, world.admin.headers, visibility=visibility)
            assert [item["id"] for item in items] == [world.projects[visibility]]
        # A filter never widens what the caller may see.
        assert listed(client, world.org, world.developer.headers, visibility="private") == []

    def test_unknown_visibility_is_rejected(self, client: TestClient, world: ProjectsWorld) -> None:
        response = client.get(
            f"/api/v1/organizations/{world.org}/projects",
            params={"visibility": "secret"},
            headers=world.admin.headers,
        )
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "visibility"

    def test_search_name_and_description_case_insensitively(
        self, client: TestClient, world: ProjectsWorld
    ) -> None:
        create(
            client, world.org, world.admin.headers, name="Churn Model", description="Predicts CUSTOMER churn"
        )
        create(
            client, world.org, world.admin.headers, name="Customer Lifetime Value", visibility="organization"
        )
        assert names(listed(client, world.org, world.admin.headers, search="customer")) == {
            "Churn Model",
            "Customer Lifetime Value",
        }
        assert names(listed(client, world.org, world.admin.headers, search="CHURN")) == {"Churn Model"}
        assert names(listed(client, world.org, world.developer.headers, search="customer")) == {
            "Customer Lifetime Value"
        }

    def test_like_wildcards_match_literally(self, client: TestClient, world: ProjectsWorld) -> None:
        for name in ("100% accurate", "1000 accurate", "snake_case", "snakeXcase", "back\\slash"):
            assert create(client, world.org, world.admin.headers, name=name).status_code == 201
        assert names(listed(client, world.org, world.admin.headers, search="%")) == {"100% accurate"}
        assert names(listed(client, world.org, world.admin.headers, search="0% a")) == {"100% accurate"}
        assert names(listed(client, world.org, world.admin.headers, search="_")) == {"snake_case"}
        assert names(listed(client, world.org, world.admin.headers, search="e_c")) == {"snake_case"}
        assert names(listed(client, world.org, world.admin.headers, search="\\")) == {"back\\slash"}

    def test_sql_in_search_is_just_text(self, client: TestClient, world: ProjectsWorld) -> None:
        for attack in ("' OR 1=1 --", '" OR ""="', "'; DROP TABLE projects; --"):
            assert listed(client, world.org, world.developer.headers, search=attack) == []
        assert len(listed(client, world.org, world.admin.headers)) == 3
        assert create(client, world.org, world.admin.headers, name="' OR 1=1 --").status_code == 201
        assert names(listed(client, world.org, world.admin.headers, search="' OR 1=1 --")) == {"' OR 1=1 --"}

    def test_pagination_walks_every_project_once(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        for number in range(4):
            factory.project(world.org, world.admin, "organization", name=f"Extra {number}")
        # Several projects share a creation time: the id breaks the tie.
        with factory.database.session() as session:
            session.execute(
                update(Project).where(Project.organization_id == world.org).values(created_at=utcnow())
            )
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, object] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = client.get(
                f"/api/v1/organizations/{world.org}/projects", params=params, headers=world.admin.headers
            ).json()
            assert body["pagination"]["total"] == 7
            seen += [item["id"] for item in body["data"]]
            pages += 1
            cursor = body["pagination"]["next_cursor"]
            if not body["pagination"]["has_next"]:
                break
        assert pages == 4
        assert len(seen) == len(set(seen)) == 7
        second = client.get(
            f"/api/v1/organizations/{world.org}/projects",
            params={"limit": 2, "page": 2},
            headers=world.admin.headers,
        ).json()
        assert [item["id"] for item in second["data"]] == seen[2:4]
        assert second["pagination"]["has_prev"] is True

    def test_malformed_paging_and_filters(self, client: TestClient, world: ProjectsWorld) -> None:
        for params in (
            {"limit": 0},
            {"limit": 101},
            {"cursor": "nonsense"},
            {"search": "x" * 201},
            {"search": "a\x00b"},
        ):
            response = client.get(
                f"/api/v1/organizations/{world.org}/projects", params=params, headers=world.admin.headers
            )
            assert response.status_code == 422, params

    def test_other_organization_shows_only_public_projects(
        self, client: TestClient, world: ProjectsWorld
    ) -> None:
        items = listed(client, world.other_org, world.admin.headers)
        assert [item["id"] for item in items] == [world.other_public]

    def test_api_key_of_another_organization_and_unknown_organization(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        key = factory.api_key(world.org, {"projects": ["read"]})
        assert (
            client.get(
                f"/api/v1/organizations/{world.other_org}/projects", headers=api_key_headers(key)
            ).status_code
            == 404
        )
        assert (
            client.get("/api/v1/organizations/org_nope/projects", headers=world.admin.headers).status_code
            == 404
        )

    def test_api_key_without_projects_read_is_refused(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        key = factory.api_key(world.org, {"models": ["read"]})
        assert (
            client.get(
                f"/api/v1/organizations/{world.org}/projects", headers=api_key_headers(key)
            ).status_code
            == 403
        )

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.get(f"/api/v1/organizations/{world.org}/projects").status_code == 401


class TestGetProject:
    def test_details(self, client: TestClient, world: ProjectsWorld) -> None:
        response = client.get(f"/api/v1/projects/{world.organization}", headers=world.viewer.headers)
        assert response.status_code == 200
        data = response.json()["data"]
        assert set(data) == PROJECT_FIELDS
        assert (data["id"], data["name"], data["visibility"]) == (
            world.organization,
            "Fraud",
            "organization",
        )

    def test_unknown_and_foreign_ids(self, client: TestClient, world: ProjectsWorld) -> None:
        assert (
            client.get("/api/v1/projects/proj_doesnotexist", headers=world.admin.headers).status_code == 404
        )
        assert (
            client.get(f"/api/v1/projects/{world.other_private}", headers=world.admin.headers).status_code
            == 404
        )

    def test_malformed_id(self, client: TestClient, world: ProjectsWorld) -> None:
        for project_id in ("p" * 65, "proj%00x", "..%5C..%5Cetc", "proj%20x"):
            response = client.get(f"/api/v1/projects/{project_id}", headers=world.admin.headers)
            assert response.status_code == 422, project_id

    def test_path_tricks_match_no_project(self, client: TestClient, world: ProjectsWorld) -> None:
        for path in ("..%2F..%2Fetc%2Fpasswd", "%252e%252e%252f"):
            assert client.get(f"/api/v1/projects/{path}", headers=world.admin.headers).status_code == 404

    def test_role_without_read(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        key = factory.api_key(world.org, {"models": ["read"]})
        assert client.get(f"/api/v1/projects/{world.public}", headers=api_key_headers(key)).status_code == 403

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.get(f"/api/v1/projects/{world.public}").status_code == 401


class TestUpdateProject:
    def test_project_admin_updates(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        created = create(client, world.org, world.developer.headers, name="Old Name").json()["data"]
        response = client.put(
            f"/api/v1/projects/{created['id']}",
            json={"name": "New Name", "description": "now described", "visibility": "organization"},
            headers=world.developer.headers,
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert (data["name"], data["slug"], data["description"], data["visibility"]) == (
            "New Name",
            "new-name",
            "now described",
            "organization",
        )
        assert data["updated_at"] >= created["updated_at"]
        # Only what is sent changes; null clears the description.
        data = client.put(
            f"/api/v1/projects/{created['id']}",
            json={"description": "two\nlines"},
            headers=world.developer.headers,
        ).json()["data"]
        assert data["description"] == "two\nlines"
        data = client.put(
            f"/api/v1/projects/{created['id']}", json={"description": None}, headers=world.developer.headers
        ).json()["data"]
        assert (data["name"], data["description"], data["visibility"]) == ("New Name", None, "organization")
        assert audit_rows(factory, created["id"])[-1].action == "projects:update_project"

    def test_org_admin_updates_any_project(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        project = factory.project(world.org, world.developer, "private")
        response = client.put(
            f"/api/v1/projects/{project}", json={"visibility": "public"}, headers=world.admin.headers
        )
        assert response.status_code == 200
        assert response.json()["data"]["visibility"] == "public"

    def test_without_project_admin_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        factory.add_project_member(world.organization, world.developer, "developer")
        for headers in (world.developer.headers, world.viewer.headers, world.member.headers):
            response = client.put(
                f"/api/v1/projects/{world.organization}", json={"name": "Mine"}, headers=headers
            )
            assert response.status_code == 403
        key = factory.api_key(world.org, {"projects": ["read"]})
        response = client.put(
            f"/api/v1/projects/{world.organization}", json={"name": "Mine"}, headers=api_key_headers(key)
        )
        assert response.status_code == 403

    def test_invisible_or_foreign_project(self, client: TestClient, world: ProjectsWorld) -> None:
        body = {"name": "Mine"}
        assert (
            client.put(
                f"/api/v1/projects/{world.private}", json=body, headers=world.developer.headers
            ).status_code
            == 404
        )
        assert (
            client.put(
                f"/api/v1/projects/{world.other_public}", json=body, headers=world.admin.headers
            ).status_code
            == 403
        )
        assert (
            client.put(
                f"/api/v1/projects/{world.other_private}", json=body, headers=world.admin.headers
            ).status_code
            == 404
        )
        assert (
            client.put("/api/v1/projects/proj_nope", json=body, headers=world.admin.headers).status_code
            == 404
        )

    def test_renaming_onto_another_project_is_a_conflict(
        self, client: TestClient, world: ProjectsWorld
    ) -> None:
        response = client.put(
            f"/api/v1/projects/{world.public}", json={"name": "sECRET"}, headers=world.admin.headers
        )
        assert response.status_code == 409
        # Renaming a project to its own name is no conflict.
        response = client.put(
            f"/api/v1/projects/{world.public}", json={"name": "Public project"}, headers=world.admin.headers
        )
        assert response.status_code == 200

    def test_malformed_input(self, client: TestClient, world: ProjectsWorld) -> None:
        url = f"/api/v1/projects/{world.public}"
        before = client.get(url, headers=world.admin.headers).json()["data"]
        for body in MALFORMED_UPDATE:
            response = client.put(url, json=body, headers=world.admin.headers)
            assert response.status_code == 422, body
            assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert client.get(url, headers=world.admin.headers).json()["data"] == before

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.put(f"/api/v1/projects/{world.public}", json={"name": "x"}).status_code == 401


class TestDeleteProject:
    def test_project_admin_deletes(self, client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
        project = create(client, world.org, world.developer.headers, name="Short lived").json()["data"]["id"]
        response = client.delete(f"/api/v1/projects/{project}", headers=world.developer.headers)
        assert response.status_code == 204
        assert response.content == b""
        assert client.get(f"/api/v1/projects/{project}", headers=world.admin.headers).status_code == 404
        with factory.database.session(write=False) as session:
            assert (
                session.scalars(select(ProjectMember).where(ProjectMember.project_id == project)).all() == []
            )
        assert audit_rows(factory, project)[-1].action == "projects:delete_project"

    def test_org_admin_and_api_key_with_delete(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        assert (
            client.delete(f"/api/v1/projects/{world.private}", headers=world.admin.headers).status_code == 204
        )
        key = factory.api_key(world.org, {"projects": ["read", "delete"]})
        assert (
            client.delete(f"/api/v1/projects/{world.public}", headers=api_key_headers(key)).status_code == 204
        )

    def test_without_project_admin_role(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        for headers in (world.developer.headers, world.viewer.headers, world.member.headers):
            assert client.delete(f"/api/v1/projects/{world.organization}", headers=headers).status_code == 403
        key = factory.api_key(world.org, {"projects": ["read", "write"]})
        assert (
            client.delete(f"/api/v1/projects/{world.organization}", headers=api_key_headers(key)).status_code
            == 403
        )
        assert (
            client.get(f"/api/v1/projects/{world.organization}", headers=world.admin.headers).status_code
            == 200
        )

    def test_invisible_or_foreign_project(
        self, client: TestClient, factory: Factory, world: ProjectsWorld
    ) -> None:
        assert (
            client.delete(f"/api/v1/projects/{world.private}", headers=world.developer.headers).status_code
            == 404
        )
        assert (
            client.delete(f"/api/v1/projects/{world.other_private}", headers=world.admin.headers).status_code
            == 404
        )
        key = factory.api_key(world.org, {"projects": ["delete"]})
        assert (
            client.delete(f"/api/v1/projects/{world.other_public}", headers=api_key_headers(key)).status_code
            == 404
        )

    def test_malformed_id(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.delete(f"/api/v1/projects/{'p' * 65}", headers=world.admin.headers).status_code == 422

    def test_anonymous(self, client: TestClient, world: ProjectsWorld) -> None:
        assert client.delete(f"/api/v1/projects/{world.public}").status_code == 401


def test_timestamps_are_utc(client: TestClient, factory: Factory, world: ProjectsWorld) -> None:
    with factory.database.session() as session:
        session.execute(
            update(Project).where(Project.id == world.public).values(updated_at=utcnow() + timedelta(hours=1))
        )
    data = client.get(f"/api/v1/projects/{world.public}", headers=world.admin.headers).json()["data"]
    assert data["created_at"].endswith("Z") and data["updated_at"].endswith("Z")
    assert data["updated_at"] > data["created_at"]
