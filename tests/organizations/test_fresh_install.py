"""A fresh install that works for a real team: the real `mlflow` client, run against a
real `maestro serve` with the default settings (rate limits on, new organisations on
the default plan), logs a whole training script and a 1,000-point batch, and every
point and the registered version read back through Maestro's own API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.mlflow_compat.conftest import mlflow_client  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def api(server: RunningProcess, token: str, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method,
        f"{server.base_url}/api/v1{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kwargs,
    )
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def test_a_training_script_on_a_fresh_install(
    serve: Callable[..., RunningProcess],
    make_settings: Callable[..., Settings],
    mlflow_client: Callable[[str, str], Any],  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    settings = make_settings(rate_limits_enabled=True)  # everything else as shipped
    if not settings.uses_embedded_database:
        pytest.skip("the MLflow client runs against SQLite")
    assert settings.default_plan == "unlimited"
    server = serve(settings)
    registered = httpx.post(
        f"{server.base_url}/api/v1/auth/register",
        json={"email": "ada@example.com", "password": "correct horse battery", "organization_name": "Lab"},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    token = registered.json()["data"]["access_token"]
    org = registered.json()["data"]["user"]["current_organization"]["id"]
    project = api(server, token, "POST", f"/organizations/{org}/projects", json={"name": "Churn"})["id"]

    mlflow = mlflow_client(f"{server.base_url}/mlflow/{project}", token)
    from mlflow.entities import Metric

    rng = np.random.default_rng(3)
    features = rng.random((30, 3))
    labels = (features[:, 0] > 0.5).astype(int)
    (tmp_path / "notes.txt").write_text("baseline")
    experiment = mlflow.set_experiment("churn")
    with mlflow.start_run() as run:
        mlflow.log_params({"C": 1.0, "solver": "lbfgs"})
        for step in range(50):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_artifact(str(tmp_path / "notes.txt"))
        model = LogisticRegression().fit(features, labels)
        mlflow.sklearn.log_model(model, name="model", registered_model_name="Churn")
    run_id = run.info.run_id
    client = mlflow.MlflowClient()
    client.log_batch(
        run_id, metrics=[Metric("batch", float(step), 1_800_000_000_000 + step, step) for step in range(1000)]
    )

    base = f"/experiments/{experiment.experiment_id}/runs/{run_id}"
    loss = api(server, token, "GET", f"{base}/metrics/loss", params={"limit": 10000})["points"]
    assert [(point["step"], point["value"]) for point in loss] == [(s, 1.0 / (s + 1)) for s in range(50)]
    batch = api(server, token, "GET", f"{base}/metrics/batch", params={"limit": 10000})["points"]
    assert [(point["step"], point["value"]) for point in batch] == [(s, float(s)) for s in range(1000)]
    fetched = api(server, token, "GET", base)
    assert fetched["params"] == {"C": "1.0", "solver": "lbfgs"}
    artifacts = api(server, token, "GET", f"{base}/artifacts")
    assert "notes.txt" in {item["path"] for item in artifacts}
    models = api(server, token, "GET", f"/projects/{project}/models")
    assert [item["name"] for item in models] == ["Churn"]
    versions = api(server, token, "GET", f"/models/{models[0]['id']}/versions")
    assert [item["version"] for item in versions] == ["1.0.0"]
    organizations = api(server, token, "GET", "/organizations")
    assert [item["subscription_plan"] for item in organizations] == ["unlimited"]
