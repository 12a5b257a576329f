"""A project's counts of models, experiments and deployments follow what is in it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.deployments.platform import Tiny, deployed, onnx_file, register, upload
from tests.factories import World


def counts(client: TestClient, world: World, project: str) -> tuple[int, int, int]:
    data = client.get(f"/api/v1/projects/{project}", headers=world.admin.headers).json()["data"]
    return data["model_count"], data["experiment_count"], data["deployment_count"]


def test_counts_follow_models_experiments_and_deployments(
    client: TestClient, world: World, tiny: Tiny
) -> None:
    assert counts(client, world, world.project) == (0, 0, 0)
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    experiments = [
        client.post(
            f"/api/v1/projects/{world.project}/experiments",
            json={"name": name},
            headers=world.developer.headers,
        )
        for name in ("baseline", "tuned")
    ]
    assert [response.status_code for response in experiments] == [201, 201]
    deployment = deployed(client, world, "fraud-api", version["id"])
    assert counts(client, world, world.project) == (1, 2, 1)

    listed = client.get(f"/api/v1/organizations/{world.org}/projects", headers=world.admin.headers).json()
    [project] = [p for p in listed["data"] if p["id"] == world.project]
    assert (project["model_count"], project["experiment_count"], project["deployment_count"]) == (1, 2, 1)

    first = experiments[0].json()["data"]["id"]
    assert client.delete(f"/api/v1/experiments/{first}", headers=world.admin.headers).status_code == 204
    removed = client.delete(f"/api/v1/deployments/{deployment['id']}", headers=world.admin.headers)
    assert removed.status_code == 204
    assert counts(client, world, world.project) == (1, 1, 0)
