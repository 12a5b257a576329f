from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import new_model


def tags_url(model: dict, key: str | None = None) -> str:
    base = f"/api/v1/models/{model['id']}/tags"
    return f"{base}/{key}" if key is not None else base


def tags_of(client: TestClient, model: dict, headers: dict[str, str]) -> list[dict]:
    response = client.get(tags_url(model), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


class TestListModelTags:
    def test_lists_keys_and_values_by_key(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["retention", "churn"])
        client.put(tags_url(model, "team"), json={"value": "growth"}, headers=world.admin.headers)
        assert tags_of(client, model, world.viewer.headers) == [
            {"key": "churn", "value": ""},
            {"key": "retention", "value": ""},
            {"key": "team", "value": "growth"},
        ]

    def test_api_key_scope(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert tags_of(client, model, api_key_headers(factory.api_key(world.org, {"models": ["read"]}))) == []
        no_scope = api_key_headers(factory.api_key(world.org, {"projects": ["read"]}))
        assert client.get(tags_url(model), headers=no_scope).status_code == 403

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.get(tags_url(model), headers=world.outsider.headers).status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.get(tags_url(model)).status_code == 401

    def test_malformed(self, client: TestClient, world: World) -> None:
        assert client.get("/api/v1/models/bad%00id/tags", headers=world.admin.headers).status_code == 422


class TestSetModelTag:
    def test_adds_then_overwrites(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        headers = world.developer.headers
        response = client.put(tags_url(model, "team"), json={"value": "growth"}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"key": "team", "value": "growth"}
        response = client.put(tags_url(model, "team"), json={"value": "risk"}, headers=headers)
        assert response.json()["data"] == {"key": "team", "value": "risk"}
        label = client.put(tags_url(model, "validated"), json={}, headers=headers)
        assert label.json()["data"] == {"key": "validated", "value": ""}
        assert tags_of(client, model, headers) == [
            {"key": "team", "value": "risk"},
            {"key": "validated", "value": ""},
        ]
        detail = client.get(f"/api/v1/models/{model['id']}", headers=headers).json()["data"]
        assert detail["tags"] == ["team", "validated"]
        assert detail["updated_at"] >= model["updated_at"]

    @pytest.mark.parametrize("key", ["a", "env.stage:blue-green_1", "K" * 100])
    def test_accepts_every_allowed_key(self, client: TestClient, world: World, key: str) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(tags_url(model, key), json={"value": "v"}, headers=world.admin.headers)
        assert response.status_code == 200
        assert response.json()["data"]["key"] == key

    def test_at_most_a_hundred_tags(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=[f"t{i}" for i in range(100)])
        response = client.put(tags_url(model, "one-more"), json={"value": ""}, headers=world.admin.headers)
        assert response.status_code == 409
        overwrite = client.put(tags_url(model, "t1"), json={"value": "fine"}, headers=world.admin.headers)
        assert overwrite.status_code == 200

    def test_viewer_cannot_tag(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert (
            client.put(tags_url(model, "x"), json={"value": "y"}, headers=world.viewer.headers).status_code
            == 403
        )
        reader = api_key_headers(factory.api_key(world.org, {"models": ["read"]}))
        assert client.put(tags_url(model, "x"), json={"value": "y"}, headers=reader).status_code == 403
        assert tags_of(client, model, world.admin.headers) == []

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(tags_url(model, "x"), json={"value": "y"}, headers=world.outsider.headers)
        assert response.status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.put(tags_url(model, "x"), json={"value": "y"}).status_code == 401

    @pytest.mark.parametrize(
        ("key", "body"),
        [
            ("has%20space", {"value": "v"}),
            ("K" * 101, {"value": "v"}),
            ("semi;colon", {"value": "v"}),
            ("%2E%2E\\x", {"value": "v"}),
            ("ok", {"value": "v" * 501}),
            ("ok", {"value": "nul\x00"}),
            ("ok", {"value": "line\nbreak"}),
            ("ok", {"value": None}),
            ("ok", {"value": 5}),
            ("ok", {"value": "v", "key": "other"}),
            ("ok", {"value": "v", "model_id": "model_other"}),
        ],
    )
    def test_malformed(self, client: TestClient, world: World, key: str, body: dict) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(tags_url(model, key), json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert tags_of(client, model, world.admin.headers) == []


class TestDeleteModelTag:
    def test_removes_the_tag(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["keep", "drop"])
        response = client.delete(tags_url(model, "drop"), headers=world.developer.headers)
        assert response.status_code == 204
        assert tags_of(client, model, world.admin.headers) == [{"key": "keep", "value": ""}]
        assert client.delete(tags_url(model, "drop"), headers=world.developer.headers).status_code == 404

    def test_viewer_cannot_delete(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["keep"])
        assert client.delete(tags_url(model, "keep"), headers=world.viewer.headers).status_code == 403
        assert tags_of(client, model, world.admin.headers) == [{"key": "keep", "value": ""}]

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["keep"])
        assert client.delete(tags_url(model, "keep"), headers=world.outsider.headers).status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["keep"])
        assert client.delete(tags_url(model, "keep")).status_code == 401

    def test_malformed(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.delete(tags_url(model, "bad%20key"), headers=world.admin.headers).status_code == 422
