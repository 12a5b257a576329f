"""Every model file that can be loaded is loaded in an isolated process when it becomes a
version (through the upload route or the MLflow API): a file that crashes, does not
load or needs more than a model's memory budget is refused (422) and nothing of it is
kept; a file that loads is kept with what it costs. Versions that have no result yet,
or a stale one, are checked before they are deployed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sqlalchemy import select

from maestro.config import Settings
from maestro.registry.models import ModelVersion
from tests.factories import Factory, World
from tests.registry.conftest import new_model, stored_files, upload
from tests.runtimes import crafted
from tests.runtimes.payloads import Doubler

BUDGET = 256 * 1024**2


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(model_memory_budget_bytes=BUDGET)


def versions_of(factory: Factory, model_id: str) -> list[ModelVersion]:
    with factory.database.session(write=False) as session:
        return list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id)))


def deploy(client: TestClient, world: World, name: str, version_id: str) -> Any:
    return client.post(
        f"/api/v1/projects/{world.project}/deployments",
        json={"name": name, "model_version_id": version_id},
        headers=world.admin.headers,
    )


CRAFTED: dict[str, Callable[[Path], bytes]] = {
    "lightgbm_tree_sizes": lambda _tmp: crafted.min_treesizes(),
    "lightgbm_kill_switch": lambda _tmp: crafted.killswitch(),
    "lightgbm_heap_read": lambda _tmp: crafted.heap_read(),
    "lightgbm_many_features": lambda _tmp: crafted.lightgbm_huge_features(),
    "xgboost_child_out_of_range": crafted.xgboost_child_out_of_range,
    "xgboost_split_out_of_range": crafted.xgboost_split_out_of_range,
    "xgboost_many_features": crafted.xgboost_huge_features,
    "onnx_memory_bomb": lambda _tmp: crafted.onnx_constant_bomb(),
}


class TestAtUpload:
    def test_a_model_that_loads_is_kept_with_what_it_costs(self, client: TestClient, world: World) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = crafted.lightgbm_text("binary").encode()
        response = upload(client, model["id"], world.developer.headers, content=data)
        assert response.status_code == 201, response.text
        check = response.json()["data"]["load_check"]
        assert check["status"] == "passed"
        assert check["sha256"] == hashlib.sha256(data).hexdigest()
        assert check["serving"] == "lightgbm"
        assert 0 < check["memory_bytes"] < BUDGET

    @pytest.mark.parametrize("attack", sorted(CRAFTED))
    def test_a_crafted_file_is_refused_and_nothing_is_kept(
        self, client: TestClient, world: World, factory: Factory, app: FastAPI, tmp_path: Path, attack: str
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        root = Path(app.state.store.root)
        before = stored_files(root)
        response = upload(client, model["id"], world.developer.headers, content=CRAFTED[attack](tmp_path))
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["success"] is False
        assert error["error"]["code"] == "VALIDATION_ERROR"
        assert error["error"]["message"].startswith("The model file was refused: ")
        [detail] = error["error"]["details"]
        assert detail["field"] == "model_file"
        assert detail["message"] == ("out_of_memory" if attack == "onnx_memory_bomb" else "corrupt")
        assert versions_of(factory, model["id"]) == []  # no row
        assert stored_files(root) == before  # no file

    def test_a_file_refused_only_for_want_of_trust_waits_for_an_admin(
        self, client: TestClient, world: World, factory: Factory
    ) -> None:
        rng = np.random.default_rng(2)
        X = rng.normal(size=(50, 3))  # noqa: N806
        pipeline = make_pipeline(Doubler(), Ridge()).fit(X, X[:, 0])  # Doubler: outside the allow-list
        model = new_model(client, world.project, world.developer.headers)
        response = upload(client, model["id"], world.developer.headers, content=sio.dumps(pipeline))
        assert response.status_code == 201, response.text
        version = response.json()["data"]
        assert version["load_check"]["status"] == "failed"
        assert version["load_check"]["reason"] == "untrusted_types"
        refused = deploy(client, world, "log-ridge", version["id"])
        assert refused.status_code == 409, refused.text

        trusted = client.put(
            f"/api/v1/models/{model['id']}/versions/{version['version']}/trusted",
            json={"trusted": True},
            headers=world.admin.headers,
        )
        assert trusted.status_code == 200, trusted.text
        assert trusted.json()["data"]["load_check"] is None  # to be checked again, as trusted
        deployed = deploy(client, world, "log-ridge", version["id"])
        assert deployed.status_code == 201, deployed.text
        [row] = versions_of(factory, model["id"])
        assert row.load_check is not None
        assert (row.load_check["status"], row.load_check["trusted"]) == ("passed", True)


class TestBeforeLoading:
    def _stored_version(self, factory: Factory, app: FastAPI, model: dict, data: bytes, **values: Any) -> str:
        """A version written as an earlier Maestro (or a bypassed upload) would leave it."""
        stored = app.state.store.put_bytes("models/test", data)
        with factory.database.session() as session:
            row = ModelVersion(
                model_id=model["id"],
                organization_id=values.pop("organization_id"),
                version=values.pop("version", "1.0.0"),
                file_key=stored.key,
                file_size=stored.size,
                sha256=stored.sha256,
                format=values.pop("format"),
                performance_metrics={},
                training_metrics={},
                **values,
            )
            session.add(row)
            session.flush()
            return row.id

    def test_a_version_without_a_result_is_checked_before_it_is_deployed(
        self, client: TestClient, world: World, factory: Factory, app: FastAPI
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        data = crafted.lightgbm_text("binary").encode()
        version_id = self._stored_version(
            factory, app, model, data, organization_id=world.org, format="lightgbm-txt"
        )
        response = deploy(client, world, "churn", version_id)
        assert response.status_code == 201, response.text
        assert response.json()["data"]["serving"]["isolated"] is True
        [row] = versions_of(factory, model["id"])
        assert row.load_check is not None and row.load_check["status"] == "passed"
        assert row.load_check["sha256"] == hashlib.sha256(data).hexdigest()

    @pytest.mark.parametrize("attack", ["lightgbm_kill_switch", "xgboost_child_out_of_range"])
    def test_a_crafted_file_already_stored_is_refused_at_deploy(
        self, client: TestClient, world: World, factory: Factory, app: FastAPI, tmp_path: Path, attack: str
    ) -> None:
        model = new_model(client, world.project, world.developer.headers)
        fmt = "lightgbm-txt" if attack.startswith("lightgbm") else "xgboost-json"
        version_id = self._stored_version(
            factory, app, model, CRAFTED[attack](tmp_path), organization_id=world.org, format=fmt
        )
        response = deploy(client, world, "boom", version_id)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["message"] == "corrupt"
        [row] = versions_of(factory, model["id"])
        assert row.load_check is not None and row.load_check["reason"] == "corrupt"
        listed = client.get(f"/api/v1/projects/{world.project}/deployments", headers=world.admin.headers)
        assert listed.json()["data"] == []

    def test_a_stale_result_is_not_trusted(
        self, client: TestClient, world: World, factory: Factory, app: FastAPI
    ) -> None:
        """A result that claims the kill switch passed, written by another Maestro, is
        checked again before anything loads."""
        model = new_model(client, world.project, world.developer.headers)
        data = crafted.killswitch()
        forged = {
            "status": "passed",
            "format": "lightgbm-txt",
            "trusted": False,
            "sha256": hashlib.sha256(data).hexdigest(),
            "memory_bytes": 1,
            "maestro_version": "0.0.1",
            "check_version": 1,
            "checked_at": "2026-01-01T00:00:00Z",
        }
        version_id = self._stored_version(
            factory, app, model, data, organization_id=world.org, format="lightgbm-txt", load_check=forged
        )
        response = deploy(client, world, "boom", version_id)
        assert response.status_code == 422, response.text
        [row] = versions_of(factory, model["id"])
        assert row.load_check is not None and row.load_check["status"] == "failed"


class TestThroughMlflow:
    def test_registering_a_crafted_model_file_is_refused(
        self, client: TestClient, world: World, factory: Factory, app: FastAPI
    ) -> None:
        key = factory.api_key(world.org, {"experiments": ["read", "write"], "models": ["read", "write"]})
        headers = {"Authorization": f"Bearer {key}", "X-Maestro-Project": world.project}
        api = "/api/2.0/mlflow"
        experiment = client.post(f"{api}/experiments/create", json={"name": "e"}, headers=headers).json()
        created = client.post(
            f"{api}/logged-models",
            json={"experiment_id": experiment["experiment_id"], "name": "m"},
            headers=headers,
        ).json()["model"]["info"]
        artifacts = "/api/2.0/mlflow-artifacts/artifacts"
        base = f"{artifacts}/{experiment['experiment_id']}/models/{created['model_id']}/artifacts"
        mlmodel = b"flavors:\n  lightgbm:\n    data: model.lgb\n"
        assert client.put(f"{base}/MLmodel", content=mlmodel, headers=headers).status_code == 200
        assert (
            client.put(f"{base}/model.lgb", content=crafted.killswitch(), headers=headers).status_code == 200
        )
        assert (
            client.post(f"{api}/registered-models/create", json={"name": "Boom"}, headers=headers).status_code
            == 200
        )
        root = Path(app.state.store.root)
        before = stored_files(root)
        response = client.post(
            f"{api}/model-versions/create",
            json={
                "name": "Boom",
                "source": f"models:/{created['model_id']}",
                "model_id": created["model_id"],
            },
            headers=headers,
        )
        assert 400 <= response.status_code < 500, response.text
        assert "refused" in response.text and "right_child" in response.text
        assert stored_files(root) == before  # the registry's copy of the file is gone too
        with factory.database.session(write=False) as session:
            assert session.scalars(select(ModelVersion)).all() == []
