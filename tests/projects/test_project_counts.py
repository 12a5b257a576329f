"""A project's counts of models, experiments and deployments follow what is in it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.deployments.platform import Team, Tiny, deployed, onnx_file, register, upload


def counts(client: TestClient, team: Team, project: str) -> tuple[int, int, int]:
    data = client.get(f"/api/v1/projects/{project}", headers=team.admin.headers).json()["data"]
    return data["model_count"], data["experiment_count"], data["deployment_count"]


def test_counts_follow_models_experiments_and_deployments(client: TestClient, team: Team, tiny: Tiny) -> None:
    assert counts(client, team, team.project) == (0, 0, 0)
    model = register(client, team)
    version = upload(client, model, team.developer.headers, onnx_file(tiny.first))
    experiments = [
        client.post(
            f"/api/v1/projects/{team.project}/experiments",
            json={"name": name},
            headers=team.developer.headers,
        )
        for name in ("baseline", "tuned")
    ]
    assert [response.status_code for response in experiments] == [201, 201]
    deployment = deployed(client, team, "fraud-api", version["id"])
    assert counts(client, team, team.project) == (1, 2, 1)

    listed = client.get(f"/api/v1/organizations/{team.org}/projects", headers=team.admin.headers).json()
    [project] = [p for p in listed["data"] if p["id"] == team.project]
    assert (project["model_count"], project["experiment_count"], project["deployment_count"]) == (1, 2, 1)

    first = experiments[0].json()["data"]["id"]
    assert client.delete(f"/api/v1/experiments/{first}", headers=team.admin.headers).status_code == 204
    removed = client.delete(f"/api/v1/deployments/{deployment['id']}", headers=team.admin.headers)
    assert removed.status_code == 204
    assert counts(client, team, team.project) == (1, 1, 0)
