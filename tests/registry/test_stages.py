from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.identity.models import AuditLog
from maestro.registry.models import ModelVersion, StageTransition
from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import new_model, new_version, outbox


def stage_url(model_id: str, version: str) -> str:
    return f"/api/v1/models/{model_id}/versions/{version}/stage"


def history(factory: Factory, version_id: str) -> list[tuple[str | None, str]]:
    with factory.database.session(write=False) as session:
        rows = session.scalars(
            select(StageTransition)
            .where(StageTransition.version_id == version_id)
            .order_by(StageTransition.created_at, StageTransition.id)
        )
        return [(row.from_stage, row.to_stage) for row in rows]


class TestLifecycle:
    def test_three_versions_promoted_and_archived(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        headers = world.developer.headers
        model = new_model(client, world.project, headers)
        v1, v2, v3 = (
            new_version(client, model["id"], headers, performance_metrics={"accuracy": 0.9 + i / 100})
            for i in range(3)
        )
        assert [v["version"] for v in (v1, v2, v3)] == ["1.0.0", "1.0.1", "1.0.2"]

        staged = client.put(stage_url(model["id"], "1.0.1"), json={"stage": "staging"}, headers=headers)
        assert staged.status_code == 200 and staged.json()["data"]["stage"] == "staging"
        promoted = client.put(
            stage_url(model["id"], "1.0.1"),
            json={"stage": "production", "description": "Passed the shadow test"},
            headers=headers,
        )
        assert promoted.json()["data"]["stage"] == "production"
        third = client.put(
            stage_url(model["id"], "1.0.2"),
            json={"stage": "production", "archive_existing_versions": True},
            headers=headers,
        )
        assert third.status_code == 200, third.text
        versions = client.get(f"/api/v1/models/{model['id']}/versions", headers=headers).json()["data"]
        assert {v["version"]: v["stage"] for v in versions} == {
            "1.0.0": "development",
            "1.0.1": "archived",
            "1.0.2": "production",
        }
        assert history(factory, v2["id"]) == [
            (None, "development"),
            ("development", "staging"),
            ("staging", "production"),
            ("production", "archived"),
        ]
        assert history(factory, v3["id"]) == [(None, "development"), ("development", "production")]
        assert history(factory, v1["id"]) == [(None, "development")]
        changed = [e.payload for e in outbox(factory) if e.type == "model.version.stage_changed"]
        assert [(e["version"], e["to_stage"], e["archived_versions"]) for e in changed] == [
            ("1.0.1", "staging", []),
            ("1.0.1", "production", []),
            ("1.0.2", "production", ["1.0.1"]),
        ]
        model_read = client.get(f"/api/v1/models/{model['id']}", headers=headers).json()["data"]
        assert model_read["version_count"] == 3
        assert model_read["latest_version"]["version"] == "1.0.2"

        # aliases beside stages
        champion = client.put(
            f"/api/v1/models/{model['id']}/aliases/champion", json={"version": "1.0.2"}, headers=headers
        )
        assert champion.status_code == 200
        assert champion.json()["data"]["version"]["id"] == v3["id"]
        client.put(
            f"/api/v1/models/{model['id']}/aliases/challenger", json={"version": "1.0.0"}, headers=headers
        )
        resolved = client.get(
            f"/api/v1/models/{model['id']}/aliases/challenger", headers=world.viewer.headers
        )
        assert resolved.json()["data"]["version"]["version"] == "1.0.0"
        with factory.database.session(write=False) as session:
            audited = session.scalars(
                select(AuditLog.resource_type).where(AuditLog.organization_id == world.org)
            ).all()
            assert audited.count("model_versions") >= 6

    def test_promotion_without_archiving_keeps_both(self, client: TestClient, world: World) -> None:
        headers = world.developer.headers
        model = new_model(client, world.project, headers)
        new_version(client, model["id"], headers, stage="production")
        new_version(client, model["id"], headers)
        client.put(stage_url(model["id"], "1.0.1"), json={"stage": "production"}, headers=headers)
        versions = client.get(f"/api/v1/models/{model['id']}/versions", headers=headers).json()["data"]
        assert [v["stage"] for v in versions] == ["production", "production"]


class TestChangeStage:
    def test_errors(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers)
        url = stage_url(model["id"], "1.0.0")
        assert client.put(url, json={"stage": "production"}, headers=world.viewer.headers).status_code == 403
        assert (
            client.put(url, json={"stage": "production"}, headers=world.outsider.headers).status_code == 404
        )
        assert client.put(url, json={"stage": "production"}).status_code == 401
        missing = stage_url(model["id"], "3.0.0")
        assert client.put(missing, json={"stage": "staging"}, headers=world.admin.headers).status_code == 404
        for body in (
            {"stage": "live"},
            {},
            {"stage": "staging", "trusted": True},
            {"stage": "staging", "description": 5},
        ):
            assert client.put(url, json=body, headers=world.admin.headers).status_code == 422
        key = factory.api_key(world.org, {"models": ["write"]})
        assert client.put(url, json={"stage": "staging"}, headers=api_key_headers(key)).status_code == 200
        with factory.database.session(write=False) as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model["id"]))
            assert row is not None and row.stage == "staging"


class TestTrust:
    def test_only_an_organisation_admin_trusts(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers)
        url = f"/api/v1/models/{model['id']}/versions/1.0.0/trusted"
        factory.add_project_member(world.project, world.developer, "admin")  # a project admin is not enough
        assert client.put(url, json={"trusted": True}, headers=world.developer.headers).status_code == 403
        assert client.put(url, json={"trusted": True}, headers=world.viewer.headers).status_code == 403
        key = factory.api_key(world.org, {"models": ["write", "read", "delete"]})
        assert client.put(url, json={"trusted": True}, headers=api_key_headers(key)).status_code == 403
        assert client.put(url, json={"trusted": True}, headers=world.outsider.headers).status_code == 404
        assert client.put(url, json={"trusted": True}).status_code == 401
        assert client.put(url, json={"trusted": "maybe"}, headers=world.admin.headers).status_code == 422
        response = client.put(url, json={"trusted": True}, headers=world.admin.headers)
        assert response.status_code == 200 and response.json()["data"]["trusted"] is True
        with factory.database.session(write=False) as session:
            denied = session.scalars(
                select(AuditLog).where(AuditLog.organization_id == world.org, AuditLog.outcome == "denied")
            ).all()
            assert denied


class TestAliases:
    def test_set_move_resolve_delete(self, client: TestClient, world: World) -> None:
        headers = world.developer.headers
        model = new_model(client, world.project, headers)
        new_version(client, model["id"], headers)
        new_version(client, model["id"], headers)
        url = f"/api/v1/models/{model['id']}/aliases/champion"
        assert client.get(url, headers=headers).status_code == 404
        assert client.put(url, json={"version": "1.0.0"}, headers=headers).status_code == 200
        moved = client.put(url, json={"version": "1.0.1"}, headers=headers)
        assert moved.json()["data"] == {"alias": "champion", "version": moved.json()["data"]["version"]}
        assert client.get(url, headers=world.viewer.headers).json()["data"]["version"]["version"] == "1.0.1"
        assert client.delete(url, headers=world.viewer.headers).status_code == 403
        assert client.delete(url, headers=headers).status_code == 204
        assert client.get(url, headers=headers).status_code == 404
        assert client.delete(url, headers=headers).status_code == 404

    def test_errors(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers)
        url = f"/api/v1/models/{model['id']}/aliases/champion"
        assert client.put(url, json={"version": "1.0.0"}, headers=world.viewer.headers).status_code == 403
        assert client.put(url, json={"version": "1.0.0"}, headers=world.outsider.headers).status_code == 404
        assert client.put(url, json={"version": "1.0.0"}).status_code == 401
        assert client.put(url, json={"version": "9.0.0"}, headers=world.admin.headers).status_code == 404
        assert client.put(url, json={"version": "x"}, headers=world.admin.headers).status_code == 422
        bad = f"/api/v1/models/{model['id']}/aliases/Bad%20Alias"
        assert client.put(bad, json={"version": "1.0.0"}, headers=world.admin.headers).status_code == 422
        client.put(url, json={"version": "1.0.0"}, headers=world.admin.headers)
        assert client.get(url, headers=world.outsider.headers).status_code == 404
        assert client.get(url).status_code == 401
        # deleting the version removes its aliases
        client.delete(f"/api/v1/models/{model['id']}/versions/1.0.0", headers=world.admin.headers)
        assert client.get(url, headers=world.admin.headers).status_code == 404


class TestVersionTags:
    def test_set_list_delete(self, client: TestClient, world: World) -> None:
        headers = world.developer.headers
        model = new_model(client, world.project, headers)
        new_version(client, model["id"], headers)
        base = f"/api/v1/models/{model['id']}/versions/1.0.0/tags"
        assert client.put(f"{base}/team", json={"value": "growth"}, headers=headers).status_code == 200
        assert client.put(f"{base}/reviewed", json={}, headers=headers).status_code == 200
        assert client.put(f"{base}/team", json={"value": "risk"}, headers=headers).json()["data"] == {
            "key": "team",
            "value": "risk",
        }
        listed = client.get(base, headers=world.viewer.headers).json()["data"]
        assert listed == [{"key": "reviewed", "value": ""}, {"key": "team", "value": "risk"}]
        assert client.delete(f"{base}/team", headers=headers).status_code == 204
        assert client.delete(f"{base}/team", headers=headers).status_code == 404
        assert [t["key"] for t in client.get(base, headers=headers).json()["data"]] == ["reviewed"]

    def test_errors(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        new_version(client, model["id"], world.developer.headers)
        base = f"/api/v1/models/{model['id']}/versions/1.0.0/tags"
        assert (
            client.put(f"{base}/team", json={"value": "x"}, headers=world.viewer.headers).status_code == 403
        )
        assert (
            client.put(f"{base}/team", json={"value": "x"}, headers=world.outsider.headers).status_code == 404
        )
        assert client.get(base, headers=world.outsider.headers).status_code == 404
        assert client.get(base).status_code == 401
        assert (
            client.put(f"{base}/bad%20key", json={"value": "x"}, headers=world.admin.headers).status_code
            == 422
        )
        assert (
            client.put(f"{base}/team", json={"value": "a\x00"}, headers=world.admin.headers).status_code
            == 422
        )
        missing = f"/api/v1/models/{model['id']}/versions/2.0.0/tags"
        assert client.get(missing, headers=world.admin.headers).status_code == 404
