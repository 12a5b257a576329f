"""Deployments through the API: deploying registered versions (skops, ONNX, trusted
pickles), redeploying and rolling back with their history, logs, metrics, events and
audit; what may not be deployed; validation; and tenancy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sqlalchemy import select

from maestro.deployments.predictions import logged_predictions
from maestro.events.models import OutboxEvent
from maestro.identity.models import AuditLog
from tests.deployments.platform import (
    FEATURES,
    Tiny,
    deploy,
    deployed,
    flush,
    joblib_file,
    onnx_file,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import Factory, World
from tests.runtimes.payloads import CreatesFile, Doubler


def labels(response: Any) -> list[Any]:
    assert response.status_code == 200, response.text
    return [p["prediction"] for p in response.json()["predictions"]]


def outbox_types(factory: Factory) -> list[str]:
    with factory.database.session(write=False) as session:
        return list(
            session.scalars(select(OutboxEvent.type).order_by(OutboxEvent.created_at, OutboxEvent.id))
        )


def audited(factory: Factory, resource_id: str) -> list[str]:
    with factory.database.session(write=False) as session:
        return list(
            session.scalars(
                select(AuditLog.action)
                .where(AuditLog.resource_id == resource_id)
                .order_by(AuditLog.created_at, AuditLog.id)
            )
        )


def get(client: TestClient, deployment_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def logs(
    client: TestClient, deployment_id: str, headers: dict[str, str], **query: Any
) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/deployments/{deployment_id}/logs", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def totals(client: TestClient, deployment_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/api/v1/deployments/{deployment_id}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["totals"]


def three_versions_deployed(client: TestClient, world: World, tiny: Tiny) -> tuple[str, list[dict[str, Any]]]:
    """A deployment "fraud-api" that served versions 1.0.0 and 1.0.1 and now serves 1.0.2."""
    model = register(client, world)
    versions = [
        upload(client, model, world.developer.headers, skops_file(m))
        for m in (tiny.first, tiny.second, tiny.first)
    ]
    deployment = deployed(client, world, "fraud-api", versions[0]["id"])["id"]
    for version in versions[1:]:
        moved = client.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": version["id"]},
            headers=world.developer.headers,
        )
        assert moved.status_code == 200, moved.text
    return deployment, versions


class TestDeployingAScikitLearnModel:
    """Registered as skops, served as ONNX converted from it: deploy, predict, deploy a
    second version, roll back, and see all of it in the history, logs and metrics."""

    def test_the_whole_life_of_a_deployment(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        model = register(client, world)
        v1 = upload(client, model, world.developer.headers, skops_file(tiny.first), filename="v1.skops")
        v2 = upload(client, model, world.developer.headers, skops_file(tiny.second), filename="v2.skops")
        assert (v1["format"], v2["format"]) == ("skops", "skops")

        created = deployed(
            client, world, "fraud-api", v1["id"], environment="staging", reason="first release"
        )
        assert created["status"] == "active"
        assert created["endpoint_url"] == "/api/v1/inference/fraud-api"
        assert created["model_version"] == {
            "id": v1["id"],
            "model_id": model,
            "model_name": "Fraud Detector",
            "version": "1.0.0",
        }
        assert created["current_instances"] == 1
        assert created["health_status"] == "healthy"
        assert created["serving"]["serving"] == "onnx (converted from skops)"
        assert created["serving"]["conversion"]["status"] == "converted"
        assert [f["name"] for f in created["serving"]["input_schema"]["inputs"]] == list(FEATURES)
        assert [(h["action"], h["reason"]) for h in created["history"]] == [("created", "first release")]
        deployment = created["id"]

        rows = tiny.X[:5]
        single = predict(client, "fraud-api", world.viewer.headers, records(rows))
        assert labels(single) == tiny.first.predict(rows).tolist()
        body = single.json()
        assert body["success"] is True
        first = body["predictions"][0]
        np.testing.assert_allclose(
            [first["probabilities"]["0"], first["probabilities"]["1"]],
            tiny.first.predict_proba(rows[:1])[0],
            atol=1e-5,
        )
        assert first["confidence"] == max(first["probabilities"].values())
        assert body["model_info"]["version"] == "1.0.0"
        assert body["model_info"]["model_id"] == model
        assert body["model_info"]["prediction_id"].startswith("pred_")
        assert body["metadata"]["latency_ms"] > 0
        batch = predict(client, "fraud-api", world.key_headers, records(tiny.X[:50]), batch=True)
        assert labels(batch) == tiny.first.predict(tiny.X[:50]).tolist()

        redeployed = client.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": v2["id"], "reason": "retrained"},
            headers=world.developer.headers,
        )
        assert redeployed.status_code == 200, redeployed.text
        assert redeployed.json()["data"]["model_version"]["version"] == "1.0.1"
        assert (
            labels(predict(client, "fraud-api", world.viewer.headers, records(rows)))
            == tiny.second.predict(rows).tolist()
        )

        rolled = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            json={"reason": "Performance issues with current version"},
            headers=world.developer.headers,
        )
        assert rolled.status_code == 200, rolled.text
        detail = rolled.json()["data"]
        assert detail["model_version"]["id"] == v1["id"]
        assert [(h["action"], h["model_version"]["version"]) for h in detail["history"]] == [
            ("rolled_back", "1.0.0"),
            ("deployed", "1.0.1"),
            ("created", "1.0.0"),
        ]
        assert detail["history"][0]["reason"] == "Performance issues with current version"
        assert detail["history"][0]["previous_version_id"] == v2["id"]
        assert detail["history"][0]["actor"]["id"] == world.developer.user_id
        answer = predict(client, "fraud-api", world.viewer.headers, records(rows))
        assert labels(answer) == tiny.first.predict(rows).tolist()
        assert answer.json()["model_info"]["version"] == "1.0.0"

        flush(app)
        events = logs(client, deployment, world.viewer.headers)
        assert [e["event"] for e in events] == ["rolled_back", "deployed", "created"]
        assert "Rolled back to version 1.0.0 (was 1.0.1)" in events[0]["message"]
        assert "Performance issues" in events[0]["message"]
        assert "Deployed version 1.0.1 (was 1.0.0)" in events[1]["message"]
        assert {e["level"] for e in events} == {"info"}

        counted = totals(client, deployment, world.viewer.headers)
        assert counted["request_count"] == 4
        assert counted["prediction_count"] == 5 + 50 + 5 + 5
        assert counted["error_count"] == 0
        assert counted["error_rate"] == 0
        assert 0 < counted["latency_p50"] <= counted["latency_p99"] <= counted["latency_max"]

        listed = client.get(f"/api/v1/projects/{world.project}/deployments", headers=world.viewer.headers)
        [row] = listed.json()["data"]
        assert row["request_count_24h"] == 4
        assert row["last_request_at"] is not None
        with factory.database.session(write=False) as session:
            logged = logged_predictions(session, deployment)
        assert len(logged) == 4
        assert logged[0].inputs[0] == dict(zip(FEATURES, rows[0].tolist(), strict=True))
        assert logged[0].outputs[0]["prediction"] == tiny.first.predict(rows[:1])[0]
        assert logged[1].row_count == 50
        assert {log.status_code for log in logged} == {200}
        assert [log.model_version_id for log in logged] == [v1["id"], v1["id"], v2["id"], v1["id"]]

        deployment_events = [t for t in outbox_types(factory) if t.startswith("deployment.")]
        assert deployment_events == ["deployment.created", "deployment.updated", "deployment.rolled_back"]
        assert audited(factory, deployment) == [
            "deployments:create_deployment",
            "deployments:update_deployment",
            "deployments:rollback_deployment",
        ]

    def test_rollback_to_a_named_version(self, client: TestClient, world: World, tiny: Tiny) -> None:
        deployment, versions = three_versions_deployed(client, world, tiny)
        rolled = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            json={"target_version_id": versions[1]["id"]},
            headers=world.developer.headers,
        )
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["data"]["model_version"]["version"] == "1.0.1"
        again = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            json={"target_version_id": versions[1]["id"]},
            headers=world.developer.headers,
        )
        assert again.status_code == 409
        assert again.json()["error"]["message"] == "The deployment already serves this version"

    def test_nothing_to_roll_back_to(self, client: TestClient, world: World, tiny: Tiny) -> None:
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(tiny.first))
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        response = client.post(
            f"/api/v1/deployments/{deployment}/rollback", json={}, headers=world.developer.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]["details"] == [
            {"field": "target_version_id", "message": "no previous version; name one"}
        ]


class TestRollbackWithoutABody:
    """The spec's rollback "to previous version" needs no body: none, an empty one and
    ``{}`` all serve the version served before; a body still names a target."""

    BODIES = {
        "no-body": {"content": None, "headers": {}},
        "empty-json-body": {"content": b"", "headers": {"Content-Type": "application/json"}},
        "empty-object": {"content": b"{}", "headers": {"Content-Type": "application/json"}},
    }

    @pytest.mark.parametrize("sent", list(BODIES))
    def test_rolls_back_to_the_previous_version(
        self, client: TestClient, world: World, tiny: Tiny, sent: str
    ) -> None:
        model = register(client, world)
        v1, v2 = (
            upload(client, model, world.developer.headers, skops_file(m)) for m in (tiny.first, tiny.second)
        )
        deployment = deployed(client, world, "fraud-api", v1["id"])["id"]
        moved = client.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": v2["id"]},
            headers=world.developer.headers,
        )
        assert moved.status_code == 200, moved.text
        body = self.BODIES[sent]
        rolled = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            content=body["content"],
            headers={**world.developer.headers, **body["headers"]},
        )
        assert rolled.status_code == 200, rolled.text
        detail = rolled.json()["data"]
        assert detail["model_version"]["id"] == v1["id"]
        assert detail["history"][0]["action"] == "rolled_back"
        assert detail["history"][0]["previous_version_id"] == v2["id"]
        assert detail["history"][0]["reason"] is None
        rows = tiny.X[:8]
        assert (
            labels(predict(client, "fraud-api", world.key_headers, records(rows)))
            == tiny.first.predict(rows).tolist()
        )

    def test_an_explicit_target_and_reason_still_count(
        self, client: TestClient, world: World, tiny: Tiny
    ) -> None:
        deployment, versions = three_versions_deployed(client, world, tiny)
        rolled = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            json={"target_version_id": versions[0]["id"], "reason": "the first was better"},
            headers=world.developer.headers,
        )
        assert rolled.status_code == 200, rolled.text
        detail = rolled.json()["data"]
        assert detail["model_version"]["id"] == versions[0]["id"]  # not the previous (1.0.1)
        assert detail["history"][0]["reason"] == "the first was better"

    @pytest.mark.parametrize("sent", list(BODIES))
    def test_nothing_to_roll_back_to_is_a_clear_conflict(
        self, client: TestClient, world: World, tiny: Tiny, sent: str
    ) -> None:
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(tiny.first))
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        body = self.BODIES[sent]
        response = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            content=body["content"],
            headers={**world.developer.headers, **body["headers"]},
        )
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "CONFLICT"
        assert error["message"] == "This deployment has served no other version to roll back to"
        assert error["details"] == [
            {"field": "target_version_id", "message": "no previous version; name one"}
        ]
        assert get(client, deployment, world.viewer.headers)["model_version"]["id"] == version["id"]

    @pytest.mark.parametrize(
        "content", [b"[]", b"null-ish", b'{"target": "v"}', b'{"target_version_id": 7}', b'{"reason": "x"']
    )
    def test_a_malformed_body_is_refused_and_changes_nothing(
        self, client: TestClient, world: World, tiny: Tiny, content: bytes
    ) -> None:
        model = register(client, world)
        v1, v2 = (
            upload(client, model, world.developer.headers, skops_file(m)) for m in (tiny.first, tiny.second)
        )
        deployment = deployed(client, world, "fraud-api", v1["id"])["id"]
        client.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": v2["id"]},
            headers=world.developer.headers,
        )
        response = client.post(
            f"/api/v1/deployments/{deployment}/rollback",
            content=content,
            headers={**world.developer.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert get(client, deployment, world.viewer.headers)["model_version"]["id"] == v2["id"]

    def test_the_openapi_document_says_the_body_is_optional(self, client: TestClient) -> None:
        operation = client.get("/api/v1/openapi.json").json()["paths"][
            "/api/v1/deployments/{deployment_id}/rollback"
        ]
        assert operation["post"]["requestBody"].get("required", False) is False


class TestDeployingAnOnnxModel:
    def test_deploy_predict_redeploy_and_roll_back(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny
    ) -> None:
        model = register(client, world, "Fraud ONNX")
        v1 = upload(client, model, world.developer.headers, onnx_file(tiny.first), filename="v1.onnx")
        v2 = upload(client, model, world.developer.headers, onnx_file(tiny.second), filename="v2.onnx")
        assert v1["format"] == "onnx"
        created = deployed(client, world, "fraud-onnx", v1["id"])
        assert created["serving"]["serving"] == "onnx"
        assert created["serving"]["classes"] == [0, 1]
        rows = tiny.X[10:20]
        assert (
            labels(predict(client, "fraud-onnx", world.key_headers, records(rows)))
            == tiny.first.predict(rows).tolist()
        )
        as_lists = predict(client, "fraud-onnx", world.key_headers, rows.tolist())
        assert labels(as_lists) == tiny.first.predict(rows).tolist()

        response = client.put(
            f"/api/v1/deployments/{created['id']}",
            json={"model_version_id": v2["id"]},
            headers=world.developer.headers,
        )
        assert response.status_code == 200, response.text
        assert (
            labels(predict(client, "fraud-onnx", world.key_headers, records(rows)))
            == tiny.second.predict(rows).tolist()
        )
        response = client.post(
            f"/api/v1/deployments/{created['id']}/rollback", json={}, headers=world.admin.headers
        )
        assert response.status_code == 200, response.text
        answer = predict(client, "fraud-onnx", world.key_headers, records(rows))
        assert labels(answer) == tiny.first.predict(rows).tolist()
        assert answer.json()["model_info"]["version_id"] == v1["id"]

        flush(app)
        assert [e["event"] for e in logs(client, created["id"], world.viewer.headers)] == [
            "rolled_back",
            "deployed",
            "created",
        ]
        assert totals(client, created["id"], world.viewer.headers)["request_count"] == 4


class TestTrust:
    def test_a_pickle_deploys_only_once_an_admin_trusts_it(
        self, client: TestClient, world: World, tiny: Tiny
    ) -> None:
        model = register(client, world)
        version = upload(client, model, world.developer.headers, joblib_file(tiny.first), filename="m.joblib")
        assert version["format"] == "joblib"
        refused = deploy(client, world, "fraud-api", version["id"])
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "CONFLICT"
        assert error["message"].startswith("Version 1.0.0 cannot be deployed: A joblib file runs code")
        assert "organisation admin" in error["message"]
        assert error["details"] == [{"field": "model_version_id", "message": "not_trusted"}]
        listed = client.get(f"/api/v1/projects/{world.project}/deployments", headers=world.admin.headers)
        assert listed.json()["data"] == []

        trusted = client.put(
            f"/api/v1/models/{model}/versions/1.0.0/trusted",
            json={"trusted": True},
            headers=world.admin.headers,
        )
        assert trusted.status_code == 200, trusted.text
        created = deployed(client, world, "fraud-api", version["id"])
        assert created["serving"]["serving"] == "onnx (converted from joblib)"
        rows = tiny.X[:4]
        assert (
            labels(predict(client, "fraud-api", world.viewer.headers, records(rows)))
            == tiny.first.predict(rows).tolist()
        )

    def test_an_untrusted_redeploy_keeps_the_previous_version(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny
    ) -> None:
        model = register(client, world)
        good = upload(client, model, world.developer.headers, skops_file(tiny.first))
        pickled = upload(client, model, world.developer.headers, joblib_file(tiny.second))
        deployment = deployed(client, world, "fraud-api", good["id"])["id"]
        response = client.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": pickled["id"]},
            headers=world.developer.headers,
        )
        assert response.status_code == 409
        assert get(client, deployment, world.viewer.headers)["model_version"]["id"] == good["id"]
        rows = tiny.X[:6]
        assert (
            labels(predict(client, "fraud-api", world.viewer.headers, records(rows)))
            == tiny.first.predict(rows).tolist()
        )
        [failure] = logs(client, deployment, world.viewer.headers, level="error")
        assert failure["event"] == "load_failed"
        assert failure["message"].startswith("Version 1.0.1 could not be deployed: A joblib file runs code")
        assert "keeps serving the version it served" in failure["message"]
        assert failure["details"]["reason"] == "not_trusted"


# --- files that must never load -------------------------------------------------------------------
def onnx_with_external_data(location: str) -> bytes:
    weights = numpy_helper.from_array(np.ones((len(FEATURES), 1), dtype=np.float32), "W")
    set_external_data(weights, location=location)
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "main",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class TestHostileModelFiles:
    """Each is refused at deploy with a clear error; nothing it asks for happens, and
    what was deployed keeps serving."""

    @pytest.fixture
    def serving(self, client: TestClient, world: World, tiny: Tiny) -> str:
        model = register(client, world, "Serving")
        version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
        deployed(client, world, "still-serving", version["id"])
        return register(client, world, "Hostile")

    def still_serves(self, client: TestClient, world: World, tiny: Tiny) -> None:
        rows = tiny.X[:3]
        assert (
            labels(predict(client, "still-serving", world.key_headers, records(rows)))
            == tiny.first.predict(rows).tolist()
        )

    def refused(
        self, client: TestClient, world: World, version: dict[str, Any], status: int
    ) -> dict[str, Any]:
        response = deploy(client, world, "hostile", version["id"])
        assert response.status_code == status, response.text
        listed = client.get(f"/api/v1/projects/{world.project}/deployments", headers=world.admin.headers)
        assert [d["name"] for d in listed.json()["data"]] == ["still-serving"]
        return response.json()["error"]

    def test_a_skops_file_with_an_untrusted_type(
        self, client: TestClient, world: World, tiny: Tiny, serving: str
    ) -> None:
        pipeline = make_pipeline(Doubler(), Ridge()).fit(tiny.X, tiny.X[:, 0])
        version = upload(client, serving, world.developer.headers, skops_file(pipeline), filename="m.skops")
        error = self.refused(client, world, version, 409)
        assert "tests.runtimes.payloads.Doubler" in error["message"]
        assert error["details"] == [{"field": "model_version_id", "message": "untrusted_types"}]
        self.still_serves(client, world, tiny)

    def test_a_pickle_that_runs_code_when_loaded(
        self, client: TestClient, world: World, tiny: Tiny, serving: str, tmp_path: Path
    ) -> None:
        marker = tmp_path / "pwned"
        version = upload(client, serving, world.developer.headers, joblib_file(CreatesFile(str(marker))))
        error = self.refused(client, world, version, 409)
        assert error["details"] == [{"field": "model_version_id", "message": "not_trusted"}]
        assert not marker.exists()
        self.still_serves(client, world, tiny)

    def test_onnx_external_data_pointing_outside(
        self, client: TestClient, world: World, tiny: Tiny, serving: str
    ) -> None:
        # Refused already at upload, where every loadable file is loaded in an isolated process.
        response = client.post(
            f"/api/v1/models/{serving}/versions",
            files={"model_file": ("m.onnx", onnx_with_external_data("../../etc/passwd"))},
            headers=world.developer.headers,
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert "external data" in error["message"]
        assert "/etc/passwd" not in error["message"]
        assert error["details"] == [{"field": "model_file", "message": "external_data"}]
        listed = client.get(f"/api/v1/models/{serving}/versions", headers=world.admin.headers)
        assert listed.json()["data"] == []
        self.still_serves(client, world, tiny)

    def test_a_file_that_is_no_model(
        self, client: TestClient, world: World, tiny: Tiny, serving: str
    ) -> None:
        version = upload(client, serving, world.developer.headers, b"certainly not a model")
        error = self.refused(client, world, version, 422)
        assert error["message"].startswith("Version 1.0.0 cannot be deployed:")
        self.still_serves(client, world, tiny)


# --- changing, validating, deleting --------------------------------------------------------------
@pytest.fixture
def version(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    model = register(client, world)
    return upload(client, model, world.developer.headers, onnx_file(tiny.first))


class TestCreateValidation:
    @pytest.mark.parametrize(
        "name", ["Fraud-API", "fraud_api", "-fraud", "fraud-", "a" * 64, "", "fraud api"]
    )
    def test_names_are_dns_labels(
        self, client: TestClient, world: World, version: dict[str, Any], name: str
    ) -> None:
        response = deploy(client, world, name, version["id"])
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "name"

    def test_a_name_is_unique_in_the_organisation(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployed(client, world, "fraud-api", version["id"])
        duplicate = deploy(client, world, "fraud-api", version["id"])
        assert duplicate.status_code == 409
        assert duplicate.json()["error"]["details"] == [
            {"field": "name", "message": "already used in this organisation"}
        ]
        theirs = upload(
            client,
            register(client, world, "Theirs", project=world.other_project),
            world.outsider.headers,
            onnx_file(tiny.first),
        )
        elsewhere = client.post(
            f"/api/v1/projects/{world.other_project}/deployments",
            json={"name": "fraud-api", "model_version_id": theirs["id"]},
            headers=world.outsider.headers,
        )
        assert elsewhere.status_code == 201, elsewhere.text

    def test_a_version_of_another_project_or_organisation_is_refused_alike(
        self, client: TestClient, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        theirs = upload(
            client,
            register(client, world, "Theirs", project=world.other_project),
            world.outsider.headers,
            onnx_file(tiny.first),
        )
        other_project = factory.project(world.org, world.admin, "organization", name="Elsewhere")
        response = client.post(
            f"/api/v1/projects/{other_project}/models",
            json={"name": "Elsewhere model", "model_type": "classification"},
            headers=world.developer.headers,
        )
        sibling = upload(
            client, response.json()["data"]["id"], world.developer.headers, onnx_file(tiny.first)
        )
        bodies = []
        for version_id in (theirs["id"], sibling["id"], "version_doesnotexist"):
            refused = deploy(client, world, "fraud-api", version_id)
            assert refused.status_code == 422
            bodies.append(refused.json()["error"])
        assert bodies[0] == bodies[1] == bodies[2]
        assert bodies[0]["details"] == [
            {"field": "model_version_id", "message": "No such model version in this project"}
        ]

    @pytest.mark.parametrize(
        "extra",
        [
            {"min_instances": 3, "max_instances": 2},
            {"max_instances": 0},
            {"instance_type": "huge"},
            {"environment": "moon"},
            {"deployment_config": {"env_vars": {"1BAD": "x"}}},
            {"deployment_config": {"resource_limits": {"memory": "lots"}}},
            {"deployment_config": {"anything": True}},
            {"owner": "someone"},
        ],
    )
    def test_invalid_configuration(
        self, client: TestClient, world: World, version: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        response = deploy(client, world, "fraud-api", version["id"], **extra)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    @pytest.mark.parametrize(
        "content", [b"{", b"[" * 100_000 + b"]" * 100_000, b'{"name": "a\\u0000b", "model_version_id": "x"}']
    )
    def test_malformed_bodies(self, client: TestClient, world: World, content: bytes) -> None:
        response = client.post(
            f"/api/v1/projects/{world.project}/deployments",
            content=content,
            headers={**world.developer.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.json()["success"] is False


class TestChanges:
    def test_configuration(
        self, client: TestClient, factory: Factory, world: World, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        response = client.put(
            f"/api/v1/deployments/{deployment}",
            json={
                "environment": "production",
                "instance_type": "medium",
                "min_instances": 2,
                "max_instances": 10,
                "auto_scaling": True,
                "deployment_config": {
                    "env_vars": {"MODEL_THRESHOLD": "0.5"},
                    "resource_limits": {"memory": "2Gi", "cpu": "1000m"},
                },
            },
            headers=world.developer.headers,
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert (data["environment"], data["instance_type"], data["min_instances"], data["max_instances"]) == (
            "production",
            "medium",
            2,
            10,
        )
        assert data["deployment_config"]["resource_limits"] == {"memory": "2Gi", "cpu": "1000m"}
        assert data["model_version"]["id"] == version["id"]
        [updated, _] = logs(client, deployment, world.viewer.headers)
        assert updated["event"] == "updated"
        assert set(updated["details"]["changed"]) == {
            "environment",
            "instance_type",
            "min_instances",
            "max_instances",
            "auto_scaling",
            "deployment_config",
        }
        assert outbox_types(factory)[-1] == "deployment.updated"
        narrower = client.put(
            f"/api/v1/deployments/{deployment}", json={"max_instances": 1}, headers=world.developer.headers
        )
        assert narrower.status_code == 422
        assert (
            client.put(
                f"/api/v1/deployments/{deployment}", json={"name": None}, headers=world.developer.headers
            ).status_code
            == 422
        )

    def test_filters(self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]) -> None:
        deployed(client, world, "fraud-dev", version["id"])
        prod = deployed(client, world, "fraud-prod", version["id"], environment="production")
        other_model = register(client, world, "Other")
        other_version = upload(client, other_model, world.developer.headers, onnx_file(tiny.second))
        deployed(client, world, "other-dev", other_version["id"])
        client.put(
            f"/api/v1/deployments/{prod['id']}", json={"status": "inactive"}, headers=world.developer.headers
        )

        def names(**query: str) -> list[str]:
            response = client.get(
                f"/api/v1/projects/{world.project}/deployments", params=query, headers=world.viewer.headers
            )
            assert response.status_code == 200, response.text
            return sorted(d["name"] for d in response.json()["data"])

        assert names() == ["fraud-dev", "fraud-prod", "other-dev"]
        assert names(environment="production") == ["fraud-prod"]
        assert names(status="inactive") == ["fraud-prod"]
        assert names(status="active") == ["fraud-dev", "other-dev"]
        assert names(model_id=other_model) == ["other-dev"]
        assert (
            client.get(
                f"/api/v1/projects/{world.project}/deployments",
                params={"status": "gone"},
                headers=world.viewer.headers,
            ).status_code
            == 422
        )

    def test_deactivate_and_activate(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        off = client.put(
            f"/api/v1/deployments/{deployment}", json={"status": "inactive"}, headers=world.admin.headers
        )
        assert off.status_code == 200
        assert (off.json()["data"]["status"], off.json()["data"]["current_instances"]) == ("inactive", 0)
        stopped = predict(client, "fraud-api", world.key_headers, records(tiny.X[:1]))
        assert stopped.status_code == 503
        assert stopped.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        on = client.put(
            f"/api/v1/deployments/{deployment}", json={"status": "active"}, headers=world.admin.headers
        )
        assert on.status_code == 200
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:1])).status_code == 200
        # Other lines (the refused prediction's, written by the background recorder
        # whenever it flushes) may sit among them; the status changes come newest first.
        changes = [e["event"] for e in logs(client, deployment, world.viewer.headers)]
        assert [e for e in changes if e in ("activated", "deactivated")][:2] == ["activated", "deactivated"]

    def test_renaming_moves_the_endpoint(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:1])).status_code == 200
        renamed = client.put(
            f"/api/v1/deployments/{deployment}", json={"name": "fraud-v2"}, headers=world.admin.headers
        )
        assert renamed.json()["data"]["endpoint_url"] == "/api/v1/inference/fraud-v2"
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:1])).status_code == 404
        assert predict(client, "fraud-v2", world.key_headers, records(tiny.X[:1])).status_code == 200

    def test_delete_frees_the_name(
        self, client: TestClient, factory: Factory, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:1])).status_code == 200
        assert (
            client.delete(f"/api/v1/deployments/{deployment}", headers=world.developer.headers).status_code
            == 204
        )
        assert client.get(f"/api/v1/deployments/{deployment}", headers=world.admin.headers).status_code == 404
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:1])).status_code == 404
        assert "deployment.deleted" in outbox_types(factory)
        deployed(client, world, "fraud-api", version["id"])

    def test_a_deleted_version_fails_the_deployment(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        removed = client.delete(
            f"/api/v1/models/{version['model_id']}/versions/1.0.0", headers=world.admin.headers
        )
        assert removed.status_code == 204
        detail = get(client, deployment, world.viewer.headers)
        assert (detail["status"], detail["health_status"], detail["model_version"]) == (
            "failed",
            "unhealthy",
            None,
        )
        assert detail["history"][0]["model_version"] == {
            "id": None,
            "model_id": None,
            "model_name": None,
            "version": "1.0.0",
        }

    def test_the_public_url_makes_endpoints_absolute(self, make_settings: Any, tiny: Tiny) -> None:
        from maestro.app import create_app

        app = create_app(make_settings(public_url="https://ml.example.com/"))
        factory = Factory(app)
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin)
        with TestClient(app) as client:
            model = client.post(
                f"/api/v1/projects/{project}/models",
                json={"name": "M", "model_type": "classification"},
                headers=admin.headers,
            ).json()["data"]["id"]
            version = upload(client, model, admin.headers, onnx_file(tiny.first))
            response = client.post(
                f"/api/v1/projects/{project}/deployments",
                json={"name": "fraud-api", "model_version_id": version["id"]},
                headers=admin.headers,
            )
        assert response.json()["data"]["endpoint_url"] == "https://ml.example.com/api/v1/inference/fraud-api"


class TestLogsAndMetricsQueries:
    def test_log_filters(self, client: TestClient, world: World, version: dict[str, Any]) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        client.put(
            f"/api/v1/deployments/{deployment}", json={"min_instances": 0}, headers=world.admin.headers
        )
        every = logs(client, deployment, world.viewer.headers)
        assert len(every) == 2
        assert logs(client, deployment, world.viewer.headers, limit=1) == every[:1]
        assert logs(client, deployment, world.viewer.headers, level="warn") == []
        assert logs(client, deployment, world.viewer.headers, since="2999-01-01T00:00:00Z") == []
        assert logs(client, deployment, world.viewer.headers, until="2000-01-01T00:00:00Z") == []
        bad = client.get(
            f"/api/v1/deployments/{deployment}/logs", params={"level": "loud"}, headers=world.viewer.headers
        )
        assert bad.status_code == 422

    def test_metrics_windows(self, client: TestClient, world: World, version: dict[str, Any]) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        path = f"/api/v1/deployments/{deployment}/metrics"
        hourly = client.get(
            path,
            params={
                "granularity": "1h",
                "start_time": "2026-01-01T00:00:00Z",
                "end_time": "2026-01-02T00:00:00Z",
                "metric_names[]": ["request_count", "latency_p95"],
            },
            headers=world.viewer.headers,
        )
        assert hourly.status_code == 200, hourly.text
        data = hourly.json()["data"]
        assert len(data["series"]) == 24
        assert data["series"][0] == {
            "timestamp": "2026-01-01T00:00:00Z",
            "values": {"request_count": 0, "latency_p95": None},
        }
        assert data["metrics"] == ["request_count", "latency_p95"]
        for params in (
            {"granularity": "1m", "start_time": "2020-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"},
            {"start_time": "2026-01-02T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"},
            {"granularity": "2m"},
            {"metric_names[]": "accuracy"},
            {"start_time": "0001-01-01T00:00:00Z"},
        ):
            assert client.get(path, params=params, headers=world.viewer.headers).status_code == 422, params


# --- who may ---------------------------------------------------------------------------------
class TestTenancy:
    def test_another_tenants_deployment_answers_like_a_missing_one(
        self, client: TestClient, world: World, tiny: Tiny
    ) -> None:
        theirs_model = register(client, world, "Theirs", project=world.other_project)
        theirs_version = upload(client, theirs_model, world.outsider.headers, onnx_file(tiny.first))
        response = client.post(
            f"/api/v1/projects/{world.other_project}/deployments",
            json={"name": "globex-api", "model_version_id": theirs_version["id"]},
            headers=world.outsider.headers,
        )
        theirs = response.json()["data"]["id"]
        requests = [
            ("GET", "", None),
            ("PUT", "", {"min_instances": 0}),
            ("DELETE", "", None),
            ("POST", "/rollback", {}),
            ("GET", "/logs", None),
            ("GET", "/metrics", None),
        ]
        for method, suffix, body in requests:
            answers = [
                client.request(
                    method, f"/api/v1/deployments/{target}{suffix}", json=body, headers=world.admin.headers
                )
                for target in (theirs, "deploy_doesnotexist")
            ]
            assert [a.status_code for a in answers] == [404, 404], (method, suffix)
            assert answers[0].json()["error"] == answers[1].json()["error"], (method, suffix)
        by_name = [
            predict(client, name, world.admin.headers, records(tiny.X[:1]))
            for name in ("globex-api", "no-such-api")
        ]
        assert [a.status_code for a in by_name] == [404, 404]
        assert by_name[0].json()["error"] == by_name[1].json()["error"]
        assert predict(client, "globex-api", world.outsider.headers, records(tiny.X[:1])).status_code == 200

    def test_an_inference_key_predicts_but_does_not_deploy(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:2])).status_code == 200
        assert deploy(client, world, "fraud-two", version["id"], headers=world.key_headers).status_code == 403
        assert (
            client.put(
                f"/api/v1/deployments/{deployment}", json={"min_instances": 0}, headers=world.key_headers
            )
        ).status_code == 403
        assert (
            client.post(
                f"/api/v1/deployments/{deployment}/rollback", json={}, headers=world.key_headers
            ).status_code
            == 403
        )
        assert client.get(f"/api/v1/deployments/{deployment}", headers=world.key_headers).status_code == 403

    def test_a_viewer_predicts_but_does_not_deploy(
        self, client: TestClient, world: World, tiny: Tiny, version: dict[str, Any]
    ) -> None:
        deployed(client, world, "fraud-api", version["id"])
        assert predict(client, "fraud-api", world.viewer.headers, records(tiny.X[:2])).status_code == 200
        assert (
            deploy(client, world, "fraud-two", version["id"], headers=world.viewer.headers).status_code == 403
        )

    def test_a_private_project_is_invisible_to_members_outside_it(
        self, client: TestClient, world: World, tiny: Tiny
    ) -> None:
        private = world.private
        model = client.post(
            f"/api/v1/projects/{private}/models",
            json={"name": "Secret model", "model_type": "classification"},
            headers=world.admin.headers,
        ).json()["data"]["id"]
        version = upload(client, model, world.admin.headers, onnx_file(tiny.first))
        response = client.post(
            f"/api/v1/projects/{private}/deployments",
            json={"name": "secret-api", "model_version_id": version["id"]},
            headers=world.admin.headers,
        )
        assert response.status_code == 201, response.text
        hidden = predict(client, "secret-api", world.viewer.headers, records(tiny.X[:1]))
        missing = predict(client, "no-such-api", world.viewer.headers, records(tiny.X[:1]))
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == missing.json()["error"]
        world.acme.add_to_project(private, world.viewer, "viewer")
        assert predict(client, "secret-api", world.viewer.headers, records(tiny.X[:1])).status_code == 200
