"""The name-addressed registry API: models by name across the projects a caller can
see, integer versions, stages in any case, tags as objects, where a model registered by
name goes, `filter_string` and paging, and who acted when an API key did."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import new_model, new_version

MODELS = "/api/v1/models"


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [model["name"] for model in response.json()["data"]]


class TestNames:
    def test_a_name_in_two_projects_is_ambiguous_and_ids_still_work(
        self, client: TestClient, world: World
    ) -> None:
        second = world.acme.project("organization", name="Second")
        first_model = new_model(client, world.project, world.admin.headers, "shared")
        second_model = new_model(client, second, world.admin.headers, "shared")
        for path in ("shared", "shared/versions", "shared/tags"):
            response = client.get(f"{MODELS}/{path}", headers=world.developer.headers)
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "CONFLICT"
            assert "'Fraud'" in error["message"] and "'Second'" in error["message"]
            assert world.project in error["message"] and second in error["message"]
        for model in (first_model, second_model):
            response = client.get(f"{MODELS}/{model['id']}", headers=world.developer.headers)
            assert response.json()["data"]["id"] == model["id"]
        # Removing one makes the name unique again.
        assert client.delete(f"{MODELS}/{second_model['id']}", headers=world.admin.headers).status_code == 204
        assert (
            client.get(f"{MODELS}/shared", headers=world.developer.headers).json()["data"]["id"]
            == (first_model["id"])
        )

    def test_a_name_in_a_project_you_cannot_see_is_like_an_unknown_name(
        self, client: TestClient, world: World
    ) -> None:
        new_model(client, world.private, world.admin.headers, "hidden")
        new_model(client, world.project, world.admin.headers, "visible")
        hidden = client.get(f"{MODELS}/hidden", headers=world.developer.headers)
        unknown = client.get(f"{MODELS}/no-such-name", headers=world.developer.headers)
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json()["error"] == unknown.json()["error"]
        # The admin sees the private project, so the name is found there…
        assert client.get(f"{MODELS}/hidden", headers=world.admin.headers).status_code == 200
        # …and the other organisation's people never find it.
        outsider = client.get(f"{MODELS}/visible", headers=world.outsider.headers)
        assert outsider.status_code == 404 and outsider.json()["error"] == unknown.json()["error"]
        # A hidden model shared by name with a visible one does not make the name ambiguous.
        new_model(client, world.project, world.admin.headers, "hidden")
        assert client.get(f"{MODELS}/hidden", headers=world.developer.headers).status_code == 200

    def test_names_with_spaces_are_url_encoded(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "Churn Prediction Model")
        response = client.get(f"{MODELS}/Churn%20Prediction%20Model", headers=world.viewer.headers)
        assert response.json()["data"]["id"] == model["id"]

    def test_patch_and_delete_by_name(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "renamed-later", tags=["old"])
        body = {"description": "Now described", "tags": {"team": "growth", "tier": "1"}}
        response = client.patch(f"{MODELS}/renamed-later", json=body, headers=world.developer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["description"] == "Now described"
        tags = client.get(f"{MODELS}/renamed-later/tags", headers=world.viewer.headers).json()["data"]
        assert tags == [{"key": "team", "value": "growth"}, {"key": "tier", "value": "1"}]
        assert (
            client.patch(f"{MODELS}/renamed-later", json={"x": 1}, headers=world.admin.headers).status_code
            == 422
        )
        assert client.delete(f"{MODELS}/renamed-later", headers=world.viewer.headers).status_code == 403
        assert client.delete(f"{MODELS}/renamed-later", headers=world.developer.headers).status_code == 204
        assert client.get(f"{MODELS}/renamed-later", headers=world.admin.headers).status_code == 404


class TestVersionsAndStages:
    def test_integer_and_semver_versions_are_the_same_version(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "numbered")
        new_version(client, model["id"], world.admin.headers, version="3.0.0")
        by_integer = client.get(f"{MODELS}/numbered/versions/3", headers=world.viewer.headers)
        by_semver = client.get(f"{MODELS}/{model['id']}/versions/3.0.0", headers=world.viewer.headers)
        assert by_integer.status_code == 200, by_integer.text
        assert by_integer.json() == by_semver.json() | {"metadata": by_integer.json()["metadata"]}
        assert client.get(f"{MODELS}/numbered/versions/2", headers=world.viewer.headers).status_code == 404
        for bad in ("3.0", "v3", "1" * 10, "-1"):
            assert (
                client.get(f"{MODELS}/numbered/versions/{bad}", headers=world.viewer.headers).status_code
                == 422
            )

    @pytest.mark.parametrize(
        ("sent", "stored"),
        [
            ("Staging", "staging"),
            ("PRODUCTION", "production"),
            ("archived", "archived"),
            ("None", "development"),
        ],
    )
    def test_stages_in_any_case(self, client: TestClient, world: World, sent: str, stored: str) -> None:
        model = new_model(client, world.project, world.admin.headers, "staged")
        new_version(client, model["id"], world.admin.headers, stage="staging")
        response = client.post(
            f"{MODELS}/staged/versions/1/stage", json={"stage": sent}, headers=world.developer.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["stage"] == stored

    @pytest.mark.parametrize("body", [{"stage": "Live"}, {"stage": ""}, {}, {"stage": "Staging", "x": 1}])
    def test_unknown_stages_are_refused(self, client: TestClient, world: World, body: dict) -> None:
        model = new_model(client, world.project, world.admin.headers, "staged")
        new_version(client, model["id"], world.admin.headers)
        response = client.post(f"{MODELS}/staged/versions/1/stage", json=body, headers=world.admin.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        version = client.get(f"{MODELS}/staged/versions/1", headers=world.admin.headers).json()["data"]
        assert version["stage"] == "development"

    @pytest.mark.parametrize("archive", [True, False])
    def test_archive_existing_versions(self, client: TestClient, world: World, archive: bool) -> None:
        model = new_model(client, world.project, world.admin.headers, "promoted")
        new_version(client, model["id"], world.admin.headers, version="1.0.0")
        new_version(client, model["id"], world.admin.headers, version="2.0.0", stage="production")
        body = {"stage": "Production", "archive_existing_versions": archive}
        response = client.post(f"{MODELS}/promoted/versions/1/stage", json=body, headers=world.admin.headers)
        assert response.status_code == 200, response.text
        versions = client.get(f"{MODELS}/promoted/versions", headers=world.admin.headers).json()["data"]
        expected = {"1.0.0": "production", "2.0.0": "archived" if archive else "production"}
        assert {v["version"]: v["stage"] for v in versions} == expected

    def test_viewers_may_not_change_stages(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "guarded")
        new_version(client, model["id"], world.admin.headers)
        body = {"stage": "Staging"}
        response = client.post(f"{MODELS}/guarded/versions/1/stage", json=body, headers=world.viewer.headers)
        assert response.status_code == 403


class TestTags:
    def test_model_tags_set_and_removed_with_bodies_or_query(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "tagged")
        for key in ("a", "b"):
            body = {"key": key, "value": f"value {key}"}
            response = client.post(f"{MODELS}/tagged/tags", json=body, headers=world.developer.headers)
            assert response.json()["data"] == body
        assert (
            client.request(
                "DELETE", f"{MODELS}/tagged/tags", json={"key": "a"}, headers=world.developer.headers
            ).status_code
            == 204
        )
        assert (
            client.delete(f"{MODELS}/tagged/tags?tag=b", headers=world.developer.headers).status_code == 204
        )
        assert client.get(f"{MODELS}/tagged/tags", headers=world.admin.headers).json()["data"] == []
        missing = client.delete(f"{MODELS}/tagged/tags", headers=world.developer.headers)
        assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "key"
        both = client.request(
            "DELETE", f"{MODELS}/tagged/tags?tag=x", json={"key": "y"}, headers=world.admin.headers
        )
        assert both.status_code == 422
        assert client.delete(f"{MODELS}/tagged/tags?tag=gone", headers=world.admin.headers).status_code == 404
        # `?key=` reads as a credential in a query string, which every route refuses.
        assert client.delete(f"{MODELS}/tagged/tags?key=a", headers=world.admin.headers).status_code == 401

    def test_version_tags(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "tagged")
        new_version(client, model["id"], world.admin.headers)
        url = f"{MODELS}/tagged/versions/1/tags"
        response = client.post(
            url, json={"key": "validated", "value": "true"}, headers=world.developer.headers
        )
        assert response.status_code == 200, response.text
        assert client.get(url, headers=world.viewer.headers).json()["data"] == [
            {"key": "validated", "value": "true"}
        ]
        assert client.post(url, json={"key": "bad key!"}, headers=world.admin.headers).status_code == 422
        assert client.post(url, json={"key": "x"}, headers=world.viewer.headers).status_code == 403
        assert client.delete(f"{url}?tag=validated", headers=world.developer.headers).status_code == 204
        assert client.get(url, headers=world.viewer.headers).json()["data"] == []


class TestRegister:
    def test_tags_as_an_object_or_a_list(self, client: TestClient, world: World) -> None:
        body = {"name": "with-values", "project_id": world.project, "tags": {"team": "growth", "tier": ""}}
        response = client.post(MODELS, json=body, headers=world.developer.headers)
        assert response.status_code == 201, response.text
        assert response.json()["data"]["model_type"] == "other"
        tags = client.get(f"{MODELS}/with-values/tags", headers=world.admin.headers).json()["data"]
        assert tags == [{"key": "team", "value": "growth"}, {"key": "tier", "value": ""}]
        body = {
            "name": "with-keys",
            "project_id": world.project,
            "tags": ["a", "b"],
            "model_type": "regression",
        }
        response = client.post(MODELS, json=body, headers=world.developer.headers)
        assert response.json()["data"]["tags"] == ["a", "b"]
        # The platform's route keeps its own shape: a list of keys only.
        platform = client.post(
            f"/api/v1/projects/{world.project}/models",
            json={"name": "platform", "model_type": "other", "tags": {"team": "growth"}},
            headers=world.admin.headers,
        )
        assert platform.status_code == 422

    def test_the_project_from_the_body_the_header_or_the_only_one(
        self, client: TestClient, world: World
    ) -> None:
        second = world.acme.project("organization", name="Second")
        by_body = client.post(
            MODELS, json={"name": "m1", "project_id": second}, headers=world.developer.headers
        )
        assert by_body.status_code == 201, by_body.text
        headers = world.developer.headers | {"X-Maestro-Project": world.project}
        assert client.post(MODELS, json={"name": "m2"}, headers=headers).status_code == 201
        # The developer sees two projects now: the request must choose.
        unchosen = client.post(MODELS, json={"name": "m3"}, headers=world.developer.headers)
        assert unchosen.status_code == 422
        error = unchosen.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and "X-Maestro-Project" in error["message"]
        assert error["details"][0]["field"] == "project_id"
        disagreeing = client.post(MODELS, json={"name": "m4", "project_id": second}, headers=headers)
        assert disagreeing.status_code == 422
        projects = {
            m["name"]: m["id"] for m in client.get(MODELS, headers=world.admin.headers).json()["data"]
        }
        assert set(projects) == {"m1", "m2"}
        own = client.get(f"/api/v1/projects/{second}/models", headers=world.admin.headers).json()["data"]
        assert [m["name"] for m in own] == ["m1"]

    def test_the_only_project(self, client: TestClient, factory: Factory) -> None:
        team = World.build(factory).globex  # Globex has one project
        response = client.post(MODELS, json={"name": "solo", "tags": {"a": "b"}}, headers=team.admin.headers)
        assert response.status_code == 201, response.text

    def test_a_project_you_cannot_see_is_not_found(self, client: TestClient, world: World) -> None:
        body = {"name": "m", "project_id": world.other_project}
        response = client.post(MODELS, json=body, headers=world.developer.headers)
        assert response.status_code == 404
        headers = world.viewer.headers | {"X-Maestro-Project": world.project}
        assert client.post(MODELS, json={"name": "m"}, headers=headers).status_code == 403


class TestList:
    @pytest.fixture
    def listed(self, client: TestClient, world: World) -> World:
        for name, team in (("fraud-detector", "risk"), ("fraud-scorer", "growth"), ("churn", "growth")):
            model = new_model(client, world.project, world.admin.headers, name)
            client.put(f"{MODELS}/{model['id']}/tags/team", json={"value": team}, headers=world.admin.headers)
        new_model(client, world.private, world.admin.headers, "private-fraud")
        new_model(client, world.other_project, world.outsider.headers, "globex-fraud")
        return world

    def test_everything_you_can_see_by_name(self, client: TestClient, listed: World) -> None:
        assert names(client.get(MODELS, headers=listed.developer.headers)) == [
            "churn",
            "fraud-detector",
            "fraud-scorer",
        ]
        assert "private-fraud" in names(client.get(MODELS, headers=listed.admin.headers))
        assert names(client.get(MODELS, headers=listed.outsider.headers)) == ["globex-fraud"]
        key = listed.acme.api_key({"models": ["read"]})
        assert len(names(client.get(MODELS, headers=api_key_headers(key)))) == 4
        assert client.get(MODELS, headers=listed.key_headers).status_code == 403
        assert client.get(MODELS).status_code == 401

    @pytest.mark.parametrize(
        ("filter_string", "expected"),
        [
            ("name LIKE '%fraud%'", ["fraud-detector", "fraud-scorer"]),
            ("name LIKE '%FRAUD%'", []),
            ("name ILIKE '%FRAUD%'", ["fraud-detector", "fraud-scorer"]),
            ("name = 'churn'", ["churn"]),
            ("name != 'churn'", ["fraud-detector", "fraud-scorer"]),
            ("tags.team = 'growth'", ["churn", "fraud-scorer"]),
            ("tags.`team` = 'growth' and name like 'fraud%'", ["fraud-scorer"]),
            ("name LIKE 'fraud_detector'", ["fraud-detector"]),
            ("tags.absent = 'x'", []),
            ("  ", ["churn", "fraud-detector", "fraud-scorer"]),
        ],
    )
    def test_filter_string(
        self, client: TestClient, listed: World, filter_string: str, expected: list
    ) -> None:
        response = client.get(
            MODELS, params={"filter_string": filter_string}, headers=listed.developer.headers
        )
        assert names(response) == expected

    @pytest.mark.parametrize(
        "filter_string",
        [
            "name LIKE",
            "name ~ 'x'",
            "owner = 'me'",
            "name = 'x' OR name = 'y'",
            "name = 'unterminated",
            "tags. = 'x'",
            "name = 'x' name = 'y'",
        ],
    )
    def test_malformed_filters_are_422(self, client: TestClient, listed: World, filter_string: str) -> None:
        response = client.get(
            MODELS, params={"filter_string": filter_string}, headers=listed.developer.headers
        )
        assert response.status_code == 422
        body = response.json()
        assert body["success"] is False
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert body["error"]["message"].startswith("Invalid filter_string:")
        assert body["error"]["details"][0]["field"] == "filter_string"

    @pytest.mark.parametrize("max_results", [0, 101, -1, "many"])
    def test_max_results_bounds(self, client: TestClient, listed: World, max_results: Any) -> None:
        response = client.get(MODELS, params={"max_results": max_results}, headers=listed.developer.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_paging(self, client: TestClient, listed: World) -> None:
        headers = listed.developer.headers
        first = client.get(MODELS, params={"max_results": 2}, headers=headers).json()
        assert [m["name"] for m in first["data"]] == ["churn", "fraud-detector"]
        assert first["pagination"]["total"] == 3 and first["pagination"]["has_next"] is True
        token = first["pagination"]["next_cursor"]
        second = client.get(MODELS, params={"max_results": 2, "page_token": token}, headers=headers).json()
        assert [m["name"] for m in second["data"]] == ["fraud-scorer"]
        assert second["pagination"]["has_next"] is False
        same = client.get(MODELS, params={"max_results": 2, "cursor": token}, headers=headers).json()
        assert same["data"] == second["data"]
        by_page = client.get(MODELS, params={"max_results": 2, "page": 2}, headers=headers).json()
        assert by_page["data"] == second["data"]
        bad = client.get(MODELS, params={"page_token": "garbage"}, headers=headers)
        assert bad.status_code == 422


class TestCardsAndAttribution:
    def test_cards_by_name_and_integer_version(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "carded")
        new_version(client, model["id"], world.admin.headers, version="2.0.0")
        card = client.get("/api/v1/model-cards/carded/versions/2", headers=world.viewer.headers)
        assert card.status_code == 200, card.text
        platform = client.get(f"{MODELS}/{model['id']}/versions/2.0.0/card", headers=world.viewer.headers)
        assert card.json()["data"]["version"] == platform.json()["data"]["version"]
        markdown = client.get(
            "/api/v1/model-cards/carded/versions/2?format=markdown", headers=world.viewer.headers
        )
        assert markdown.headers["content-type"].startswith("text/markdown")
        validation = client.post(
            "/api/v1/model-cards/carded/versions/2/validate", headers=world.viewer.headers
        )
        assert validation.json()["data"]["valid"] is False
        assert (
            client.get("/api/v1/model-cards/carded/versions/3", headers=world.viewer.headers).status_code
            == 404
        )
        assert (
            client.get("/api/v1/model-cards/carded/versions/2", headers=world.outsider.headers).status_code
            == 404
        )

    def test_an_api_key_is_named_by_its_name_and_prefix(self, client: TestClient, world: World) -> None:
        key = world.acme.api_key({"models": ["read", "write"]})
        headers = api_key_headers(key)
        response = client.post(MODELS, json={"name": "by-key", "project_id": world.project}, headers=headers)
        creator = response.json()["data"]["created_by"]
        assert creator["kind"] == "api_key" and key.startswith(creator["prefix"])
        new_version(client, "by-key", headers)
        client.post(f"{MODELS}/by-key/versions/1/stage", json={"stage": "Staging"}, headers=headers)
        history = client.get(f"{MODELS}/by-key/versions/1/stages", headers=world.viewer.headers).json()[
            "data"
        ]
        assert [h["changed_by"] for h in history] == [creator, creator]
        card = client.get("/api/v1/model-cards/by-key/versions/1", headers=world.viewer.headers).json()[
            "data"
        ]
        assert card["version"]["created_by"] == creator
        markdown = client.get("/api/v1/model-cards/by-key/versions/1?format=markdown", headers=headers).text
        assert f"API key {creator['name']} ({creator['prefix']})" in markdown.replace("\\", "")
        assert "an API key" not in markdown
