"""A process's models are counted at what their load check measured, not at an estimate
from the file's size; a deploy that would take the models a process serves past
``MAESTRO_SERVING_CACHE_MAX_BYTES`` is refused (409) saying what is in use, and what
was deployed keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.deployments.platform import (
    Tiny,
    deploy,
    deployed,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import World
from tests.runtimes import crafted

MIB = 1024**2


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(model_memory_budget_bytes=1024 * MIB, serving_cache_max_bytes=1024 * MIB)


@pytest.mark.slow
def test_models_are_counted_at_their_measured_cost(
    client: TestClient, app: FastAPI, world: World, tiny: Tiny
) -> None:
    """The 257 KB skops file carrying 32 Mi zeros costs what it unpacks to."""
    junk = crafted.skops_with_junk()
    assert len(junk) < 1024 * 1024
    version = upload(client, register(client, world, "Junk"), world.developer.headers, junk, schema=None)
    measured = version["load_check"]["memory_bytes"]
    assert measured >= 256 * MIB  # not the 64 KiB an estimate from the file's size gave
    served = deployed(client, world, "junk", version["id"])
    assert served["serving"]["memory_bytes"] == measured
    entries = {entry["key"]: entry["memory_bytes"] for entry in app.state.serving.cache.stats().entries}
    assert entries[version["id"]] == measured

    # The next model would take the process past its limit: refused, saying what is in use.
    other = upload(client, register(client, world, "Other"), world.developer.headers, junk, schema=None)
    refused = deploy(client, world, "other", other["id"])
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["details"] == [{"field": "model_version_id", "message": "too_large_for_cache"}]
    assert "MAESTRO_SERVING_CACHE_MAX_BYTES" in error["message"]
    assert "1 other model(s) this process serves" in error["message"]
    assert other["id"] not in app.state.serving.cache
    small = upload(client, register(client, world, "Small"), world.developer.headers, skops_file(tiny.first))
    deployed(client, world, "small", small["id"])  # a model that fits still deploys
    answer = predict(client, "small", world.key_headers, records(tiny.X[:2]))
    assert answer.status_code == 200, answer.text
    assert [p["prediction"] for p in answer.json()["predictions"]] == tiny.first.predict(tiny.X[:2]).tolist()
