from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from maestro.storage import ArtifactStore
from tests.factories import Factory
from tests.registry.conftest import new_model, stored_files
from tests.tracking.conftest import (
    World,
    audit_rows,
    error_of,
    experiments_url,
    log_metrics,
    new_experiment,
    new_run,
    ok,
    run_url,
    set_status,
)

LIST_FIELDS = {
    "id",
    "project_id",
    "name",
    "description",
    "status",
    "model_id",
    "config",
    "owner",
    "tags",
    "lifecycle_stage",
    "run_count",
    "best_run",
    "created_by",
    "started_at",
    "completed_at",
    "duration_seconds",
    "created_at",
    "updated_at",
}


class TestCreateExperiment:
    def test_created_with_the_platform_shape(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = new_experiment(
            client,
            world.project,
            world.developer.headers,
            "Feature Engineering Experiment",
            description="Testing new feature combinations",
            model_id=model["id"],
            config={"max_depth": [3, 5, 7], "learning_rate": [0.01, 0.1]},
            tags={"team": "growth"},
        )
        assert set(data) == LIST_FIELDS
        assert data["id"].startswith("exp_")
        assert data["name"] == "Feature Engineering Experiment"
        assert data["model_id"] == model["id"]
        assert data["config"] == {"max_depth": [3, 5, 7], "learning_rate": [0.01, 0.1]}
        assert data["tags"] == {"team": "growth"}
        assert data["status"] == "created"
        assert data["run_count"] == 0
        assert data["best_run"] is None
        assert data["owner"] == world.developer.email
        assert data["created_by"]["id"] == world.developer.user_id
        assert data["lifecycle_stage"] == "active"

    def test_duplicate_name_in_the_project_is_409(self, client: TestClient, world: World) -> None:
        new_experiment(client, world.project, world.developer.headers, "Tuning")
        response = client.post(
            experiments_url(world.project), json={"name": "Tuning"}, headers=world.admin.headers
        )
        assert response.status_code == 409
        assert error_of(response)["code"] == "CONFLICT"
        # the same name in another project is fine
        new_experiment(client, world.private, world.admin.headers, "Tuning")

    def test_model_of_another_project_is_refused(self, client: TestClient, world: World) -> None:
        foreign = new_model(client, world.other_project, world.outsider.headers)
        response = client.post(
            experiments_url(world.project),
            json={"name": "Uses a foreign model", "model_id": foreign["id"]},
            headers=world.admin.headers,
        )
        assert response.status_code == 422
        assert error_of(response)["details"][0]["field"] == "model_id"

    @pytest.mark.parametrize(
        "body",
        [
            {"name": ""},
            {"name": "   "},
            {"name": "x" * 201},
            {"name": "bad\x00name"},
            {"name": "tab\tname"},
            {"name": "ok", "config": {"nested": "\x00"}},
            {"name": "ok", "config": [1, 2]},
            {"name": "ok", "unknown": 1},
            {"name": "ok", "model_id": "../../etc"},
            {"name": "ok", "config": {"blob": "x" * 70_000}},
        ],
    )
    def test_invalid_bodies_are_422(self, client: TestClient, world: World, body: dict) -> None:
        response = client.post(experiments_url(world.project), json=body, headers=world.admin.headers)
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "VALIDATION_ERROR"

    def test_viewer_cannot_create(self, client: TestClient, world: World) -> None:
        response = client.post(
            experiments_url(world.project), json={"name": "x"}, headers=world.viewer.headers
        )
        assert response.status_code == 403

    def test_audited(self, client: TestClient, factory: Factory, world: World) -> None:
        data = new_experiment(client, world.project, world.admin.headers)
        rows = audit_rows(factory, world.org, "tracking:create_experiment")
        assert [(row.resource_type, row.resource_id) for row in rows] == [("experiments", data["id"])]


class TestTrackerApi:
    """`/api/v1/experiments`: the experiment tracker's contract on the same tables."""

    def test_create_validates_and_lowercases_the_name(self, client: TestClient, world: World) -> None:
        response = client.post(
            "/api/v1/experiments",
            json={
                "project_id": world.project,
                "name": "Test-Experiment_1",
                "owner": "alice",
                "description": "d",
            },
            headers=world.developer.headers,
        )
        data = ok(response, 201)
        assert data["name"] == "test-experiment_1"
        assert data["owner"] == "alice"
        assert data["project_id"] == world.project

    @pytest.mark.parametrize(
        "body",
        [
            {"name": "invalid name with spaces!", "owner": "alice"},
            {"name": "", "owner": "alice"},
            {"name": "x" * 101},
            {"name": "ok", "owner": ""},
            {"name": "ok", "owner": "o" * 51},
            {"name": "ok", "description": "d" * 501},
        ],
    )
    def test_tracker_validation(self, client: TestClient, world: World, body: dict) -> None:
        response = client.post(
            "/api/v1/experiments", json={"project_id": world.project, **body}, headers=world.admin.headers
        )
        assert response.status_code == 422

    def test_duplicate_within_the_project_is_409(self, client: TestClient, world: World) -> None:
        body = {"project_id": world.project, "name": "dup"}
        ok(client.post("/api/v1/experiments", json=body, headers=world.admin.headers), 201)
        again = client.post("/api/v1/experiments", json={**body, "name": "DUP"}, headers=world.admin.headers)
        assert again.status_code == 409

    def test_unknown_or_foreign_project_is_404(self, client: TestClient, world: World) -> None:
        for project in ("proj_missing", world.other_project):
            response = client.post(
                "/api/v1/experiments", json={"project_id": project, "name": "x"}, headers=world.admin.headers
            )
            assert response.status_code == 404
            assert error_of(response)["message"] == "No such project"

    def test_lists_every_readable_project_with_page_and_per_page(
        self, client: TestClient, world: World
    ) -> None:
        for number in range(3):
            new_experiment(
                client,
                world.project,
                world.admin.headers,
                f"shared-{number}",
            )
        new_experiment(client, world.private, world.admin.headers, "secret")
        # the developer sees the organisation-wide project only; the admin sees both
        developer = ok(client.get("/api/v1/experiments", headers=world.developer.headers))
        assert sorted(item["name"] for item in developer) == ["shared-0", "shared-1", "shared-2"]
        admin = client.get(
            "/api/v1/experiments", params={"per_page": 2, "page": 2}, headers=world.admin.headers
        )
        body = admin.json()
        assert body["pagination"]["total"] == 4
        assert body["pagination"]["limit"] == 2
        assert body["pagination"]["page"] == 2
        assert len(body["data"]) == 2
        # other tenants' experiments never appear
        outsider = ok(client.get("/api/v1/experiments", headers=world.outsider.headers))
        assert [item["id"] for item in outsider] == [world.other_experiment]

    def test_owner_and_status_filters(self, client: TestClient, world: World) -> None:
        mine = ok(
            client.post(
                "/api/v1/experiments",
                json={"project_id": world.project, "name": "mine", "owner": "alice"},
                headers=world.admin.headers,
            ),
            201,
        )
        new_experiment(client, world.project, world.admin.headers, "theirs")
        new_run(client, mine["id"], world.admin.headers)
        by_owner = ok(
            client.get("/api/v1/experiments", params={"owner": "alice"}, headers=world.admin.headers)
        )
        assert [item["name"] for item in by_owner] == ["mine"]
        running = ok(
            client.get("/api/v1/experiments", params={"status": "running"}, headers=world.admin.headers)
        )
        assert [item["name"] for item in running] == ["mine"]
        created = ok(
            client.get("/api/v1/experiments", params={"status": "created"}, headers=world.admin.headers)
        )
        assert [item["name"] for item in created] == ["theirs"]

    def test_patch_is_an_alias_of_put(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        data = ok(
            client.patch(
                f"/api/v1/experiments/{experiment['id']}",
                json={"status": "running"},
                headers=world.admin.headers,
            )
        )
        assert data["status"] == "running"

    def test_api_key_needs_the_experiments_scope(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        new_experiment(client, world.project, world.admin.headers)
        reader = factory.api_key(world.org, {"experiments": ["read"]})
        other = factory.api_key(world.org, {"models": ["read"]})
        assert len(ok(client.get("/api/v1/experiments", headers={"X-API-Key": reader}))) == 1
        assert client.get("/api/v1/experiments", headers={"X-API-Key": other}).status_code == 403


class TestListExperiments:
    def test_filters(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.admin.headers)
        first = new_experiment(
            client,
            world.project,
            world.admin.headers,
            "Churn baseline",
            model_id=model["id"],
            description="xgboost",
        )
        second = new_experiment(client, world.project, world.developer.headers, "Fraud search")
        url = experiments_url(world.project)

        def names(**params: str) -> list[str]:
            return [item["name"] for item in ok(client.get(url, params=params, headers=world.viewer.headers))]

        assert names() == ["Fraud search", "Churn baseline"]  # newest first
        assert names(model_id=model["id"]) == ["Churn baseline"]
        assert names(created_by=world.developer.user_id) == ["Fraud search"]
        assert names(search="XGB") == ["Churn baseline"]
        assert names(search="100%") == []
        new_run(client, second["id"], world.admin.headers)
        assert names(status="running") == ["Fraud search"]
        assert names(status="created") == ["Churn baseline"]
        assert first["id"]

    def test_model_filter_outside_the_project_is_422(self, client: TestClient, world: World) -> None:
        response = client.get(
            experiments_url(world.project), params={"model_id": "model_nope"}, headers=world.admin.headers
        )
        assert response.status_code == 422

    def test_run_counts_times_and_best_run(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(
            client, world.project, world.admin.headers, config={"primary_metric": "accuracy"}
        )
        runs = [new_run(client, experiment["id"], world.admin.headers, run_name=f"r{i}") for i in range(3)]
        for run, accuracy in zip(runs, (0.91, 0.95, 0.93), strict=True):
            points = [
                {"name": "accuracy", "value": accuracy},
                {"name": "val_accuracy", "value": accuracy - 0.01},
            ]
            ok(log_metrics(client, experiment["id"], run["id"], world.admin.headers, points))
            ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "completed"))
        [item] = ok(client.get(experiments_url(world.project), headers=world.admin.headers))
        assert item["run_count"] == 3
        assert item["status"] == "completed"
        assert item["best_run"]["id"] == runs[1]["id"]
        assert item["best_run"]["metrics"] == {"accuracy": 0.95, "val_accuracy": 0.94}
        assert item["started_at"] is not None
        assert item["completed_at"] is not None
        assert item["duration_seconds"] >= 0

    def test_paging_is_stable(self, client: TestClient, world: World) -> None:
        for number in range(5):
            new_experiment(client, world.project, world.admin.headers, f"e{number}")
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            body = client.get(
                experiments_url(world.project), params=params, headers=world.admin.headers
            ).json()
            seen += [item["name"] for item in body["data"]]
            cursor = body["pagination"]["next_cursor"]
            if not cursor:
                break
        assert seen == ["e4", "e3", "e2", "e1", "e0"]


class TestExperimentStatus:
    def test_follows_the_runs(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        url = f"/api/v1/experiments/{experiment['id']}"

        def status() -> str:
            return ok(client.get(url, headers=world.admin.headers))["status"]

        assert status() == "created"
        first = new_run(client, experiment["id"], world.admin.headers)
        second = new_run(client, experiment["id"], world.admin.headers)
        assert status() == "running"
        ok(set_status(client, experiment["id"], first["id"], world.admin.headers, "failed"))
        assert status() == "running"
        ok(set_status(client, experiment["id"], second["id"], world.admin.headers, "completed"))
        assert status() == "completed"

    def test_all_runs_failed(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        run = new_run(client, experiment["id"], world.admin.headers)
        ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "killed"))
        assert ok(client.get(f"/api/v1/experiments/{experiment['id']}", headers=world.admin.headers))[
            "status"
        ] == ("failed")

    def test_set_by_hand_only_without_runs(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        url = f"/api/v1/experiments/{experiment['id']}"
        assert (
            ok(client.put(url, json={"status": "completed"}, headers=world.admin.headers))["status"]
            == "completed"
        )
        new_run(client, experiment["id"], world.admin.headers)
        response = client.put(url, json={"status": "failed"}, headers=world.admin.headers)
        assert response.status_code == 409
        assert ok(client.get(url, headers=world.admin.headers))["status"] == "running"


class TestGetUpdateDelete:
    def test_detail_lists_recent_runs(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        run = new_run(client, experiment["id"], world.admin.headers, run_name="first")
        data = ok(client.get(f"/api/v1/experiments/{experiment['id']}", headers=world.viewer.headers))
        assert [(item["id"], item["run_name"], item["status"]) for item in data["runs"]] == [
            (run["id"], "first", "running")
        ]

    def test_update_fields(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers, description="old")
        url = f"/api/v1/experiments/{experiment['id']}"
        data = ok(
            client.put(
                url,
                json={
                    "name": "Renamed",
                    "description": None,
                    "config": {"primary_metric": "loss"},
                    "owner": "bob",
                },
                headers=world.developer.headers,
            )
        )
        assert (data["name"], data["description"], data["config"], data["owner"]) == (
            "Renamed",
            None,
            {"primary_metric": "loss"},
            "bob",
        )

    def test_rename_onto_another_name_is_409(self, client: TestClient, world: World) -> None:
        new_experiment(client, world.project, world.admin.headers, "taken")
        experiment = new_experiment(client, world.project, world.admin.headers, "free")
        response = client.put(
            f"/api/v1/experiments/{experiment['id']}", json={"name": "taken"}, headers=world.admin.headers
        )
        assert response.status_code == 409

    @pytest.mark.parametrize(
        "body", [{"name": None}, {"config": None}, {"status": None}, {"status": "bogus"}]
    )
    def test_nulls_and_bad_values_are_422(self, client: TestClient, world: World, body: dict) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        response = client.put(
            f"/api/v1/experiments/{experiment['id']}", json=body, headers=world.admin.headers
        )
        assert response.status_code == 422

    def test_viewer_reads_but_cannot_change(self, client: TestClient, world: World) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        url = f"/api/v1/experiments/{experiment['id']}"
        assert client.get(url, headers=world.viewer.headers).status_code == 200
        assert client.put(url, json={"name": "x"}, headers=world.viewer.headers).status_code == 403
        assert client.delete(url, headers=world.viewer.headers).status_code == 403
        assert client.post(f"{url}/runs", json={}, headers=world.viewer.headers).status_code == 403

    def test_other_tenants_experiment_answers_like_a_missing_one(
        self, client: TestClient, world: World
    ) -> None:
        for method in ("GET", "PUT", "DELETE"):
            body = {"name": "x"} if method == "PUT" else None
            foreign = client.request(
                method,
                f"/api/v1/experiments/{world.other_experiment}",
                json=body,
                headers=world.admin.headers,
            )
            missing = client.request(
                method, "/api/v1/experiments/exp_missing", json=body, headers=world.admin.headers
            )
            assert foreign.status_code == missing.status_code == 404
            assert error_of(foreign) == error_of(missing)

    def test_private_project_experiment_is_invisible_to_non_members(
        self, client: TestClient, world: World
    ) -> None:
        experiment = new_experiment(client, world.private, world.admin.headers)
        response = client.get(f"/api/v1/experiments/{experiment['id']}", headers=world.developer.headers)
        assert response.status_code == 404

    def test_delete_removes_runs_rows_and_files(
        self, client: TestClient, factory: Factory, world: World
    ) -> None:
        experiment = new_experiment(client, world.project, world.admin.headers)
        run = new_run(client, experiment["id"], world.admin.headers, parameters={"lr": 0.1})
        ok(
            log_metrics(
                client, experiment["id"], run["id"], world.admin.headers, [{"name": "loss", "value": 1}]
            )
        )
        ok(
            client.post(
                f"{run_url(experiment['id'], run['id'])}/artifacts",
                files={"file": ("roc.png", b"png bytes")},
                headers=world.admin.headers,
            ),
            201,
        )
        store: ArtifactStore = factory.app.state.store
        root = store.root
        from pathlib import Path

        assert [path.name for path in stored_files(Path(root)) if "runs" in path.parts]
        response = client.delete(f"/api/v1/experiments/{experiment['id']}", headers=world.developer.headers)
        assert response.status_code == 204
        assert (
            client.get(f"/api/v1/experiments/{experiment['id']}", headers=world.admin.headers).status_code
            == 404
        )
        assert (
            client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers).status_code == 404
        )
        assert not [path for path in stored_files(Path(root)) if "runs" in path.parts]
        from sqlalchemy import func, select

        from maestro.tracking.models import LatestMetric, MetricPoint, RunParam

        with factory.database.session(write=False) as session:
            for table in (MetricPoint, LatestMetric, RunParam):
                assert session.scalar(select(func.count()).select_from(table)) == 0
