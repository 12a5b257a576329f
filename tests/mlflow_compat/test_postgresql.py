"""One smoke test of the real `mlflow` client on PostgreSQL (the others run on SQLite)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sklearn.linear_model import LogisticRegression

from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.mlflow_compat.conftest import World
from tests.mlflow_compat.test_client import training_data


def test_postgresql_smoke(
    settings: Settings,
    serve: Callable[..., RunningProcess],
    make_settings: Callable[..., Settings],
    world: World,
    mlflow_client: Callable[[str, str], Any],
    tmp_path: Path,
) -> None:
    """The client's everyday calls on PostgreSQL (the other tests run on SQLite)."""
    if settings.uses_embedded_database:
        pytest.skip("the PostgreSQL smoke test")
    server = serve(make_settings())
    mlflow = mlflow_client(f"{server.base_url}/mlflow/{world.project}", world.key)
    mlflow.set_experiment("on postgres")
    (tmp_path / "a.txt").write_text("a")
    features, labels = training_data()
    with mlflow.start_run() as run:
        mlflow.log_params({"a": 1})
        mlflow.log_metrics({"loss": 0.5}, step=1)
        mlflow.log_artifact(str(tmp_path / "a.txt"))
        mlflow.sklearn.log_model(
            LogisticRegression().fit(features, labels), name="m", registered_model_name="Pg"
        )
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert len(mlflow.search_runs(experiment_names=["on postgres"], filter_string="metrics.loss < 1")) == 1
    assert mlflow.sklearn.load_model("models:/Pg/1").predict(features[:2]).shape == (2,)
    assert os.path.basename(client.list_artifacts(run.info.run_id)[0].path) == "a.txt"
