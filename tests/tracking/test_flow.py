"""A whole tracking session through the API, as a training script and a person
looking at the results would go through it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.factories import Factory
from tests.tracking.conftest import World, ok


def test_a_tuning_session(client: TestClient, world: World) -> None:
    headers = world.developer.headers
    experiment = ok(
        client.post(
            "/api/v1/experiments",
            json={
                "project_id": world.project,
                "name": "grid-search",
                "config": {"primary_metric": "val_accuracy"},
            },
            headers=headers,
        ),
        201,
    )
    eid = experiment["id"]
    runs = []
    for number, (learning_rate, depth) in enumerate([(0.1, 3), (0.01, 5), (0.2, 7)]):
        run = ok(
            client.post(
                f"/api/v1/experiments/{eid}/runs",
                json={
                    "run_name": f"run_{number:03d}",
                    "parameters": {"learning_rate": learning_rate, "max_depth": depth},
                },
                headers=headers,
            ),
            201,
        )
        base = f"/api/v1/experiments/{eid}/runs/{run['id']}"
        ok(client.post(f"{base}/tags", json={"tags": {"git_sha": f"abc{number}"}}, headers=headers))
        quality = 0.8 + depth / 100
        points = []
        for step in range(1000):
            progress = (step + 1) / 1000
            points += [
                {"name": "loss", "value": 1 - progress * quality, "step": step},
                {"name": "val_accuracy", "value": progress * quality, "step": step},
            ]
        logged = ok(client.post(f"{base}/metrics", json={"metrics": points}, headers=headers))
        assert logged["logged"] == 2000
        upload = client.post(
            f"{base}/artifacts",
            data={"artifact_type": "plot", "path": "plots/loss.png"},
            files={"file": ("loss.png", b"\x89PNG" + bytes(number + 1))},
            headers=headers,
        )
        ok(upload, 201)
        ok(client.put(f"{base}/status", json={"status": "completed"}, headers=headers))
        runs.append(run["id"])

    # a person looks at the results
    viewer = world.viewer.headers
    [listed] = ok(client.get(f"/api/v1/projects/{world.project}/experiments", headers=viewer))
    assert listed["status"] == "completed"
    assert listed["run_count"] == 3
    assert listed["best_run"]["id"] == runs[2]
    assert listed["best_run"]["metric"] == "val_accuracy"
    assert math.isclose(listed["best_run"]["metrics"]["val_accuracy"], 0.87)

    found = ok(
        client.post(
            f"/api/v1/experiments/{eid}/runs/search",
            json={
                "filter": "metrics.val_accuracy > 0.84 and params.max_depth != '3'",
                "order_by": ["metrics.loss"],
            },
            headers=viewer,
        )
    )
    assert [run["id"] for run in found] == [runs[2], runs[1]]

    comparison = ok(
        client.get(
            f"/api/v1/experiments/{eid}/runs/compare", params={"run_ids": ",".join(runs)}, headers=viewer
        )
    )
    assert comparison["differing_params"] == ["learning_rate", "max_depth"]

    chart = ok(
        client.get(
            f"/api/v1/experiments/{eid}/runs/{runs[0]}/metrics/loss",
            params={"max_points": 50},
            headers=viewer,
        )
    )
    assert chart["downsampled"] and len(chart["points"]) <= 50

    best = ok(client.get(f"/api/v1/experiments/{eid}/best-run", params={"metric": "loss"}, headers=viewer))
    assert best["run"]["id"] == runs[2]

    # and the experiment is cleaned up
    assert client.delete(f"/api/v1/experiments/{eid}", headers=world.admin.headers).status_code == 204
    assert ok(client.get(f"/api/v1/projects/{world.project}/experiments", headers=viewer)) == []


@pytest.mark.slow
def test_a_real_server_takes_bare_nan_from_a_python_client(
    client: TestClient, settings: Settings, factory: Factory, serve: Callable[..., RunningProcess]
) -> None:
    """Python's json module (which MLflow's client uses) writes NaN and Infinity as bare
    tokens; a real server over a real socket stores and returns them. (``client`` runs
    the app's lifespan, which closes the factory's database connections.)"""
    org = factory.organization()
    user = factory.user(org, "admin")
    project = factory.project(org, user, "organization")
    server = serve(settings)
    with httpx.Client(base_url=server.base_url, headers=user.headers, timeout=30) as http:
        experiment = http.post(f"/api/v1/projects/{project}/experiments", json={"name": "socket"}).json()[
            "data"
        ]
        run = http.post(f"/api/v1/experiments/{experiment['id']}/runs", json={}).json()["data"]
        base = f"/api/v1/experiments/{experiment['id']}/runs/{run['id']}"
        body = json.dumps(
            {"metrics": [{"name": "odd", "value": math.nan}, {"name": "big", "value": math.inf}]}
        )
        logged = http.post(f"{base}/metrics", content=body, headers={"Content-Type": "application/json"})
        assert logged.status_code == 200, logged.text
        points = [{"name": "loss", "value": 1 / (step + 1), "step": step} for step in range(5000)]
        assert http.post(f"{base}/metrics", json={"metrics": points}).json()["data"]["logged"] == 5000
        metrics = http.get(base).json()["data"]["metrics"]
        assert metrics == {"big": "Infinity", "loss": 1 / 5000, "odd": "NaN"}
