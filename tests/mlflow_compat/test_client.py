"""The real `mlflow` client against a real `maestro serve`: everything a training script
does, read back through Maestro's own API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import select

from maestro.config import Settings
from maestro.events.models import OutboxEvent
from maestro.registry.models import ModelVersion
from tests.conftest import RunningProcess
from tests.factories import Factory
from tests.mlflow_compat.conftest import World

# transition_model_version_stage is deprecated in MLflow 3 but still what clients call.
pytestmark = [pytest.mark.usefixtures("sqlite_only"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def maestro_get(server: RunningProcess, world: World, path: str, **params: Any) -> Any:
    response = httpx.get(f"{server.base_url}/api/v1{path}", params=params, headers=world.bearer(), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    features = rng.random((40, 3))
    return features, (features[:, 0] > 0.5).astype(int)


@pytest.fixture
def scoped(maestro: RunningProcess, world: World, mlflow_client: Callable[[str, str], Any]) -> Any:
    """The client with MLFLOW_TRACKING_URI=http://host/mlflow/<project_id>: no header."""
    return mlflow_client(f"{maestro.base_url}/mlflow/{world.project}", world.key)


class TestTrainingScript:
    """set_experiment, start_run/end_run, params, metrics, batches, tags, artifacts,
    search, history, sklearn.log_model with registration, loading by version and
    alias, stages and aliases: all through the project-scoped tracking URI."""

    def test_a_whole_training_script(
        self, scoped: Any, maestro: RunningProcess, world: World, factory: Factory, tmp_path: Path
    ) -> None:
        mlflow = scoped
        from mlflow.entities import Metric, Param, RunTag

        experiment = mlflow.set_experiment("churn")
        features, labels = training_data()
        (tmp_path / "notes.txt").write_text("first try")
        (tmp_path / "plots" / "roc").mkdir(parents=True)
        (tmp_path / "plots" / "roc" / "curve.csv").write_text("fpr,tpr\n0,0\n1,1\n")
        with mlflow.start_run(run_name="baseline") as run:
            mlflow.log_param("solver", "lbfgs")
            mlflow.log_params({"C": 1.0, "max_iter": 100})
            mlflow.log_metric("loss", 0.9, step=0)
            mlflow.log_metrics({"loss": 0.5, "accuracy": 0.8}, step=1)
            mlflow.set_tag("team", "growth")
            mlflow.log_artifact(str(tmp_path / "notes.txt"))
            mlflow.log_artifacts(str(tmp_path / "plots"), artifact_path="plots")
            model = LogisticRegression().fit(features, labels)
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name="Churn")
        run_id = run.info.run_id
        client = mlflow.MlflowClient()
        client.log_batch(
            run_id,
            metrics=[Metric("auc", 0.7 + step / 100, 1_800_000_000_000 + step, step) for step in range(10)],
            params=[Param("features", "3")],
            tags=[RunTag("stage", "tuned")],
        )

        # read back through the MLflow client
        fetched = client.get_run(run_id)
        assert fetched.info.status == "FINISHED"
        assert fetched.data.params == {"solver": "lbfgs", "C": "1.0", "max_iter": "100", "features": "3"}
        assert fetched.data.metrics["loss"] == 0.5 and fetched.data.metrics["auc"] == pytest.approx(0.79)
        assert fetched.data.tags["team"] == "growth" and fetched.data.tags["mlflow.runName"] == "baseline"
        history = client.get_metric_history(run_id, "loss")
        assert [(point.step, point.value) for point in history] == [(0, 0.9), (1, 0.5)]
        assert len(client.get_metric_history(run_id, "auc")) == 10
        found = mlflow.search_runs(
            experiment_names=["churn"], filter_string="metrics.loss < 0.6", order_by=["metrics.loss DESC"]
        )
        assert list(found["run_id"]) == [run_id]
        assert mlflow.search_runs(experiment_names=["churn"], filter_string="metrics.loss > 0.6").empty
        assert {item.path for item in client.list_artifacts(run_id)} == {"notes.txt", "plots"}
        assert [item.path for item in client.list_artifacts(run_id, "plots/roc")] == ["plots/roc/curve.csv"]
        downloaded = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="plots"))
        assert (downloaded / "roc" / "curve.csv").read_text() == "fpr,tpr\n0,0\n1,1\n"

        # the registered model: load by version, move stages, load by alias
        assert str(info.registered_model_version) == "1"
        loaded = mlflow.sklearn.load_model("models:/Churn/1")
        assert list(loaded.predict(features)) == list(model.predict(features))
        client.transition_model_version_stage("Churn", "1", "Staging")
        client.set_registered_model_alias("Churn", "champion", "1")
        by_alias = mlflow.pyfunc.load_model("models:/Churn@champion")
        assert list(by_alias.predict(features)) == list(model.predict(features))
        version = client.get_model_version_by_alias("Churn", "champion")
        assert (version.version, version.current_stage, version.run_id) == ("1", "Staging", run_id)
        client.delete_registered_model_alias("Churn", "champion")

        # and through Maestro's own API
        exp = maestro_get(maestro, world, f"/experiments/{experiment.experiment_id}")
        assert exp["name"] == "churn" and exp["project_id"] == world.project and exp["status"] == "completed"
        runs = maestro_get(maestro, world, f"/experiments/{experiment.experiment_id}/runs")
        assert [item["id"] for item in runs] == [run_id]
        assert runs[0]["params"]["solver"] == "lbfgs" and runs[0]["metrics"]["accuracy"] == 0.8
        assert runs[0]["status"] == "completed" and runs[0]["tags"]["stage"] == "tuned"
        points = maestro_get(
            maestro, world, f"/experiments/{experiment.experiment_id}/runs/{run_id}/metrics/loss"
        )
        assert [point["value"] for point in points["points"]] == [0.9, 0.5]
        artifacts = maestro_get(
            maestro, world, f"/experiments/{experiment.experiment_id}/runs/{run_id}/artifacts"
        )
        assert {item["path"] for item in artifacts} == {"notes.txt", "plots/roc/curve.csv"}
        models = maestro_get(maestro, world, f"/projects/{world.project}/models")
        assert [(item["name"], item["framework"]) for item in models] == [("Churn", "scikit-learn")]
        versions = maestro_get(maestro, world, f"/models/{models[0]['id']}/versions")
        assert [(item["version"], item["stage"], item["format"]) for item in versions] == [
            ("1.0.0", "staging", "skops")
        ]
        stages = maestro_get(maestro, world, f"/models/{models[0]['id']}/versions/1.0.0/stages")
        assert [(item["from_stage"], item["to_stage"]) for item in stages] == [
            (None, "development"),
            ("development", "staging"),
        ]
        file = httpx.get(
            f"{maestro.base_url}/api/v1/models/{models[0]['id']}/versions/1.0.0/file", headers=world.bearer()
        )
        assert file.status_code == 200 and file.content[:4] == b"PK\x03\x04"
        with factory.database.session(write=False) as session:
            row = session.scalars(select(ModelVersion)).one()
            assert (row.number, row.run_id, row.source) == (1, run_id, f"models:/{row.logged_model_id}")
            events = [event.type for event in session.scalars(select(OutboxEvent))]
        assert "run.completed" in events and "model.version.stage_changed" in events

    def test_a_failed_run_is_an_event_and_a_second_version_is_number_two(
        self, scoped: Any, world: World, factory: Factory
    ) -> None:
        mlflow = scoped
        mlflow.set_experiment("retries")
        features, labels = training_data()
        with pytest.raises(RuntimeError), mlflow.start_run():
            mlflow.log_metric("loss", 1.0)
            raise RuntimeError("out of memory")
        for _ in range(2):
            with mlflow.start_run():
                mlflow.sklearn.log_model(
                    LogisticRegression().fit(features, labels), name="model", registered_model_name="Retry"
                )
        client = mlflow.MlflowClient()
        assert sorted(v.version for v in client.search_model_versions("name='Retry'")) == ["1", "2"]
        client.transition_model_version_stage("Retry", "1", "Production")
        client.transition_model_version_stage("Retry", "2", "Production", archive_existing_versions=True)
        assert client.get_model_version("Retry", "1").current_stage == "Archived"
        with factory.database.session(write=False) as session:
            events = [event.type for event in session.scalars(select(OutboxEvent))]
            versions = sorted(session.execute(select(ModelVersion.number, ModelVersion.version)).all())
        assert events.count("run.failed") == 1 and events.count("run.completed") == 2
        assert versions == [(1, "1.0.0"), (2, "2.0.0")]


class TestProjectChoice:
    def test_the_default_project_setting_and_the_header(
        self,
        serve: Callable[..., RunningProcess],
        make_settings: Callable[..., Settings],
        world: World,
        mlflow_client: Callable[[str, str], Any],
    ) -> None:
        """At the root, the project comes from MAESTRO_MLFLOW_DEFAULT_PROJECT, or from the
        X-Maestro-Project header when a client sends it."""
        from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
        from mlflow.tracking.request_header.registry import _request_header_provider_registry

        server = serve(make_settings(mlflow_default_project=world.project))
        mlflow = mlflow_client(server.base_url, world.key)
        mlflow.set_experiment("by setting")
        with mlflow.start_run():
            mlflow.log_metric("loss", 0.1)
        other = httpx.post(
            f"{server.base_url}/api/v1/organizations/{world.org}/projects",
            json={"name": "Second"},
            headers=world.admin.headers,
        ).json()["data"]["id"]

        class ProjectHeader(RequestHeaderProvider):
            def in_context(self) -> bool:
                return True

            def request_headers(self) -> dict[str, str]:
                return {"X-Maestro-Project": other}

        _request_header_provider_registry.register(ProjectHeader)
        try:
            mlflow.set_experiment("by header")
            with mlflow.start_run():
                mlflow.log_metric("loss", 0.2)
            assert [e.name for e in mlflow.search_experiments()] == ["by header"]
        finally:
            _request_header_provider_registry._registry.pop()
        names = {
            project: [
                item["name"]
                for item in httpx.get(
                    f"{server.base_url}/api/v1/projects/{project}/experiments", headers=world.bearer()
                ).json()["data"]
            ]
            for project in (world.project, other)
        }
        assert names == {world.project: ["by setting"], other: ["by header"]}

    def test_without_any_project_the_client_is_told_how_to_name_one(
        self, maestro: RunningProcess, world: World, mlflow_client: Callable[[str, str], Any]
    ) -> None:
        from mlflow.exceptions import MlflowException

        mlflow = mlflow_client(maestro.base_url, world.key)
        with pytest.raises(MlflowException, match="X-Maestro-Project"):
            mlflow.set_experiment("nowhere")


class TestAccess:
    def test_a_wrong_token_makes_the_client_raise(
        self, maestro: RunningProcess, world: World, mlflow_client: Callable[[str, str], Any]
    ) -> None:
        from mlflow.exceptions import MlflowException

        mlflow = mlflow_client(f"{maestro.base_url}/mlflow/{world.project}", "mk_not_a_real_key_0000")
        with pytest.raises(MlflowException) as raised:
            mlflow.set_experiment("locked out")
        assert raised.value.error_code == "UNAUTHENTICATED"

    def test_another_organisations_run_is_missing(
        self, maestro: RunningProcess, world: World, mlflow_client: Callable[[str, str], Any]
    ) -> None:
        from mlflow.exceptions import MlflowException

        theirs = mlflow_client(f"{maestro.base_url}/mlflow/{world.other_project}", world.other_key)
        theirs.set_experiment("secret")
        with theirs.start_run() as run:
            theirs.log_metric("loss", 0.3)
        ours = mlflow_client(f"{maestro.base_url}/mlflow/{world.project}", world.key)
        client = ours.MlflowClient()
        for attempt in (
            lambda: client.get_run(run.info.run_id),
            lambda: client.log_metric(run.info.run_id, "loss", 0.0),
            lambda: client.get_metric_history(run.info.run_id, "loss"),
        ):
            with pytest.raises(MlflowException) as raised:
                attempt()
            assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    def test_a_viewer_reads_but_may_not_log(
        self, maestro: RunningProcess, world: World, mlflow_client: Callable[[str, str], Any]
    ) -> None:
        from mlflow.exceptions import MlflowException

        developer = mlflow_client(f"{maestro.base_url}/mlflow/{world.project}", world.developer.access_token)
        developer.set_experiment("shared")
        with developer.start_run() as run:
            developer.log_metric("loss", 0.3)
        viewer = mlflow_client(f"{maestro.base_url}/mlflow/{world.project}", world.viewer.access_token)
        client = viewer.MlflowClient()
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.3}
        with pytest.raises(MlflowException) as raised:
            client.log_metric(run.info.run_id, "loss", 0.0)
        assert raised.value.error_code == "PERMISSION_DENIED"
