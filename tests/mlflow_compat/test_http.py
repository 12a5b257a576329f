"""The MLflow API over plain HTTP: MLflow's error shape, malformed and hostile input,
access rules, project scoping, and how it lands in Maestro's tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.identity.models import AuditLog
from maestro.tracking.models import Experiment, MetricPoint, RunArtifact
from tests.factories import Factory
from tests.mlflow_compat.conftest import API, ARTIFACTS, World, error_of, mlflow_call, ok


def new_experiment(client: TestClient, world: World, name: str = "tuning", **headers: Any) -> str:
    return ok(mlflow_call(client, "POST", "experiments/create", world.headers(**headers), {"name": name}))[
        "experiment_id"
    ]


def new_run(client: TestClient, world: World, experiment_id: str, token: str | None = None) -> str:
    body = {"experiment_id": experiment_id, "start_time": 1_700_000_000_000, "run_name": "r1"}
    return ok(mlflow_call(client, "POST", "runs/create", world.headers(token), body))["run"]["info"]["run_id"]


def log_batch(client: TestClient, world: World, run_id: str, body: Any, **kwargs: Any) -> Any:
    return mlflow_call(client, "POST", "runs/log-batch", world.headers(**kwargs), {"run_id": run_id, **body})


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file() and "maestro.db" not in path.name}


class TestErrorShape:
    def test_a_missing_experiment(self, client: TestClient, world: World) -> None:
        response = mlflow_call(
            client, "GET", "experiments/get", world.headers(), {"experiment_id": "exp_nothing"}
        )
        error_of(response, 404, "RESOURCE_DOES_NOT_EXIST")

    def test_no_credentials(self, client: TestClient, world: World) -> None:
        response = mlflow_call(client, "GET", "experiments/get", {}, {"experiment_id": "exp_x"})
        error_of(response, 401, "UNAUTHENTICATED")

    def test_a_wrong_token(self, client: TestClient, world: World) -> None:
        for token in ("not-a-jwt", "mk_not_a_real_key_at_all"):
            response = mlflow_call(client, "POST", "experiments/create", world.headers(token), {"name": "x"})
            error_of(response, 401, "UNAUTHENTICATED")

    def test_an_unknown_endpoint(self, client: TestClient, world: World) -> None:
        response = mlflow_call(client, "GET", "traces/search", world.headers())
        error_of(response, 404, "ENDPOINT_NOT_FOUND")

    def test_maestro_keeps_its_own_error_shape(self, client: TestClient) -> None:
        body = client.get("/api/v1/auth/me").json()
        assert body["success"] is False and body["error"]["code"] == "AUTHENTICATION_REQUIRED"

    def test_duplicates(self, client: TestClient, world: World) -> None:
        new_experiment(client, world, "once")
        again = mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "once"})
        error_of(again, 400, "RESOURCE_ALREADY_EXISTS")
        ok(mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": "Scorer"}))
        again = mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": "Scorer"})
        error_of(again, 400, "RESOURCE_ALREADY_EXISTS")

    def test_a_parameter_cannot_change(self, client: TestClient, world: World) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        body = {"run_id": run_id, "key": "lr", "value": "0.1"}
        ok(mlflow_call(client, "POST", "runs/log-parameter", world.headers(), body))
        ok(mlflow_call(client, "POST", "runs/log-parameter", world.headers(), body))
        changed = mlflow_call(client, "POST", "runs/log-parameter", world.headers(), {**body, "value": "0.2"})
        assert "Changing param values is not allowed" in error_of(changed, 400, "INVALID_PARAMETER_VALUE")


class TestMalformedInput:
    @pytest.mark.parametrize(
        "raw",
        [b"not json", b"[1, 2]", b'{"run_id": ', b"\xff\xfe", b'"a string"'],
        ids=["text", "a list", "truncated", "not utf-8", "a string"],
    )
    def test_bodies_that_are_not_a_json_object(self, client: TestClient, world: World, raw: bytes) -> None:
        response = client.post(
            f"{API}/runs/log-batch",
            content=raw,
            headers={**world.headers(), "Content-Type": "application/json"},
        )
        error_of(response, 400, "INVALID_PARAMETER_VALUE")

    @pytest.mark.parametrize(
        "body",
        [
            {"metrics": "x"},
            {"metrics": [1]},
            {"metrics": [{"key": "loss"}]},
            {"metrics": [{"key": "loss", "value": "high", "timestamp": 1}]},
            {"metrics": [{"key": "loss", "value": 1, "timestamp": "yesterday"}]},
            {"metrics": [{"key": "loss", "value": 1, "timestamp": 1, "step": 2**64}]},
            {"metrics": [{"key": "loss", "value": True, "timestamp": 1}]},
            {"metrics": [{"key": "a/../b", "value": 1, "timestamp": 1}]},
            {"metrics": [{"key": "x" * 251, "value": 1, "timestamp": 1}]},
            {"metrics": [{"key": "loss", "value": 1, "timestamp": 1}] * 10_001},
            {"params": [{"key": "p", "value": "1"}, {"key": "p", "value": "2"}]},
            {"params": [{"key": "bad key!", "value": "1"}]},
            {"tags": "x"},
        ],
        ids=[
            "metrics not a list",
            "metric not an object",
            "no value",
            "value not a number",
            "timestamp not a number",
            "step too large",
            "a boolean",
            "a path trick",
            "name too long",
            "too many points",
            "a parameter twice",
            "a bad key",
            "tags not a list",
        ],
    )
    def test_batches_refused_whole(
        self, client: TestClient, world: World, factory: Factory, body: dict
    ) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        error_of(log_batch(client, world, run_id, body), 400, "INVALID_PARAMETER_VALUE")
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(MetricPoint)) == 0

    def test_a_body_larger_than_the_limit(self, client: TestClient, world: World) -> None:
        response = client.post(
            f"{API}/experiments/create",
            content=b'{"name": "' + b"x" * (5 * 1024 * 1024) + b'"}',
            headers=world.headers(),
        )
        error_of(response, 413, "INVALID_PARAMETER_VALUE")

    @pytest.mark.parametrize(
        "search_filter",
        ["metrics.loss >> 1", "metrics.loss < 'a'", "nonsense", "params.x = ", "(metrics.a > 1"],
    )
    def test_malformed_filters(self, client: TestClient, world: World, search_filter: str) -> None:
        experiment_id = new_experiment(client, world)
        body = {"experiment_ids": [experiment_id], "filter": search_filter}
        error_of(
            mlflow_call(client, "POST", "runs/search", world.headers(), body), 400, "INVALID_PARAMETER_VALUE"
        )

    def test_malformed_ids_and_versions(self, client: TestClient, world: World) -> None:
        error_of(
            mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": "'; drop table runs; --"}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        ok(mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": "M"}))
        for version in ("x", "-1", "1.0"):
            response = mlflow_call(
                client, "GET", "model-versions/get", world.headers(), {"name": "M", "version": version}
            )
            error_of(response, 400, "INVALID_PARAMETER_VALUE")
        bad_stage = {"name": "M", "version": "1", "stage": "Bogus"}
        assert mlflow_call(
            client, "POST", "model-versions/transition-stage", world.headers(), bad_stage
        ).status_code in (
            400,
            404,
        )

    def test_nan_and_infinity(self, client: TestClient, world: World) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        ok(
            log_batch(
                client, world, run_id, {"metrics": [{"key": "a", "value": "NaN", "timestamp": 1, "step": 0}]}
            )
        )
        raw = b'{"run_id": "%s", "key": "b", "value": Infinity, "timestamp": 1, "step": 0}' % run_id.encode()
        ok(client.post(f"{API}/runs/log-metric", content=raw, headers=world.headers()))
        history = ok(
            mlflow_call(
                client, "GET", "metrics/get-history", world.headers(), {"run_id": run_id, "metric_key": "a"}
            )
        )
        assert history["metrics"][0]["value"] == "NaN"
        metrics = ok(mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": run_id}))["run"][
            "data"
        ]["metrics"]
        assert {item["key"]: item["value"] for item in metrics} == {"a": "NaN", "b": "Infinity"}


class TestAccess:
    def test_a_viewer_reads_but_may_not_write(self, client: TestClient, world: World) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        viewer = world.viewer.access_token
        ok(mlflow_call(client, "GET", "runs/get", world.headers(viewer), {"run_id": run_id}))
        denied = log_batch(
            client, world, run_id, {"metrics": [{"key": "a", "value": 1, "timestamp": 1}]}, token=viewer
        )
        error_of(denied, 403, "PERMISSION_DENIED")
        created = mlflow_call(client, "POST", "experiments/create", world.headers(viewer), {"name": "mine"})
        error_of(created, 403, "PERMISSION_DENIED")

    def test_a_key_without_the_models_permission(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        key = factory.api_key(world.org, {"experiments": ["read", "write"]})
        new_experiment(client, world, "allowed", token=key)
        denied = mlflow_call(client, "POST", "registered-models/create", world.headers(key), {"name": "M"})
        error_of(denied, 403, "PERMISSION_DENIED")

    def test_another_organisations_ids_answer_as_missing(self, client: TestClient, world: World) -> None:
        theirs = ok(
            mlflow_call(
                client,
                "POST",
                "experiments/create",
                world.headers(world.other_key, world.other_project),
                {"name": "x"},
            )
        )["experiment_id"]
        their_run = ok(
            mlflow_call(
                client,
                "POST",
                "runs/create",
                world.headers(world.other_key, world.other_project),
                {"experiment_id": theirs},
            )
        )["run"]["info"]["run_id"]
        metric = {"metrics": [{"key": "a", "value": 1, "timestamp": 1}]}
        error_of(log_batch(client, world, their_run, metric), 404, "RESOURCE_DOES_NOT_EXIST")
        error_of(
            mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": their_run}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        error_of(
            mlflow_call(client, "GET", "experiments/get", world.headers(), {"experiment_id": theirs}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        # naming their project does not help either
        error_of(
            mlflow_call(
                client,
                "POST",
                "experiments/create",
                world.headers(project=world.other_project),
                {"name": "y"},
            ),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        scoped = client.get(
            f"/mlflow/{world.other_project}{API}/runs/get",
            params={"run_id": their_run},
            headers=world.bearer(),
        )
        error_of(scoped, 404, "RESOURCE_DOES_NOT_EXIST")

    def test_objects_of_another_project_are_missing_in_this_one(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        second = factory.project(world.org, world.admin, "organization", name="Second")
        run_id = new_run(client, world, new_experiment(client, world))
        scoped = client.get(
            f"/mlflow/{second}{API}/runs/get", params={"run_id": run_id}, headers=world.bearer()
        )
        error_of(scoped, 404, "RESOURCE_DOES_NOT_EXIST")
        here = client.get(
            f"/mlflow/{world.project}{API}/runs/get", params={"run_id": run_id}, headers=world.bearer()
        )
        assert ok(here)["run"]["info"]["run_id"] == run_id


class TestArtifacts:
    def test_upload_list_download(self, client: TestClient, world: World) -> None:
        experiment_id = new_experiment(client, world)
        run_id = new_run(client, world, experiment_id)
        base = f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts"
        assert client.put(f"{base}/plots/roc.png", content=b"png", headers=world.headers()).status_code == 200
        listed = ok(
            client.get(
                ARTIFACTS, params={"path": f"{experiment_id}/{run_id}/artifacts"}, headers=world.headers()
            )
        )
        assert listed == {"files": [{"path": "plots", "is_dir": True}]}
        listed = ok(
            client.get(
                ARTIFACTS,
                params={"path": f"{experiment_id}/{run_id}/artifacts/plots"},
                headers=world.headers(),
            )
        )
        assert listed == {"files": [{"path": "roc.png", "is_dir": False, "file_size": 3}]}
        assert client.get(f"{base}/plots/roc.png", headers=world.headers()).content == b"png"
        error_of(
            client.get(f"{base}/plots/none.png", headers=world.headers()), 404, "RESOURCE_DOES_NOT_EXIST"
        )

    @pytest.mark.parametrize(
        "hostile",
        [
            "%2e%2e/%2e%2e/%2e%2e/evil.txt",
            "..%2F..%2F..%2Fevil.txt",
            "%2E%2E%2F%2E%2E%2Fevil.txt",
            "plots/%2e%2e/%2e%2e/evil.txt",
            "%2Fetc%2Fevil.txt",
            "plots%5C..%5C..%5Cevil.txt",
            "C:%5Cevil.txt",
            "plots//evil.txt",
        ],
    )
    def test_hostile_paths_are_refused_and_write_nothing(
        self, client: TestClient, world: World, app: FastAPI, tmp_path: Path, hostile: str
    ) -> None:
        experiment_id = new_experiment(client, world)
        run_id = new_run(client, world, experiment_id)
        before = files_under(tmp_path)
        response = client.put(
            f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts/{hostile}",
            content=b"evil",
            headers=world.headers(),
        )
        error_of(response, 400, "INVALID_PARAMETER_VALUE")
        assert files_under(tmp_path) == before
        assert not any(path.name == "evil.txt" for path in tmp_path.parent.rglob("evil.txt"))

    @pytest.mark.parametrize("hostile", ["%2e%2e/%2e%2e/etc", "..%2F..", "%2Fetc", "a%5Cb"])
    def test_hostile_paths_to_read_and_list(self, client: TestClient, world: World, hostile: str) -> None:
        experiment_id = new_experiment(client, world)
        run_id = new_run(client, world, experiment_id)
        response = client.get(
            f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts/{hostile}", headers=world.headers()
        )
        error_of(response, 400, "INVALID_PARAMETER_VALUE")
        response = client.get(
            f"{ARTIFACTS}?path={experiment_id}/{run_id}/artifacts/{hostile}", headers=world.headers()
        )
        error_of(response, 400, "INVALID_PARAMETER_VALUE")

    def test_an_artifact_over_the_limit(
        self, make_settings: Any, world: World, factory: Factory, tmp_path: Path
    ) -> None:
        from maestro.app import create_app

        app = create_app(make_settings(max_artifact_bytes=1000))
        with TestClient(app) as small:
            experiment_id = new_experiment(small, world)
            run_id = new_run(small, world, experiment_id)
            before = files_under(tmp_path)
            response = small.put(
                f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts/big.bin",
                content=b"x" * 5000,
                headers=world.headers(),
            )
            error_of(response, 413, "INVALID_PARAMETER_VALUE")
            assert files_under(tmp_path) == before
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(RunArtifact)) == 0

    def test_another_runs_path_is_missing(self, client: TestClient, world: World) -> None:
        experiment_id = new_experiment(client, world)
        run_id = new_run(client, world, experiment_id)
        other = new_experiment(client, world, "other")
        response = client.put(
            f"{ARTIFACTS}/{other}/{run_id}/artifacts/a.txt", content=b"a", headers=world.headers()
        )
        error_of(response, 404, "RESOURCE_DOES_NOT_EXIST")


class TestTracking:
    def test_one_audit_row_and_one_statement_per_batch(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        points = [
            {"key": f"m{i % 3}", "value": i / 10, "timestamp": 1_800_000_000_000 + i, "step": i}
            for i in range(1000)
        ]
        ok(log_batch(client, world, run_id, {"metrics": points, "params": [{"key": "lr", "value": "0.1"}]}))
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(MetricPoint)) == 1000
            rows = session.scalars(select(AuditLog).where(AuditLog.action == "mlflow:log_batch")).all()
        assert len(rows) == 1 and rows[0].details["points"] == 1000 and rows[0].resource_id == run_id
        latest = ok(mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": run_id}))["run"][
            "data"
        ]["metrics"]
        assert {item["key"]: item["step"] for item in latest} == {"m0": 999, "m1": 997, "m2": 998}

    def test_experiment_zero_is_the_projects_default(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        run = ok(mlflow_call(client, "POST", "runs/create", world.headers(), {"experiment_id": "0"}))["run"]
        with factory.database.session(write=False) as session:
            experiment = session.get(Experiment, run["info"]["experiment_id"])
            assert experiment is not None and (experiment.name, experiment.project_id) == (
                "Default",
                world.project,
            )

    def test_inputs_and_outputs_are_accepted(self, client: TestClient, world: World) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        datasets = {
            "run_id": run_id,
            "datasets": [{"dataset": {"name": "d", "digest": "1", "source_type": "local"}}],
        }
        assert ok(mlflow_call(client, "POST", "runs/log-inputs", world.headers(), datasets)) == {}
        outputs = {"run_id": run_id, "models": [{"model_id": "m-1", "step": 0}]}
        assert ok(mlflow_call(client, "POST", "runs/outputs", world.headers(), outputs)) == {}

    def test_search_pages(self, client: TestClient, world: World) -> None:
        experiment_id = new_experiment(client, world)
        runs = [new_run(client, world, experiment_id) for _ in range(5)]
        for index, run_id in enumerate(runs):
            ok(
                log_batch(
                    client, world, run_id, {"metrics": [{"key": "acc", "value": index, "timestamp": 1}]}
                )
            )
        body = {
            "experiment_ids": [experiment_id],
            "filter": "metrics.acc >= 1",
            "order_by": ["metrics.acc DESC"],
            "max_results": 3,
        }
        first = ok(mlflow_call(client, "POST", "runs/search", world.headers(), body))
        second = ok(
            mlflow_call(
                client,
                "POST",
                "runs/search",
                world.headers(),
                {**body, "page_token": first["next_page_token"]},
            )
        )
        found = [run["info"]["run_id"] for run in first["runs"] + second["runs"]]
        assert found == runs[:0:-1] and "next_page_token" not in second

    def test_a_resumed_run_ends_again(self, client: TestClient, world: World) -> None:
        run_id = new_run(client, world, new_experiment(client, world))
        for status in ("FINISHED", "RUNNING", "FAILED"):
            info = ok(
                mlflow_call(
                    client, "POST", "runs/update", world.headers(), {"run_id": run_id, "status": status}
                )
            )
            assert info["run_info"]["status"] == status


class TestRegistry:
    def _upload(self, client: TestClient, world: World, model_id: str, version: str) -> None:
        response = client.post(
            f"/api/v1/models/{model_id}/versions",
            data={"version": version},
            files={"model_file": ("m.bin", b"model bytes")},
            headers=world.bearer(),
        )
        assert response.status_code == 201, response.text

    def test_versions_uploaded_through_maestro_have_numbers(self, client: TestClient, world: World) -> None:
        model = ok(
            mlflow_call(client, "POST", "registered-models/create", world.headers(), {"name": "Uploaded"})
        )
        assert model["registered_model"]["name"] == "Uploaded"
        model_id = client.get(
            f"/api/v1/projects/{world.project}/models/by-name/Uploaded", headers=world.bearer()
        ).json()["data"]["id"]
        self._upload(client, world, model_id, "2.0.0")
        self._upload(client, world, model_id, "2.1.0")
        second = ok(
            mlflow_call(
                client, "GET", "model-versions/get", world.headers(), {"name": "Uploaded", "version": "2"}
            )
        )
        assert second["model_version"]["current_stage"] == "None"
        # MLflow's version 3 is 3.0.0; version 2 would have been 2.0.0, which is taken
        created = ok(
            mlflow_call(
                client,
                "POST",
                "model-versions/create",
                world.headers(),
                {"name": "Uploaded", "source": "models:/Elsewhere/1"},
            )
        )
        assert created["model_version"]["version"] == "3"
        versions = client.get(f"/api/v1/models/{model_id}/versions", headers=world.bearer()).json()["data"]
        assert sorted(item["version"] for item in versions) == ["2.0.0", "2.1.0", "3.0.0"]
        missing = mlflow_call(
            client,
            "GET",
            "model-versions/get-download-uri",
            world.headers(),
            {"name": "Uploaded", "version": "1"},
        )
        assert "uploaded through Maestro's API" in error_of(missing, 404, "RESOURCE_DOES_NOT_EXIST")
        uri = ok(
            mlflow_call(
                client,
                "GET",
                "model-versions/get-download-uri",
                world.headers(),
                {"name": "Uploaded", "version": "3"},
            )
        )
        assert uri == {"artifact_uri": "models:/Elsewhere/1"}

    def test_stages_aliases_and_tags(self, client: TestClient, world: World) -> None:
        ok(
            mlflow_call(
                client,
                "POST",
                "registered-models/create",
                world.headers(),
                {"name": "Staged", "tags": [{"key": "team", "value": "x"}]},
            )
        )
        for _ in range(2):
            ok(
                mlflow_call(
                    client,
                    "POST",
                    "model-versions/create",
                    world.headers(),
                    {"name": "Staged", "source": "models:/Elsewhere/1"},
                )
            )
        promote = {"name": "Staged", "version": "1", "stage": "production"}
        assert (
            ok(mlflow_call(client, "POST", "model-versions/transition-stage", world.headers(), promote))[
                "model_version"
            ]["current_stage"]
            == "Production"
        )
        promote = {"name": "Staged", "version": "2", "stage": "Production", "archive_existing_versions": True}
        ok(mlflow_call(client, "POST", "model-versions/transition-stage", world.headers(), promote))
        ok(
            mlflow_call(
                client,
                "POST",
                "registered-models/alias",
                world.headers(),
                {"name": "Staged", "alias": "champion", "version": "2"},
            )
        )
        ok(
            mlflow_call(
                client,
                "POST",
                "model-versions/set-tag",
                world.headers(),
                {"name": "Staged", "version": "2", "key": "ok", "value": "yes"},
            )
        )
        model = ok(mlflow_call(client, "GET", "registered-models/get", world.headers(), {"name": "Staged"}))[
            "registered_model"
        ]
        assert model["aliases"] == [{"alias": "champion", "version": "2"}] and model["tags"] == [
            {"key": "team", "value": "x"}
        ]
        assert sorted((v["version"], v["current_stage"]) for v in model["latest_versions"]) == [
            ("1", "Archived"),
            ("2", "Production"),
        ]
        by_alias = ok(
            mlflow_call(
                client,
                "GET",
                "registered-models/alias",
                world.headers(),
                {"name": "Staged", "alias": "champion"},
            )
        )
        assert by_alias["model_version"]["tags"] == [{"key": "ok", "value": "yes"}]
        error_of(
            mlflow_call(
                client,
                "POST",
                "registered-models/alias",
                world.headers(),
                {"name": "Staged", "alias": "Not OK!", "version": "2"},
            ),
            400,
            "INVALID_PARAMETER_VALUE",
        )
        renamed = ok(
            mlflow_call(
                client,
                "POST",
                "registered-models/rename",
                world.headers(),
                {"name": "Staged", "new_name": "Renamed"},
            )
        )
        assert renamed["registered_model"]["name"] == "Renamed"
        ok(mlflow_call(client, "DELETE", "registered-models/delete", world.headers(), {"name": "Renamed"}))
        error_of(
            mlflow_call(client, "GET", "registered-models/get", world.headers(), {"name": "Renamed"}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )


class TestTheOtherRoutes:
    """The routes the client calls less often, each once, read back."""

    def test_experiments(self, client: TestClient, world: World) -> None:
        experiment_id = new_experiment(client, world, "first", token=None)
        headers = world.headers()
        ok(
            mlflow_call(
                client,
                "POST",
                "experiments/set-experiment-tag",
                headers,
                {"experiment_id": experiment_id, "key": "team", "value": "a"},
            )
        )
        ok(
            mlflow_call(
                client,
                "POST",
                "experiments/update",
                headers,
                {"experiment_id": experiment_id, "new_name": "renamed"},
            )
        )
        found = ok(
            mlflow_call(
                client,
                "POST",
                "experiments/search",
                headers,
                {"filter": "name LIKE 'ren%' and tags.team = 'a'"},
            )
        )
        assert [item["name"] for item in found["experiments"]] == ["renamed"]
        ok(mlflow_call(client, "POST", "experiments/delete", headers, {"experiment_id": experiment_id}))
        got = ok(mlflow_call(client, "GET", "experiments/get", headers, {"experiment_id": experiment_id}))[
            "experiment"
        ]
        assert got["lifecycle_stage"] == "deleted" and got["tags"] == [{"key": "team", "value": "a"}]
        assert ok(mlflow_call(client, "POST", "experiments/search", headers, {})) == {"experiments": []}
        error_of(
            mlflow_call(client, "POST", "runs/create", headers, {"experiment_id": experiment_id}),
            400,
            "INVALID_STATE",
        )
        ok(mlflow_call(client, "POST", "experiments/restore", headers, {"experiment_id": experiment_id}))
        ok(
            mlflow_call(
                client,
                "POST",
                "experiments/delete-experiment-tag",
                headers,
                {"experiment_id": experiment_id, "key": "team"},
            )
        )
        by_name = ok(
            mlflow_call(client, "GET", "experiments/get-by-name", headers, {"experiment_name": "renamed"})
        )
        assert by_name["experiment"]["lifecycle_stage"] == "active" and by_name["experiment"]["tags"] == []
        error_of(
            mlflow_call(
                client,
                "POST",
                "experiments/update",
                headers,
                {"experiment_id": experiment_id, "new_name": ""},
            ),
            400,
            "INVALID_PARAMETER_VALUE",
        )

    def test_runs(self, client: TestClient, world: World) -> None:
        headers = world.headers()
        run_id = new_run(client, world, new_experiment(client, world))
        ok(mlflow_call(client, "POST", "runs/set-tag", headers, {"run_id": run_id, "key": "k", "value": "v"}))
        ok(mlflow_call(client, "POST", "runs/delete-tag", headers, {"run_id": run_id, "key": "k"}))
        error_of(
            mlflow_call(client, "POST", "runs/delete-tag", headers, {"run_id": run_id, "key": "k"}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        renamed = ok(
            mlflow_call(client, "POST", "runs/update", headers, {"run_id": run_id, "run_name": "second"})
        )
        assert renamed["run_info"]["run_name"] == "second"
        ok(mlflow_call(client, "POST", "runs/delete", headers, {"run_id": run_id}))
        metric = {"run_id": run_id, "key": "m", "value": 1, "timestamp": 1}
        error_of(mlflow_call(client, "POST", "runs/log-metric", headers, metric), 400, "INVALID_STATE")
        ok(mlflow_call(client, "POST", "runs/restore", headers, {"run_id": run_id}))
        ok(mlflow_call(client, "POST", "runs/log-metric", headers, metric))
        run = ok(mlflow_call(client, "GET", "runs/get", headers, {"run_id": run_id}))["run"]
        assert (
            run["info"]["lifecycle_stage"] == "active"
            and {"key": "mlflow.runName", "value": "second"} in run["data"]["tags"]
        )

    def test_logged_models_and_their_files(self, client: TestClient, world: World, factory: Factory) -> None:
        headers = world.headers()
        experiment_id = new_experiment(client, world)
        run_id = new_run(client, world, experiment_id)
        created = ok(
            mlflow_call(
                client,
                "POST",
                "logged-models",
                headers,
                {
                    "experiment_id": experiment_id,
                    "name": "m",
                    "source_run_id": run_id,
                    "params": [{"key": "C", "value": "1"}],
                },
            )
        )["model"]["info"]
        model_id = created["model_id"]
        assert created["artifact_uri"] == f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts"
        base = f"{ARTIFACTS}/{experiment_id}/models/{model_id}/artifacts"
        mlmodel = b"flavors:\n  python_function:\n    model_path: model.pkl\n"
        assert client.put(f"{base}/MLmodel", content=mlmodel, headers=headers).status_code == 200
        import pickle

        assert (
            client.put(
                f"{base}/model.pkl", content=pickle.dumps({"w": 1}, protocol=4), headers=headers
            ).status_code
            == 200
        )
        ok(
            client.patch(
                f"{API}/logged-models/{model_id}", json={"status": "LOGGED_MODEL_READY"}, headers=headers
            )
        )
        ok(
            client.patch(
                f"{API}/logged-models/{model_id}/tags",
                json={"tags": [{"key": "a", "value": "b"}]},
                headers=headers,
            )
        )
        ok(client.delete(f"{API}/logged-models/{model_id}/tags/a", headers=headers))
        ok(
            client.post(
                f"{API}/logged-models/{model_id}/params",
                json={"params": [{"key": "D", "value": "2"}]},
                headers=headers,
            )
        )
        found = ok(
            mlflow_call(
                client,
                "POST",
                "logged-models/search",
                headers,
                {"experiment_ids": [experiment_id], "filter": "name = 'm'"},
            )
        )
        info = found["models"][0]
        assert info["info"]["status"] == "LOGGED_MODEL_READY" and info["info"]["tags"] == []
        assert info["data"]["params"] == [{"key": "C", "value": "1"}, {"key": "D", "value": "2"}]
        # a pickled model registers untrusted, recognised as a pickle, and is never loaded here
        ok(mlflow_call(client, "POST", "registered-models/create", headers, {"name": "Pickled"}))
        version = ok(
            mlflow_call(
                client,
                "POST",
                "model-versions/create",
                headers,
                {"name": "Pickled", "source": f"models:/{model_id}", "model_id": model_id},
            )
        )
        assert version["model_version"]["run_id"] == run_id
        model = client.get(
            f"/api/v1/projects/{world.project}/models/by-name/Pickled", headers=world.bearer()
        ).json()["data"]
        row = client.get(f"/api/v1/models/{model['id']}/versions/1.0.0", headers=world.bearer()).json()[
            "data"
        ]
        assert (row["format"], row["trusted"]) == ("pickle", False)
        uri = ok(
            mlflow_call(
                client, "GET", "model-versions/get-download-uri", headers, {"name": "Pickled", "version": "1"}
            )
        )
        assert uri == {"artifact_uri": created["artifact_uri"]}
        ok(client.request("DELETE", f"{base}/MLmodel", headers=headers))
        assert ok(
            client.get(
                ARTIFACTS, params={"path": f"{experiment_id}/models/{model_id}/artifacts"}, headers=headers
            )
        ) == {
            "files": [
                {"path": "model.pkl", "is_dir": False, "file_size": len(pickle.dumps({"w": 1}, protocol=4))}
            ]
        }
        ok(client.delete(f"{API}/logged-models/{model_id}", headers=headers))
        error_of(
            client.get(f"{API}/logged-models/{model_id}", headers=headers), 404, "RESOURCE_DOES_NOT_EXIST"
        )

    def test_versions(self, client: TestClient, world: World) -> None:
        headers = world.headers()
        ok(
            mlflow_call(
                client, "POST", "registered-models/create", headers, {"name": "V", "description": "first"}
            )
        )
        ok(
            mlflow_call(
                client, "PATCH", "registered-models/update", headers, {"name": "V", "description": "changed"}
            )
        )
        ok(
            mlflow_call(
                client, "POST", "registered-models/set-tag", headers, {"name": "V", "key": "k", "value": "v"}
            )
        )
        ok(mlflow_call(client, "DELETE", "registered-models/delete-tag", headers, {"name": "V", "key": "k"}))
        ok(
            mlflow_call(
                client,
                "POST",
                "model-versions/create",
                headers,
                {"name": "V", "source": "models:/Elsewhere/1", "tags": [{"key": "t", "value": "1"}]},
            )
        )
        updated = ok(
            mlflow_call(
                client,
                "PATCH",
                "model-versions/update",
                headers,
                {"name": "V", "version": "1", "description": "d"},
            )
        )
        assert updated["model_version"]["description"] == "d"
        ok(
            mlflow_call(
                client,
                "DELETE",
                "model-versions/delete-tag",
                headers,
                {"name": "V", "version": "1", "key": "t"},
            )
        )
        latest = ok(
            mlflow_call(
                client,
                "POST",
                "registered-models/get-latest-versions",
                headers,
                {"name": "V", "stages": ["None"]},
            )
        )
        assert [item["version"] for item in latest["model_versions"]] == ["1"]
        found = ok(
            mlflow_call(client, "GET", "registered-models/search", headers, {"filter": "name LIKE 'V%'"})
        )
        assert [(item["name"], item["description"]) for item in found["registered_models"]] == [
            ("V", "changed")
        ]
        ok(mlflow_call(client, "DELETE", "model-versions/delete", headers, {"name": "V", "version": "1"}))
        error_of(
            mlflow_call(client, "GET", "model-versions/get", headers, {"name": "V", "version": "1"}),
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )
        info = ok(client.get("/api/3.0/mlflow/server-info", headers=headers))
        assert info["multipart_uploads_enabled"] is False


def raw_put(app: FastAPI, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """A PUT whose path reaches the app exactly as written (HTTP clients would resolve
    a literal ``../`` before sending it; a hand-written request does not)."""
    import anyio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    return status, b"".join(
        message.get("body", b"") for message in sent if message["type"] == "http.response.body"
    )


@pytest.mark.parametrize(
    "hostile", ["../../../evil.txt", "plots/../../../../evil.txt", "/etc/evil.txt", "plots\\..\\evil.txt"]
)
def test_literal_traversal_is_refused_and_writes_nothing(
    client: TestClient, world: World, app: FastAPI, tmp_path: Path, hostile: str
) -> None:
    import json

    experiment_id = new_experiment(client, world)
    run_id = new_run(client, world, experiment_id)
    before = files_under(tmp_path)
    status, body = raw_put(
        app, f"{ARTIFACTS}/{experiment_id}/{run_id}/artifacts/{hostile}", world.headers(), b"evil"
    )
    assert status == 400 and json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert files_under(tmp_path) == before
    assert not list(tmp_path.parent.rglob("evil.txt"))
