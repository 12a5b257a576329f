from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.tracking.conftest import World, error_of, log_metrics, new_experiment, new_run, ok


def three_runs(client: TestClient, world: World, **config: Any) -> tuple[str, list[str]]:
    experiment = new_experiment(client, world.project, world.admin.headers, config=config)
    eid = experiment["id"]
    specs = [
        ({"lr": "0.1", "depth": "3"}, {"accuracy": 0.90, "loss": 0.30}),
        ({"lr": "0.01", "depth": "3"}, {"accuracy": 0.95, "loss": 0.25}),
        ({"lr": "0.1", "optimizer": "adam"}, {"accuracy": 0.92, "loss": 0.10, "f1": 0.5}),
    ]
    ids = []
    for number, (params, metrics) in enumerate(specs):
        run = new_run(client, eid, world.admin.headers, run_name=f"r{number}", parameters=params)
        points = [{"name": name, "value": value} for name, value in metrics.items()]
        ok(log_metrics(client, eid, run["id"], world.admin.headers, points))
        ids.append(run["id"])
    return eid, ids


class TestCompare:
    def test_side_by_side_with_the_union_of_keys(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world)
        response = client.get(
            f"/api/v1/experiments/{eid}/runs/compare",
            params={"run_ids": [ids[2], f"{ids[0]},{ids[1]}"]},
            headers=world.viewer.headers,
        )
        data = ok(response)
        assert data["param_keys"] == ["depth", "lr", "optimizer"]
        assert data["metric_keys"] == ["accuracy", "f1", "loss"]
        assert data["differing_params"] == ["depth", "lr", "optimizer"]
        assert [run["id"] for run in data["runs"]] == [ids[2], ids[0], ids[1]]
        assert data["runs"][0]["params"] == {"depth": None, "lr": "0.1", "optimizer": "adam"}
        assert data["runs"][1]["metrics"] == {"accuracy": 0.90, "f1": None, "loss": 0.30}

    def test_runs_of_other_tenants_or_experiments_answer_404(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world)
        foreign = client.get(
            f"/api/v1/experiments/{eid}/runs/compare",
            params={"run_ids": [ids[0], world.other_run]},
            headers=world.admin.headers,
        )
        missing = client.get(
            f"/api/v1/experiments/{eid}/runs/compare",
            params={"run_ids": [ids[0], "run_missing"]},
            headers=world.admin.headers,
        )
        assert foreign.status_code == missing.status_code == 404
        assert (
            error_of(foreign)["message"] == error_of(missing)["message"] == "No such run in this experiment"
        )
        other_experiment = client.get(
            f"/api/v1/experiments/{world.other_experiment}/runs/compare",
            params={"run_ids": world.other_run},
            headers=world.admin.headers,
        )
        assert other_experiment.status_code == 404

    def test_without_run_ids_the_most_recent_runs(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world)
        data = ok(client.get(f"/api/v1/experiments/{eid}/runs/compare", headers=world.viewer.headers))
        assert [run["id"] for run in data["runs"]] == list(reversed(ids))
        empty = new_experiment(client, world.project, world.admin.headers, "empty")
        nothing = ok(
            client.get(f"/api/v1/experiments/{empty['id']}/runs/compare", headers=world.viewer.headers)
        )
        assert nothing["runs"] == []

    @pytest.mark.parametrize("run_ids", [[",,"], ["bad id!"], [f"run_{n}" for n in range(51)]])
    def test_bounds_and_malformed_ids(self, client: TestClient, world: World, run_ids: list[str]) -> None:
        eid, _ = three_runs(client, world)
        response = client.get(
            f"/api/v1/experiments/{eid}/runs/compare",
            params={"run_ids": run_ids},
            headers=world.admin.headers,
        )
        assert response.status_code == 422


class TestBestRun:
    def url(self, eid: str) -> str:
        return f"/api/v1/experiments/{eid}/best-run"

    def test_by_metric_and_direction(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world)
        best = ok(
            client.get(
                self.url(eid), params={"metric": "accuracy", "direction": "max"}, headers=world.viewer.headers
            )
        )
        assert (best["metric"], best["direction"], best["value"], best["run"]["id"]) == (
            "accuracy",
            "max",
            0.95,
            ids[1],
        )
        lowest = ok(
            client.get(
                self.url(eid), params={"metric": "accuracy", "direction": "min"}, headers=world.viewer.headers
            )
        )
        assert lowest["run"]["id"] == ids[0]

    def test_direction_defaults_from_the_name(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world)
        best = ok(client.get(self.url(eid), params={"metric": "loss"}, headers=world.viewer.headers))
        assert (best["direction"], best["run"]["id"]) == ("min", ids[2])

    def test_configured_primary_metric(self, client: TestClient, world: World) -> None:
        eid, ids = three_runs(client, world, primary_metric="loss", primary_metric_direction="max")
        best = ok(client.get(self.url(eid), headers=world.viewer.headers))
        assert (best["metric"], best["direction"], best["run"]["id"]) == ("loss", "max", ids[0])
        [item] = ok(client.get(f"/api/v1/projects/{world.project}/experiments", headers=world.viewer.headers))
        assert (item["best_run"]["id"], item["best_run"]["metric"]) == (ids[0], "loss")

    def test_first_metric_alphabetically_when_none_is_configured(
        self, client: TestClient, world: World
    ) -> None:
        eid, ids = three_runs(client, world)
        best = ok(client.get(self.url(eid), headers=world.viewer.headers))
        assert (best["metric"], best["direction"], best["run"]["id"]) == ("accuracy", "max", ids[1])

    def test_nan_never_wins_and_no_metric_means_null(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        eid = experiment["id"]
        assert ok(client.get(self.url(eid), headers=world.viewer.headers)) is None
        nan_run = new_run(client, eid, world.admin.headers)
        ok(log_metrics(client, eid, nan_run["id"], world.admin.headers, [{"name": "acc", "value": "NaN"}]))
        assert ok(client.get(self.url(eid), params={"metric": "acc"}, headers=world.viewer.headers)) is None
        real = new_run(client, eid, world.admin.headers)
        ok(log_metrics(client, eid, real["id"], world.admin.headers, [{"name": "acc", "value": 0.1}]))
        assert (
            ok(client.get(self.url(eid), params={"metric": "acc"}, headers=world.viewer.headers))["run"]["id"]
            == real["id"]
        )
        assert (
            ok(client.get(self.url(eid), params={"metric": "unknown"}, headers=world.viewer.headers)) is None
        )

    @pytest.mark.parametrize(
        "params", [{"metric": "bad!"}, {"metric": "a/../b"}, {"direction": "up"}, {"metric": ""}]
    )
    def test_malformed(self, client: TestClient, world: World, params: dict) -> None:
        eid, _ = three_runs(client, world)
        assert client.get(self.url(eid), params=params, headers=world.admin.headers).status_code == 422

    def test_other_tenant_is_404(self, client: TestClient, world: World) -> None:
        foreign = client.get(self.url(world.other_experiment), headers=world.admin.headers)
        missing = client.get(self.url("exp_missing"), headers=world.admin.headers)
        assert foreign.status_code == missing.status_code == 404
        assert error_of(foreign) == error_of(missing)
