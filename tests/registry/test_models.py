from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from maestro.db import utcnow
from maestro.identity.credential_cache import forget_everything
from maestro.identity.models import AuditLog
from maestro.registry.models import ModelTag, ModelVersion, RegisteredModel
from tests.factories import Factory, World, api_key_headers
from tests.registry.conftest import add_version, create_model, new_model, outbox

MODEL_FIELDS = {
    "id",
    "name",
    "description",
    "model_type",
    "framework",
    "task_type",
    "tags",
    "version_count",
    "latest_version",
    "created_by",
    "created_at",
    "updated_at",
}
SPEC_BODY = {
    "name": "Churn Prediction Model",
    "description": "Predicts customer churn probability",
    "model_type": "classification",
    "framework": "scikit-learn",
    "task_type": "binary_classification",
    "tags": ["churn", "customer", "retention"],
}
MALFORMED_CREATE = [
    {"name": "x", "model_type": "astrology"},
    {"name": "x"},
    {"model_type": "classification"},
    {"name": "x" * 10_000, "model_type": "classification"},
    {"name": "x" * 201, "model_type": "classification"},
    {"name": "", "model_type": "classification"},
    {"name": "   ", "model_type": "classification"},
    {"name": "line\nbreak", "model_type": "classification"},
    {"name": "nul\x00byte", "model_type": "classification"},
    {"name": "team/model", "model_type": "classification"},
    {"name": "..", "model_type": "classification"},
    {"name": ["x"], "model_type": "classification"},
    {"name": "x", "model_type": "classification", "project_id": "proj_other"},
    {"name": "x", "model_type": "classification", "organization_id": "org_other"},
    {"name": "x", "model_type": "classification", "created_by": "user_someone"},
    {"name": "x", "model_type": "classification", "created_by_id": "user_someone"},
    {"name": "x", "model_type": "classification", "id": "model_chosen"},
    {"name": "x", "model_type": "classification", "version_count": 9},
    {"name": "x", "model_type": "classification", "description": "d" * 2001},
    {"name": "x", "model_type": "classification", "framework": "f" * 51},
    {"name": "x", "model_type": "classification", "task_type": "bad\x00"},
    {"name": "x", "model_type": "classification", "tags": ["has space"]},
    {"name": "x", "model_type": "classification", "tags": ["k" * 101]},
    {"name": "x", "model_type": "classification", "tags": [f"t{i}" for i in range(101)]},
    {"name": "x", "model_type": "classification", "tags": "fraud"},
    {"name": "x", "model_type": "classification", "tags": {"team": "growth"}},
]


def models_url(project: str) -> str:
    return f"/api/v1/projects/{project}/models"


def listed(client: TestClient, project: str, headers: dict[str, str], **params: object) -> dict:
    response = client.get(models_url(project), params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def names(body: dict) -> list[str]:
    return [item["name"] for item in body["data"]]


@contextmanager
def counting_queries(factory: Factory) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    engine = factory.database.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


class TestCreateModel:
    def test_creates_a_model_with_the_spec_shape(self, client: TestClient, world: World) -> None:
        response = client.post(models_url(world.project), json=SPEC_BODY, headers=world.developer.headers)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == MODEL_FIELDS
        assert data["id"].startswith("model_")
        assert {k: data[k] for k in ("name", "description", "model_type", "framework", "task_type")} == {
            k: SPEC_BODY[k] for k in ("name", "description", "model_type", "framework", "task_type")
        }
        assert data["tags"] == ["churn", "customer", "retention"]
        assert data["version_count"] == 0
        assert data["latest_version"] is None
        assert data["created_by"] == {
            "id": world.developer.user_id,
            "name": data["created_by"]["name"],
            "kind": "user",
            "prefix": None,
        }
        assert data["created_at"].endswith("Z")

    def test_optional_fields_and_duplicate_tags(self, client: TestClient, world: World) -> None:
        data = new_model(
            client, world.project, world.admin.headers, "Bare", model_type="llm", tags=["b", "a", "b"]
        )
        assert (data["description"], data["framework"], data["task_type"]) == (None, None, None)
        assert data["tags"] == ["a", "b"]

    def test_api_key_with_models_write(self, client: TestClient, factory: Factory, world: World) -> None:
        key = factory.api_key(world.org, {"models": ["write"]})
        response = create_model(client, world.project, api_key_headers(key))
        assert response.status_code == 201, response.text
        created_by = response.json()["data"]["created_by"]
        assert created_by["kind"] == "api_key"
        assert created_by["prefix"] == key[: len(created_by["prefix"])]
        assert created_by["id"].startswith("key_") and created_by["name"].startswith("key ")

    def test_viewer_cannot_create(self, client: TestClient, factory: Factory, world: World) -> None:
        assert create_model(client, world.project, world.viewer.headers).status_code == 403
        read_only = factory.api_key(world.org, {"models": ["read"]})
        assert create_model(client, world.project, api_key_headers(read_only)).status_code == 403
        assert listed(client, world.project, world.admin.headers)["data"] == []

    def test_project_member_role_applies(self, client: TestClient, factory: Factory, world: World) -> None:
        """A developer who is a viewer member of the project may not create there."""
        factory.add_project_member(world.project, world.developer, "viewer")
        assert create_model(client, world.project, world.developer.headers).status_code == 403

    def test_other_organization_and_invisible_projects(self, client: TestClient, world: World) -> None:
        assert create_model(client, world.project, world.outsider.headers).status_code == 404
        assert create_model(client, world.other_project, world.admin.headers).status_code == 404
        assert create_model(client, world.private, world.developer.headers).status_code == 404
        assert create_model(client, "proj_missing", world.admin.headers).status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        response = create_model(client, world.project, {})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"

    @pytest.mark.parametrize("body", MALFORMED_CREATE, ids=range(len(MALFORMED_CREATE)))
    def test_malformed(self, client: TestClient, world: World, body: dict) -> None:
        response = client.post(models_url(world.project), json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_malformed_changes_nothing(self, client: TestClient, factory: Factory, world: World) -> None:
        for body in MALFORMED_CREATE[:5]:
            client.post(models_url(world.project), json=body, headers=world.admin.headers)
        assert listed(client, world.project, world.admin.headers)["data"] == []
        assert outbox(factory) == []

    def test_duplicate_name_in_project_is_a_conflict(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "Fraud Detector")
        response = create_model(client, world.project, world.developer.headers, "Fraud Detector")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "CONFLICT"
        # the same name in another project, and a differently spelled one here, are fine
        assert create_model(client, world.private, world.admin.headers, "Fraud Detector").status_code == 201
        assert create_model(client, world.project, world.admin.headers, "fraud detector").status_code == 201

    def test_records_an_outbox_event_and_audit_row(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        data = new_model(client, world.project, world.admin.headers, "Outboxed")
        events = outbox(factory)
        assert [(e.type, e.organization_id, e.delivered_at) for e in events] == [
            ("model.created", world.org, None)
        ]
        assert events[0].id.startswith("evt_")
        assert events[0].payload == {"model_id": data["id"], "name": "Outboxed", "project_id": world.project}
        with factory.database.session(write=False) as session:
            row = session.scalar(select(AuditLog).where(AuditLog.resource_id == data["id"]))
        assert row is not None
        assert (row.action, row.resource_type, row.outcome) == ("registry:create_model", "models", "success")

    def test_no_outbox_event_when_the_request_fails(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        new_model(client, world.project, world.admin.headers, "Once")
        assert create_model(client, world.project, world.admin.headers, "Once").status_code == 409
        assert create_model(client, world.project, world.viewer.headers, "Twice").status_code == 403
        assert (
            create_model(client, world.project, world.admin.headers, "x", model_type="?").status_code == 422
        )
        assert [e.payload["name"] for e in outbox(factory)] == ["Once"]


class TestListModels:
    def test_lists_with_the_spec_shape(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(
            client,
            world.project,
            world.admin.headers,
            "Credit Card Fraud Detector",
            **{k: v for k, v in SPEC_BODY.items() if k != "name"},
        )
        body = listed(client, world.project, world.viewer.headers)
        assert body["success"] is True
        assert [item["id"] for item in body["data"]] == [model["id"]]
        assert set(body["data"][0]) == MODEL_FIELDS
        assert body["pagination"] == {
            "total": 1,
            "page": 1,
            "limit": 20,
            "has_next": False,
            "has_prev": False,
            "next_cursor": None,
        }

    def test_version_count_and_latest_version(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        fraud = new_model(client, world.project, world.admin.headers, "Fraud")
        churn = new_model(client, world.project, world.admin.headers, "Churn")
        empty = new_model(client, world.project, world.admin.headers, "Empty")
        start = utcnow() - timedelta(days=3)
        add_version(factory, fraud, world.org, "1.0.0", stage="archived", created_at=start)
        add_version(
            factory, fraud, world.org, "1.1.0", stage="production", created_at=start + timedelta(days=1)
        )
        add_version(
            factory,
            fraud,
            world.org,
            "1.2.0",
            stage="staging",
            metrics={"accuracy": 0.947, "precision": 0.923},
            created_at=start + timedelta(days=2),
        )
        add_version(factory, churn, world.org, "0.1.0", metrics={"rmse": 1.5})
        by_name = {item["name"]: item for item in listed(client, world.project, world.viewer.headers)["data"]}
        assert by_name["Fraud"]["version_count"] == 3
        assert by_name["Fraud"]["latest_version"] == {
            "version": "1.2.0",
            "stage": "staging",
            "performance_metrics": {"accuracy": 0.947, "precision": 0.923},
        }
        assert by_name["Churn"]["version_count"] == 1
        assert by_name["Churn"]["latest_version"] == {
            "version": "0.1.0",
            "stage": "development",
            "performance_metrics": {"rmse": 1.5},
        }
        assert (by_name["Empty"]["version_count"], by_name["Empty"]["latest_version"]) == (0, None)
        detail = client.get(f"/api/v1/models/{fraud['id']}", headers=world.viewer.headers).json()["data"]
        assert detail == by_name["Fraud"]
        assert empty["id"] == by_name["Empty"]["id"]

    def test_a_page_costs_the_same_number_of_queries_whatever_its_size(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        def queries_for_listing() -> int:
            forget_everything()  # both listings authenticate from the database
            with counting_queries(factory) as statements:
                listed(client, world.project, world.viewer.headers, limit=100)
            return len(statements)

        for index in range(2):
            model = new_model(client, world.project, world.admin.headers, f"m{index}", tags=["a", "b"])
            add_version(factory, model, world.org, "1.0.0")
        small = queries_for_listing()
        for index in range(2, 12):
            model = new_model(client, world.project, world.admin.headers, f"m{index}", tags=["a", "b"])
            add_version(factory, model, world.org, "1.0.0")
            add_version(factory, model, world.org, "1.1.0")
        assert queries_for_listing() == small

    def test_filters_by_type_and_framework(self, client: TestClient, world: World) -> None:
        headers = world.admin.headers
        new_model(client, world.project, headers, "xgb", model_type="classification", framework="xgboost")
        new_model(client, world.project, headers, "skl", model_type="regression", framework="scikit-learn")
        new_model(client, world.project, headers, "llm", model_type="llm")
        assert names(listed(client, world.project, headers, model_type="regression")) == ["skl"]
        assert names(listed(client, world.project, headers, model_type="clustering")) == []
        assert names(listed(client, world.project, headers, framework="XGBoost")) == ["xgb"]
        both = listed(client, world.project, headers, model_type="classification", framework="scikit-learn")
        assert names(both) == []

    def test_filters_by_all_given_tags(self, client: TestClient, world: World) -> None:
        headers = world.admin.headers
        new_model(client, world.project, headers, "both", tags=["fraud", "finance"])
        new_model(client, world.project, headers, "fraud only", tags=["fraud"])
        new_model(client, world.project, headers, "all three", tags=["finance", "fraud", "prod"])
        new_model(client, world.project, headers, "none")
        query = [("tags[]", "fraud"), ("tags[]", "finance"), ("sort", "name"), ("order", "asc")]
        response = client.get(models_url(world.project), params=query, headers=headers)
        assert names(response.json()) == ["all three", "both"]
        one = client.get(models_url(world.project), params=[("tags[]", "prod")], headers=headers)
        assert names(one.json()) == ["all three"]
        assert names(listed(client, world.project, headers, **{"tags[]": "missing"})) == []

    def test_search_is_case_insensitive_and_escapes_wildcards(self, client: TestClient, world: World) -> None:
        headers = world.admin.headers
        new_model(client, world.project, headers, "Fraud 100% recall", description="the best")
        new_model(client, world.project, headers, "fraud_v2", description="second try")
        new_model(client, world.project, headers, "fraudXv2", description="no underscore")
        new_model(client, world.project, headers, "Churn", description="Catches FRAUD too")
        assert sorted(names(listed(client, world.project, headers, search="FRAUD"))) == [
            "Churn",
            "Fraud 100% recall",
            "fraudXv2",
            "fraud_v2",
        ]
        assert names(listed(client, world.project, headers, search="100%")) == ["Fraud 100% recall"]
        assert names(listed(client, world.project, headers, search="%")) == ["Fraud 100% recall"]
        assert names(listed(client, world.project, headers, search="d_v")) == ["fraud_v2"]
        assert names(listed(client, world.project, headers, search="second")) == ["fraud_v2"]

    def test_sorts_by_name_and_pages_with_a_cursor(self, client: TestClient, world: World) -> None:
        headers = world.admin.headers
        words = ["delta", "alpha", "echo", "charlie", "bravo"]
        for word in words:
            new_model(client, world.project, headers, word)
        assert names(listed(client, world.project, headers, sort="name", order="asc")) == sorted(words)
        assert names(listed(client, world.project, headers, sort="name", order="desc")) == sorted(
            words, reverse=True
        )

        seen, cursor, pages = [], None, 0
        while True:
            params = {"sort": "name", "order": "asc", "limit": 2, **({"cursor": cursor} if cursor else {})}
            body = listed(client, world.project, headers, **params)
            pages += 1
            seen += names(body)
            assert body["pagination"]["total"] == 5
            assert body["pagination"]["has_prev"] is (cursor is not None)
            cursor = body["pagination"]["next_cursor"]
            assert body["pagination"]["has_next"] is (cursor is not None)
            if cursor is None:
                break
        assert (seen, pages) == (sorted(words), 3)
        assert names(listed(client, world.project, headers, sort="name", order="asc", limit=2, page=3)) == [
            "echo"
        ]

    def test_default_order_is_newest_first_and_sorts_by_update(
        self, client: TestClient, world: World
    ) -> None:
        headers = world.admin.headers
        first = new_model(client, world.project, headers, "first")
        new_model(client, world.project, headers, "second")
        assert names(listed(client, world.project, headers)) == ["second", "first"]
        assert names(listed(client, world.project, headers, order="asc")) == ["first", "second"]
        client.put(f"/api/v1/models/{first['id']}", json={"description": "touched"}, headers=headers)
        assert names(listed(client, world.project, headers, sort="updated_at")) == ["first", "second"]

    def test_only_the_projects_models(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "here")
        new_model(client, world.private, world.admin.headers, "elsewhere")
        assert names(listed(client, world.project, world.viewer.headers)) == ["here"]

    def test_api_keys_need_the_models_scope(self, client: TestClient, factory: Factory, world: World) -> None:
        new_model(client, world.project, world.admin.headers)
        allowed = factory.api_key(world.org, {"models": ["read"]})
        assert len(listed(client, world.project, api_key_headers(allowed))["data"]) == 1
        projects_only = factory.api_key(world.org, {"projects": ["read"]})
        response = client.get(models_url(world.project), headers=api_key_headers(projects_only))
        assert response.status_code == 403
        other = factory.api_key(world.other_org, {"models": ["read"]})
        assert client.get(models_url(world.project), headers=api_key_headers(other)).status_code == 404

    def test_other_organization_and_private_projects(self, client: TestClient, world: World) -> None:
        assert client.get(models_url(world.project), headers=world.outsider.headers).status_code == 404
        assert client.get(models_url(world.other_project), headers=world.viewer.headers).status_code == 404
        assert client.get(models_url(world.private), headers=world.viewer.headers).status_code == 404
        assert client.get(models_url(world.private), headers=world.admin.headers).status_code == 200

    def test_anonymous(self, client: TestClient, world: World) -> None:
        assert client.get(models_url(world.project)).status_code == 401

    @pytest.mark.parametrize(
        "params",
        [
            {"sort": "popularity"},
            {"sort": "name; DROP TABLE registered_models"},
            {"order": "sideways"},
            {"model_type": "astrology"},
            {"tags[]": "has space"},
            {"tags[]": "k" * 101},
            {"search": "s" * 201},
            {"search": "nul\x00"},
            {"framework": "f" * 51},
            {"limit": 0},
            {"limit": 101},
            {"cursor": "not-a-cursor"},
            {"cursor": "abc", "page": 2},
        ],
    )
    def test_malformed(self, client: TestClient, world: World, params: dict) -> None:
        response = client.get(models_url(world.project), params=params, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_too_many_tag_filters(self, client: TestClient, world: World) -> None:
        query = [("tags[]", f"t{i}") for i in range(21)]
        response = client.get(models_url(world.project), params=query, headers=world.admin.headers)
        assert response.status_code == 422

    def test_a_cursor_of_another_sort_is_refused(self, client: TestClient, world: World) -> None:
        for word in ("a", "b", "c"):
            new_model(client, world.project, world.admin.headers, word)
        cursor = listed(client, world.project, world.admin.headers, limit=1)["pagination"]["next_cursor"]
        response = client.get(
            models_url(world.project), params={"cursor": cursor, "sort": "name"}, headers=world.admin.headers
        )
        assert response.status_code == 422


class TestGetModel:
    def test_returns_the_model(self, client: TestClient, world: World) -> None:
        model = new_model(
            client, world.project, world.admin.headers, **{k: v for k, v in SPEC_BODY.items() if k != "name"}
        )
        response = client.get(f"/api/v1/models/{model['id']}", headers=world.viewer.headers)
        assert response.status_code == 200
        assert response.json()["data"] == model

    def test_project_roles_and_visibility(self, client: TestClient, factory: Factory, world: World) -> None:
        secret = new_model(client, world.private, world.admin.headers, "secret")
        url = f"/api/v1/models/{secret['id']}"
        assert client.get(url, headers=world.developer.headers).status_code == 404
        factory.add_project_member(world.private, world.viewer, "viewer")
        assert client.get(url, headers=world.viewer.headers).status_code == 200

    def test_api_key_scope(self, client: TestClient, factory: Factory, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        url = f"/api/v1/models/{model['id']}"
        assert (
            client.get(
                url, headers=api_key_headers(factory.api_key(world.org, {"models": ["read"]}))
            ).status_code
            == 200
        )
        assert client.get(url, headers=api_key_headers(factory.api_key(world.org, {}))).status_code == 403

    def test_other_organization_and_unknown(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.get(f"/api/v1/models/{model['id']}", headers=world.outsider.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert client.get("/api/v1/models/model_missing", headers=world.admin.headers).status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.get(f"/api/v1/models/{model['id']}").status_code == 401

    @pytest.mark.parametrize("model_id", ["x" * 201, "bad%00id", "bad%0Aid", "tab%09"])
    def test_malformed(self, client: TestClient, world: World, model_id: str) -> None:
        """A model is its id or its name: too long, or with control characters, it is neither."""
        response = client.get(f"/api/v1/models/{model_id}", headers=world.admin.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_path_tricks_find_nothing(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers)
        for path in ("..%2F..%2Fprojects", "%252e%252e%252f"):
            assert client.get(f"/api/v1/models/{path}", headers=world.admin.headers).status_code == 404


class TestGetModelByName:
    def by_name(self, client: TestClient, project: str, name: str, headers: dict[str, str]):
        return client.get(
            f"/api/v1/projects/{project}/models/by-name/{quote(name, safe='')}", headers=headers
        )

    @pytest.mark.parametrize(
        "name", ["fraud-detector", "Détecteur de fraude 🚀", "100% sure? #1", "a+b=c & d", "名前 モデル"]
    )
    def test_finds_the_model_by_its_exact_name(self, client: TestClient, world: World, name: str) -> None:
        model = new_model(client, world.project, world.admin.headers, name)
        new_model(client, world.project, world.admin.headers, name + " 2")
        response = self.by_name(client, world.project, name, world.viewer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"] == model

    def test_unknown_or_differently_spelled(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "Fraud Detector")
        assert self.by_name(client, world.project, "fraud detector", world.admin.headers).status_code == 404
        assert self.by_name(client, world.project, "Fraud", world.admin.headers).status_code == 404
        assert self.by_name(client, world.project, "Fraud%", world.admin.headers).status_code == 404

    def test_only_within_the_project(self, client: TestClient, world: World) -> None:
        new_model(client, world.private, world.admin.headers, "Elsewhere")
        assert self.by_name(client, world.project, "Elsewhere", world.admin.headers).status_code == 404

    def test_wrong_scope(self, client: TestClient, factory: Factory, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "Scoped")
        key = factory.api_key(world.org, {"projects": ["read"]})
        assert self.by_name(client, world.project, "Scoped", api_key_headers(key)).status_code == 403

    def test_other_organization(self, client: TestClient, world: World) -> None:
        new_model(client, world.project, world.admin.headers, "Mine")
        assert self.by_name(client, world.project, "Mine", world.outsider.headers).status_code == 404
        # an invisible project answers 404 whether or not the name exists in it
        assert self.by_name(client, world.private, "Anything", world.viewer.headers).status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        assert self.by_name(client, world.project, "Mine", {}).status_code == 401

    def test_malformed(self, client: TestClient, world: World) -> None:
        for name in ("x" * 201, "nul\x00", "line\nbreak"):
            assert self.by_name(client, world.project, name, world.admin.headers).status_code == 422
        response = client.get("/api/v1/projects/bad%20id/models/by-name/x", headers=world.admin.headers)
        assert response.status_code == 422


class TestUpdateModel:
    def url(self, model: dict) -> str:
        return f"/api/v1/models/{model['id']}"

    def test_updates_only_the_fields_sent(self, client: TestClient, world: World) -> None:
        model = new_model(
            client, world.project, world.admin.headers, **{k: v for k, v in SPEC_BODY.items() if k != "name"}
        )
        body = {"description": "Now with more features", "model_type": "regression", "framework": None}
        response = client.put(self.url(model), json=body, headers=world.developer.headers)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert (data["description"], data["model_type"], data["framework"]) == (
            "Now with more features",
            "regression",
            None,
        )
        assert (data["name"], data["task_type"], data["tags"]) == (
            model["name"],
            model["task_type"],
            model["tags"],
        )
        assert data["updated_at"] >= model["updated_at"]
        assert client.get(self.url(model), headers=world.viewer.headers).json()["data"] == data

    def test_renames_when_the_name_is_free(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, "Old name")
        new_model(client, world.project, world.admin.headers, "Taken")
        response = client.put(self.url(model), json={"name": "Taken"}, headers=world.admin.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "CONFLICT"
        response = client.put(self.url(model), json={"name": "New name"}, headers=world.admin.headers)
        assert response.status_code == 200
        by_name = client.get(
            f"/api/v1/projects/{world.project}/models/by-name/New%20name", headers=world.admin.headers
        )
        assert by_name.json()["data"]["id"] == model["id"]
        same = client.put(self.url(model), json={"name": "New name"}, headers=world.admin.headers)
        assert same.status_code == 200

    def test_tags_replace_the_keys_and_keep_values(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["fraud", "finance", "old"])
        headers = world.admin.headers
        client.put(f"{self.url(model)}/tags/finance", json={"value": "emea"}, headers=headers)
        response = client.put(self.url(model), json={"tags": ["finance", "new", "fraud"]}, headers=headers)
        assert response.json()["data"]["tags"] == ["finance", "fraud", "new"]
        tags = client.get(f"{self.url(model)}/tags", headers=headers).json()["data"]
        assert tags == [
            {"key": "finance", "value": "emea"},
            {"key": "fraud", "value": ""},
            {"key": "new", "value": ""},
        ]
        cleared = client.put(self.url(model), json={"tags": []}, headers=headers)
        assert cleared.json()["data"]["tags"] == []

    def test_viewer_cannot_update(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(self.url(model), json={"description": "x"}, headers=world.viewer.headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(self.url(model), json={"description": "x"}, headers=world.outsider.headers)
        assert response.status_code == 404

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.put(self.url(model), json={"description": "x"}).status_code == 401

    @pytest.mark.parametrize(
        "body",
        [
            {"name": None},
            {"name": ""},
            {"name": "x" * 10_000},
            {"name": "a/b"},
            {"model_type": None},
            {"model_type": "astrology"},
            {"tags": None},
            {"tags": ["bad key"]},
            {"project_id": "proj_other"},
            {"organization_id": "org_other"},
            {"created_by": "user_x"},
            {"version_count": 3},
        ],
    )
    def test_malformed(self, client: TestClient, world: World, body: dict) -> None:
        model = new_model(client, world.project, world.admin.headers)
        response = client.put(self.url(model), json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert client.get(self.url(model), headers=world.admin.headers).json()["data"] == model


class TestDeleteModel:
    def test_deletes_the_model_and_its_versions(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = new_model(client, world.project, world.admin.headers, tags=["a"])
        add_version(factory, model, world.org, "1.0.0")
        add_version(factory, model, world.org, "1.1.0")
        keep = new_model(client, world.project, world.admin.headers, "Keep")
        add_version(factory, keep, world.org, "1.0.0")
        response = client.delete(f"/api/v1/models/{model['id']}", headers=world.developer.headers)
        assert response.status_code == 204
        assert response.content == b""
        assert client.get(f"/api/v1/models/{model['id']}", headers=world.admin.headers).status_code == 404
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
            assert session.scalar(select(func.count()).select_from(ModelTag)) == 0
            assert session.get(RegisteredModel, keep["id"]) is not None
        assert names(listed(client, world.project, world.admin.headers)) == ["Keep"]

    def test_viewer_and_write_only_key_cannot_delete(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        model = new_model(client, world.project, world.admin.headers)
        url = f"/api/v1/models/{model['id']}"
        assert client.delete(url, headers=world.viewer.headers).status_code == 403
        write_only = factory.api_key(world.org, {"models": ["read", "write"]})
        assert client.delete(url, headers=api_key_headers(write_only)).status_code == 403
        deleter = factory.api_key(world.org, {"models": ["delete"]})
        assert client.delete(url, headers=api_key_headers(deleter)).status_code == 204

    def test_other_organization(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert (
            client.delete(f"/api/v1/models/{model['id']}", headers=world.outsider.headers).status_code == 404
        )
        assert client.get(f"/api/v1/models/{model['id']}", headers=world.admin.headers).status_code == 200

    def test_anonymous(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        assert client.delete(f"/api/v1/models/{model['id']}").status_code == 401

    def test_malformed(self, client: TestClient, world: World) -> None:
        assert client.delete("/api/v1/models/bad%00id", headers=world.admin.headers).status_code == 422


class TestModelCounts:
    def test_project_and_organization_count_their_models(self, client: TestClient, world: World) -> None:
        for name in ("a", "b", "c"):
            new_model(client, world.project, world.admin.headers, name)
        new_model(client, world.private, world.admin.headers, "d")
        new_model(client, world.other_project, world.outsider.headers, "e")
        project = client.get(f"/api/v1/projects/{world.project}", headers=world.admin.headers).json()["data"]
        assert (project["model_count"], project["experiment_count"], project["deployment_count"]) == (3, 0, 0)
        projects = client.get(
            f"/api/v1/organizations/{world.org}/projects", headers=world.admin.headers
        ).json()
        assert {p["name"]: p["model_count"] for p in projects["data"]} == {"Fraud": 3, "Secret": 1}
        organization = client.get(f"/api/v1/organizations/{world.org}", headers=world.admin.headers).json()
        assert organization["data"]["model_count"] == 4
