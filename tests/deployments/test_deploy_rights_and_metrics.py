"""Two things a tenant could get from the platform it should not: deploying model
versions with a key that may not read models, and other organisations' deployment
names, versions and traffic from ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.deployments.platform import (
    Tiny,
    deploy,
    deployed,
    onnx_file,
    predict,
    records,
    register,
    upload,
)
from tests.factories import Factory, World

TOKEN = "scrape-token-for-the-tests-0001"


def refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code


# --- deploying needs models: read --------------------------------------------------------------
def test_a_deployments_write_key_cannot_deploy_without_reading_models(
    client: TestClient, factory: Factory, world: World, tiny: Tiny
) -> None:
    model = register(client, world)
    first = upload(client, model, world.developer.headers, onnx_file(tiny.first))["id"]
    second = upload(client, model, world.developer.headers, onnx_file(tiny.second))["id"]
    deploys_only = {"X-API-Key": factory.api_key(world.org, {"deployments": ["read", "write"]})}
    deploys_and_reads = {
        "X-API-Key": factory.api_key(world.org, {"deployments": ["read", "write"], "models": ["read"]})
    }

    refused(deploy(client, world, "fraud-api", first, headers=deploys_only), 403, "INSUFFICIENT_PERMISSIONS")
    listed = client.get(f"/api/v1/projects/{world.project}/deployments", headers=deploys_only)
    assert listed.json()["data"] == []  # nothing was created

    deployment = deploy(client, world, "fraud-api", first, headers=deploys_and_reads)
    assert deployment.status_code == 201, deployment.text
    url = f"/api/v1/deployments/{deployment.json()['data']['id']}"
    refused(
        client.put(url, json={"model_version_id": second}, headers=deploys_only),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    assert client.get(url, headers=deploys_only).json()["data"]["model_version"]["id"] == first
    # Changing the configuration deploys nothing: deployments: write is enough.
    assert client.put(url, json={"min_instances": 0}, headers=deploys_only).status_code == 200

    assert client.put(url, json={"model_version_id": second}, headers=deploys_and_reads).status_code == 200
    refused(client.post(f"{url}/rollback", json={}, headers=deploys_only), 403, "INSUFFICIENT_PERMISSIONS")
    assert client.get(url, headers=deploys_only).json()["data"]["model_version"]["id"] == second
    assert client.post(f"{url}/rollback", json={}, headers=deploys_and_reads).status_code == 200

    # People: a developer's role covers both; a viewer's neither.
    assert deploy(client, world, "fraud-two", first, headers=world.developer.headers).status_code == 201
    refused(
        deploy(client, world, "fraud-three", first, headers=world.viewer.headers),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )


# --- GET /metrics ------------------------------------------------------------------------------
def test_without_a_scrape_token_metrics_carry_no_tenant_labels(
    client: TestClient, factory: Factory, world: World, tiny: Tiny
) -> None:
    ours = upload(client, register(client, world), world.developer.headers, onnx_file(tiny.first))
    deployed(client, world, "acme-api", ours["id"])
    theirs = upload(
        client,
        register(client, world, "Theirs", project=world.other_project),
        world.outsider.headers,
        onnx_file(tiny.first),
    )
    created = client.post(
        f"/api/v1/projects/{world.other_project}/deployments",
        json={"name": "globex-secret-api", "model_version_id": theirs["id"]},
        headers=world.outsider.headers,
    )
    assert created.status_code == 201, created.text
    assert predict(client, "acme-api", world.key_headers, records(tiny.X[:2])).status_code == 200
    assert (
        predict(client, "globex-secret-api", world.outsider.headers, records(tiny.X[:3])).status_code == 200
    )

    scraped = client.get("/metrics")  # anyone on the network, signed in or not
    assert scraped.status_code == 200
    text = scraped.text
    for name in ("acme-api", "globex-secret-api", 'deployment="', 'version="'):
        assert name not in text
    assert 'maestro_predictions_total{outcome="success"} 2.0' in text  # totals still tell how busy
    assert "maestro_predicted_rows_total 5.0" in text


@pytest.mark.slow
def test_with_a_scrape_token_only_the_scraper_sees_deployments(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess], tiny: Tiny
) -> None:
    settings = make_settings(metrics_token=TOKEN)
    with TestClient(create_app(settings)) as setup:
        factory = Factory(setup.app)  # type: ignore[arg-type]
        org = factory.organization("Globex")
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")
        model = setup.post(
            f"/api/v1/projects/{project}/models",
            json={"name": "Churn", "model_type": "classification"},
            headers=admin.headers,
        ).json()["data"]["id"]
        version = upload(setup, model, admin.headers, onnx_file(tiny.first))
        created = setup.post(
            f"/api/v1/projects/{project}/deployments",
            json={"name": "globex-secret-api", "model_version_id": version["id"]},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        outsider = factory.user(factory.organization("Evil"), "admin")

    server = serve(settings)
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        answer = http.post(
            "/api/v1/inference/globex-secret-api",
            json={"instances": records(tiny.X[:2])},
            headers=admin.headers,
        )
        assert answer.status_code == 200, answer.text
        for headers in (
            {},
            outsider.headers,  # a platform credential is not the scrape token
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            denied = http.get("/metrics", headers=headers)
            refused(denied, 401, "AUTHENTICATION_REQUIRED")
            assert "globex-secret-api" not in denied.text
        scraped = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200
        assert (
            'maestro_predictions_total{deployment="globex-secret-api",outcome="success",version="1.0.0"} 1.0'
            in scraped.text
        )


# --- who acted: an API key is named by its name and prefix -------------------------------------
def test_what_an_api_key_does_is_shown_by_its_name_and_prefix(
    client: TestClient, factory: Factory, world: World, tiny: Tiny
) -> None:
    model = register(client, world)
    first = upload(client, model, world.developer.headers, onnx_file(tiny.first))["id"]
    second = upload(client, model, world.developer.headers, onnx_file(tiny.second))["id"]
    key = factory.api_key(world.org, {"deployments": ["read", "write"], "models": ["read"]})
    headers = {"X-API-Key": key}
    created = deploy(client, world, "churn-api", first, headers=headers)
    assert created.status_code == 201, created.text
    url = f"/api/v1/deployments/{created.json()['data']['id']}"
    assert client.put(url, json={"model_version_id": second}, headers=headers).status_code == 200

    detail = client.get(url, headers=world.developer.headers).json()["data"]
    listed = client.get(f"/api/v1/organizations/{world.org}/api-keys", headers=world.admin.headers)
    name, prefix = next(
        (item["name"], item["prefix"]) for item in listed.json()["data"] if key.startswith(item["prefix"])
    )
    assert detail["created_by"]["kind"] == "api_key"
    assert (detail["created_by"]["name"], detail["created_by"]["prefix"]) == (name, prefix)
    assert [
        (entry["actor"]["type"], entry["actor"]["name"], entry["actor"]["prefix"])
        for entry in detail["history"]
    ] == [("api_key", name, prefix)] * 2
    logs = client.get(f"{url}/logs", headers=world.developer.headers).json()["data"]
    messages = [entry["message"] for entry in logs]
    assert any(message.startswith(f"Created by API key {name} ({prefix})") for message in messages)
    assert any(f"by API key {name} ({prefix})" in message for message in messages if "Deployed" in message)

    # A person is still named as before.
    person = deploy(client, world, "churn-two", first, headers=world.developer.headers).json()["data"]
    assert person["created_by"]["id"] == world.developer.user_id
    assert person["created_by"]["kind"] == "user"
