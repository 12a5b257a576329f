"""Versions uploaded through the registry API load from the artifact store as they were
recognised, and a pickle loads only after an organisation admin trusts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.config import Settings
from maestro.registry.models import ModelVersion
from maestro.runtimes import ModelCache, ModelLoadError, load_version
from tests.factories import Actor, Factory
from tests.registry.conftest import new_model, new_version
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import joblib_bytes, skops_bytes
from tests.runtimes.payloads import CreatesFile


@pytest.fixture
def admin(factory: Factory) -> tuple[Actor, str]:
    org = factory.organization("Acme")
    actor = factory.user(org, "admin")
    return actor, factory.project(org, actor, "organization", name="Churn")


def stored_version(factory: Factory, version_id: str) -> ModelVersion:
    with factory.database.session(write=False) as session:
        row = session.get(ModelVersion, version_id)
        assert row is not None
        session.expunge(row)
        return row


def loader(app: FastAPI, factory: Factory, settings: Settings) -> Any:
    return lambda version_id: load_version(stored_version(factory, version_id), app.state.store, settings)


def test_an_uploaded_skops_version_is_served(
    client: TestClient,
    app: FastAPI,
    factory: Factory,
    settings: Settings,
    admin: tuple[Actor, str],
    forest: Any,
    data: Data,
) -> None:
    actor, project = admin
    model = new_model(client, project, actor.headers)
    version = new_version(
        client, model["id"], actor.headers, content=skops_bytes(forest), filename="rf.skops"
    )
    assert version["format"] == "skops"
    cache = ModelCache(loader(app, factory, settings), max_models=4, max_bytes=10**9)
    cache.swap("churn", version["id"])
    runtime = cache.runtime_for("churn")
    assert runtime.serving == "onnx (converted from skops)"
    assert runtime.predict(data.fresh).tolist() == forest.predict(data.fresh).tolist()


def test_an_uploaded_joblib_needs_an_admins_trust(
    client: TestClient,
    app: FastAPI,
    factory: Factory,
    settings: Settings,
    admin: tuple[Actor, str],
    logreg: Any,
    data: Data,
    tmp_path: Path,
) -> None:
    actor, project = admin
    model = new_model(client, project, actor.headers)
    marker = tmp_path / "pwned"
    hostile = new_version(client, model["id"], actor.headers, content=joblib_bytes(CreatesFile(str(marker))))
    benign = new_version(client, model["id"], actor.headers, content=joblib_bytes(logreg))
    assert hostile["format"] == benign["format"] == "joblib"
    cache = ModelCache(loader(app, factory, settings), max_models=4, max_bytes=10**9, failure_ttl=3600)
    for version in (hostile, benign):
        with pytest.raises(ModelLoadError) as caught:
            cache.get(version["id"])
        assert caught.value.reason == "not_trusted"
    assert not marker.exists()

    response = client.put(
        f"/api/v1/models/{model['id']}/versions/{benign['version']}/trusted",
        json={"trusted": True},
        headers=actor.headers,
    )
    assert response.status_code == 200, response.text
    cache.invalidate(benign["id"])  # the refusal was remembered; trust changes the answer
    runtime = cache.get(benign["id"])
    assert runtime.serving == "onnx (converted from joblib)"
    assert np.array_equal(runtime.predict(data.fresh), logreg.predict(data.fresh))
    assert not marker.exists()
