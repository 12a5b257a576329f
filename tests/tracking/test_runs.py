from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tests.factories import Factory
from tests.tracking.conftest import (
    World,
    audit_rows,
    error_of,
    log_metrics,
    new_experiment,
    new_run,
    ok,
    outbox,
    run_url,
    set_status,
)

RUN_FIELDS = {
    "id",
    "experiment_id",
    "run_name",
    "status",
    "started_at",
    "ended_at",
    "duration_seconds",
    "user",
    "created_by",
    "lifecycle_stage",
    "params",
    "tags",
    "metrics",
    "created_at",
}


@pytest.fixture
def experiment(client: TestClient, world: World) -> dict:
    return new_experiment(client, world.project, world.admin.headers)


class TestCreateRun:
    def test_spec_body(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(
            client,
            experiment["id"],
            world.developer.headers,
            run_name="run_001",
            parameters={"max_depth": 5, "learning_rate": 0.1, "n_estimators": 200, "optimizer": "adam"},
            tags={"team": "growth"},
        )
        assert set(run) == RUN_FIELDS
        assert run["id"].startswith("run_")
        assert run["run_name"] == "run_001"
        assert run["status"] == "running"
        assert run["started_at"] is not None
        assert run["ended_at"] is None
        assert run["params"] == {
            "learning_rate": "0.1",
            "max_depth": "5",
            "n_estimators": "200",
            "optimizer": "adam",
        }
        assert run["tags"] == {"team": "growth"}
        assert run["user"] == world.developer.email
        assert run["created_by"]["id"] == world.developer.user_id

    def test_generated_name_and_scheduled_runs(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        first = new_run(client, experiment["id"], world.admin.headers)
        second = new_run(client, experiment["id"], world.admin.headers, status="scheduled")
        assert (first["run_name"], second["run_name"]) == ("run_001", "run_002")
        assert second["status"] == "scheduled"
        assert second["started_at"] is None

    def test_explicit_start_time_keeps_milliseconds(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, start_time="2024-01-15T08:00:00.123Z")
        assert run["started_at"] == "2024-01-15T08:00:00.123000Z"

    @pytest.mark.parametrize(
        "body",
        [
            {"run_name": "x" * 251},
            {"run_name": "line\nbreak"},
            {"parameters": {"bad key!": 1}},
            {"parameters": {"a/../b": 1}},
            {"parameters": {"/abs": 1}},
            {"parameters": {"k" * 251: 1}},
            {"parameters": {"long": "v" * 6001}},
            {"parameters": {"nul": "a\x00b"}},
            {"tags": {"t": "v" * 8001}},
            {"status": "completed"},
            {"start_time": "1960-01-01T00:00:00Z"},
            {"unexpected": True},
        ],
    )
    def test_invalid_bodies_are_422(
        self, client: TestClient, world: World, experiment: dict, body: dict
    ) -> None:
        response = client.post(
            f"/api/v1/experiments/{experiment['id']}/runs", json=body, headers=world.admin.headers
        )
        assert response.status_code == 422, response.text

    def test_list_runs_newest_first_with_status_filter(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        runs = [new_run(client, experiment["id"], world.admin.headers, run_name=f"r{i}") for i in range(3)]
        ok(set_status(client, experiment["id"], runs[0]["id"], world.admin.headers, "completed"))
        url = f"/api/v1/experiments/{experiment['id']}/runs"
        assert [run["run_name"] for run in ok(client.get(url, headers=world.viewer.headers))] == [
            "r2",
            "r1",
            "r0",
        ]
        completed = ok(client.get(url, params={"status": "completed"}, headers=world.viewer.headers))
        assert [run["run_name"] for run in completed] == ["r0"]


class TestRunStatus:
    def test_lifecycle_with_timestamps(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, status="scheduled")
        started = ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "running"))
        assert started["started_at"] is not None and started["ended_at"] is None
        ended = ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "completed"))
        assert ended["status"] == "completed"
        assert ended["ended_at"] is not None
        assert ended["duration_seconds"] >= 0

    def test_ended_run_cannot_run_again(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "failed"))
        for status in ("running", "completed", "scheduled"):
            response = set_status(client, experiment["id"], run["id"], world.admin.headers, status)
            assert response.status_code == 409
            assert error_of(response)["code"] == "CONFLICT"
        # the same status again changes nothing
        assert (
            ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "failed"))["status"]
            == "failed"
        )

    def test_explicit_end_time(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, start_time="2024-01-15T08:00:00Z")
        url = f"{run_url(experiment['id'], run['id'])}/status"
        ended = ok(
            client.put(
                url,
                json={"status": "completed", "end_time": "2024-01-15T10:30:00Z"},
                headers=world.admin.headers,
            )
        )
        assert ended["duration_seconds"] == 9000
        early = new_run(client, experiment["id"], world.admin.headers, start_time="2024-01-15T08:00:00Z")
        response = client.put(
            f"{run_url(experiment['id'], early['id'])}/status",
            json={"status": "completed", "end_time": "2024-01-15T07:00:00Z"},
            headers=world.admin.headers,
        )
        assert response.status_code == 422

    def test_events_for_completed_and_failed_runs(
        self, client: TestClient, factory: Factory, world: World, experiment: dict
    ) -> None:
        good = new_run(client, experiment["id"], world.admin.headers, run_name="good")
        bad = new_run(client, experiment["id"], world.admin.headers, run_name="bad")
        killed = new_run(client, experiment["id"], world.admin.headers, run_name="killed")
        ok(
            log_metrics(
                client, experiment["id"], good["id"], world.admin.headers, [{"name": "acc", "value": 0.9}]
            )
        )
        ok(set_status(client, experiment["id"], good["id"], world.admin.headers, "completed"))
        ok(set_status(client, experiment["id"], bad["id"], world.admin.headers, "failed"))
        ok(set_status(client, experiment["id"], killed["id"], world.admin.headers, "killed"))
        events = [event for event in outbox(factory) if event.organization_id == world.org]
        assert [(event.type, event.payload["run_id"]) for event in events] == [
            ("run.completed", good["id"]),
            ("run.failed", bad["id"]),
        ]
        payload = events[0].payload
        assert payload["experiment_id"] == experiment["id"]
        assert payload["project_id"] == world.project
        assert payload["metrics"] == {"acc": 0.9}
        assert payload["ended_at"].endswith("Z")

    def test_refused_change_records_no_event(
        self, client: TestClient, factory: Factory, world: World, experiment: dict
    ) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        assert (
            set_status(client, experiment["id"], run["id"], world.viewer.headers, "completed").status_code
            == 403
        )
        assert [event for event in outbox(factory) if event.organization_id == world.org] == []
        assert (
            ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))["status"]
            == "running"
        )

    def test_audited(self, client: TestClient, factory: Factory, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        ok(set_status(client, experiment["id"], run["id"], world.admin.headers, "completed"))
        [row] = audit_rows(factory, world.org, "tracking:update_run_status")
        assert row.resource_id == run["id"]
        assert row.details["to_status"] == "completed"


class TestParams:
    def test_logged_once_same_value_again_is_fine(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, parameters={"lr": 0.1})
        url = f"{run_url(experiment['id'], run['id'])}/params"
        data = ok(client.post(url, json={"params": {"lr": 0.1, "depth": 3}}, headers=world.admin.headers))
        assert data == {"run_id": run["id"], "keys": ["depth", "lr"]}
        fetched = ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))
        assert fetched["params"] == {"depth": "3", "lr": "0.1"}

    def test_a_different_value_is_409_and_nothing_is_stored(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, parameters={"lr": "0.1"})
        url = f"{run_url(experiment['id'], run['id'])}/params"
        response = client.post(url, json={"params": {"lr": "0.2", "new": "x"}}, headers=world.admin.headers)
        assert response.status_code == 409
        assert error_of(response)["details"][0]["field"] == "params.lr"
        fetched = ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))
        assert fetched["params"] == {"lr": "0.1"}

    def test_json_values_are_stored_as_json_text(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        url = f"{run_url(experiment['id'], run['id'])}/params"
        ok(
            client.post(
                url,
                json={"params": {"layers": [64, 32], "flag": True, "none": None}},
                headers=world.admin.headers,
            )
        )
        params = ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))["params"]
        assert params == {"flag": "true", "layers": "[64, 32]", "none": "null"}

    @pytest.mark.parametrize(
        "body",
        [
            {"params": {"": 1}},
            {"params": {"a\\b": 1}},
            {"params": {f"k{i}": i for i in range(1001)}},
            {"params": []},
        ],
    )
    def test_invalid_keys(self, client: TestClient, world: World, experiment: dict, body: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        response = client.post(
            f"{run_url(experiment['id'], run['id'])}/params", json=body, headers=world.admin.headers
        )
        assert response.status_code == 422


class TestTags:
    def test_set_and_replace(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers, tags={"team": "a"})
        url = f"{run_url(experiment['id'], run['id'])}/tags"
        ok(
            client.post(
                url,
                json={"tags": {"team": "b", "mlflow.note.content": "long\nnote"}},
                headers=world.admin.headers,
            )
        )
        tags = ok(client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers))["tags"]
        assert tags == {"mlflow.note.content": "long\nnote", "team": "b"}


class TestAccess:
    def test_viewer_reads_but_cannot_write(self, client: TestClient, world: World, experiment: dict) -> None:
        run = new_run(client, experiment["id"], world.admin.headers)
        base = run_url(experiment["id"], run["id"])
        assert client.get(base, headers=world.viewer.headers).status_code == 200
        for path, body in (
            ("/params", {"params": {"a": 1}}),
            ("/tags", {"tags": {"a": "b"}}),
            ("/metrics", {"metrics": [{"name": "a", "value": 1}]}),
        ):
            assert client.post(base + path, json=body, headers=world.viewer.headers).status_code == 403
        assert (
            set_status(client, experiment["id"], run["id"], world.viewer.headers, "completed").status_code
            == 403
        )

    def test_other_tenants_run_answers_like_a_missing_one(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        # another organisation's run through our experiment, and through its own experiment
        for experiment_id, run_id in (
            (experiment["id"], world.other_run),
            (world.other_experiment, world.other_run),
        ):
            foreign = client.get(run_url(experiment_id, run_id), headers=world.admin.headers)
            missing_experiment = experiment_id == world.other_experiment
            missing = client.get(
                run_url("exp_missing" if missing_experiment else experiment_id, "run_missing"),
                headers=world.admin.headers,
            )
            assert foreign.status_code == missing.status_code == 404
            assert error_of(foreign) == error_of(missing)
        write = client.post(
            f"{run_url(world.other_experiment, world.other_run)}/metrics",
            json={"metrics": [{"name": "a", "value": 1}]},
            headers=world.admin.headers,
        )
        assert write.status_code == 404

    def test_a_run_of_another_experiment_is_not_found(
        self, client: TestClient, world: World, experiment: dict
    ) -> None:
        other = new_experiment(client, world.project, world.admin.headers, "Other")
        run = new_run(client, other["id"], world.admin.headers)
        response = client.get(run_url(experiment["id"], run["id"]), headers=world.admin.headers)
        assert response.status_code == 404
        assert error_of(response)["message"] == "No such run in this experiment"


def test_times_are_utc_iso(client: TestClient, world: World, experiment: dict) -> None:
    run = new_run(client, experiment["id"], world.admin.headers)
    started = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))
    assert started.tzinfo is not None
    assert abs((datetime.now(UTC) - started).total_seconds()) < 600
