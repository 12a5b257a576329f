"""A deploy, a redeploy and a rollback load and warm the version before the deployment
reports it and before traffic moves, in the process that took the request and in the
other serving processes; the first request afterwards loads nothing. Loads are held
mid-flight by the test, so what answers meanwhile is seen, not guessed."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from maestro.app import create_app
from maestro.deployments import state
from maestro.runtimes import ModelLoadError, PredictionError, Runtime, load_runtime
from maestro.runtimes.base import WARM_UP_ROWS
from tests.deployments.platform import (
    Tiny,
    deploy,
    deployed,
    flush,
    onnx_file,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import World

LOADED = re.compile(r'^maestro_model_loads_total\{outcome="loaded"\} (\S+)$', re.M)
WAIT = 60  # seconds: only how long a broken test hangs before failing


def model_loads(client: TestClient) -> int:
    """Models the process behind ``client`` has loaded, as its Prometheus metrics count them."""
    found = LOADED.search(client.get("/metrics").text)
    return int(float(found.group(1))) if found else 0


class HeldLoad:
    """Holds every load of one version, in whichever process asks for it, until released."""

    def __init__(self, version_id: str) -> None:
        self.version_id = version_id
        self.reached = threading.Event()
        self.released = threading.Event()

    def wrap(self, load: Callable[..., Runtime]) -> Callable[..., Runtime]:
        def held(row: Any, *args: Any, **kwargs: Any) -> Runtime:
            if row.id == self.version_id:
                self.reached.set()
                assert self.released.wait(WAIT), "the test never released the load"
            return load(row, *args, **kwargs)

        return held

    def wait_until_held(self) -> None:
        assert self.reached.wait(WAIT), f"nothing loaded {self.version_id}"


@contextmanager
def held_load(monkeypatch: pytest.MonkeyPatch, version_id: str) -> Iterator[HeldLoad]:
    hold = HeldLoad(version_id)
    with monkeypatch.context() as patch:
        patch.setattr(state, "load_checked_version", hold.wrap(state.load_checked_version))
        try:
            yield hold
        finally:
            hold.released.set()


def answers(client: TestClient, world: World, tiny: Tiny, version: str, model: Any) -> None:
    """The deployment answers, from ``version``, what ``model`` predicts."""
    response = predict(client, "fraud-api", world.key_headers, records(tiny.X[:6]))
    assert response.status_code == 200, response.text
    assert response.json()["model_info"]["version"] == version
    assert [p["prediction"] for p in response.json()["predictions"]] == model.predict(tiny.X[:6]).tolist()


def shown(client: TestClient, world: World, deployment_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/deployments/{deployment_id}", headers=world.viewer.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


class TestInTheProcessThatDeploys:
    def test_a_new_deployment_is_listed_and_answers_only_once_warm(
        self, client: TestClient, world: World, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(tiny.first))
        listing = f"/api/v1/projects/{world.project}/deployments"
        with held_load(monkeypatch, version["id"]) as hold, ThreadPoolExecutor(1) as pool:
            creating = pool.submit(deploy, client, world, "fraud-api", version["id"])
            hold.wait_until_held()
            listed = client.get(listing, headers=world.viewer.headers)
            assert listed.status_code == 200 and listed.json()["data"] == []
            assert predict(client, "fraud-api", world.key_headers, records(tiny.X[:2])).status_code == 404
            hold.released.set()
            created = creating.result(WAIT)
        assert created.status_code == 201, created.text
        assert created.json()["data"]["status"] == "active"
        assert [d["id"] for d in client.get(listing, headers=world.viewer.headers).json()["data"]] == [
            created.json()["data"]["id"]
        ]
        loads = model_loads(client)
        answers(client, world, tiny, "1.0.0", tiny.first)
        assert model_loads(client) == loads  # the first request found the model loaded

    def test_a_redeploy_and_a_rollback_move_traffic_only_once_warm(
        self, client: TestClient, world: World, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        model = register(client, world)
        v1 = upload(client, model, world.developer.headers, skops_file(tiny.first))["id"]
        v2 = upload(client, model, world.developer.headers, skops_file(tiny.second))["id"]
        deployment = deployed(client, world, "fraud-api", v1)["id"]
        answers(client, world, tiny, "1.0.0", tiny.first)

        def moves(
            change: Callable[[], Response], old: tuple[str, str, Any], new: tuple[str, str, Any]
        ) -> None:
            with held_load(monkeypatch, new[0]) as hold, ThreadPoolExecutor(1) as pool:
                changing = pool.submit(change)
                hold.wait_until_held()
                meanwhile = shown(client, world, deployment)
                assert (meanwhile["status"], meanwhile["model_version"]["id"]) == ("active", old[0])
                for _ in range(5):
                    answers(client, world, tiny, old[1], old[2])
                hold.released.set()
                changed = changing.result(WAIT)
            assert changed.status_code == 200, changed.text
            assert (changed.json()["data"]["status"], changed.json()["data"]["model_version"]["id"]) == (
                "active",
                new[0],
            )
            loads = model_loads(client)
            answers(client, world, tiny, new[1], new[2])
            assert model_loads(client) == loads  # the first request found the model loaded

        first, second = (v1, "1.0.0", tiny.first), (v2, "1.0.1", tiny.second)
        headers = world.developer.headers
        moves(
            lambda: client.put(
                f"/api/v1/deployments/{deployment}", json={"model_version_id": v2}, headers=headers
            ),
            first,
            second,
        )
        moves(
            lambda: client.post(f"/api/v1/deployments/{deployment}/rollback", headers=headers), second, first
        )


class TestInAnotherProcess:
    """Two apps on one database stand for two serving processes: ``here`` deploys,
    ``there`` learns of it at its generation check, which the test runs itself."""

    @pytest.fixture
    def apps(self, make_settings: Any) -> tuple[FastAPI, FastAPI]:
        settings = make_settings(deployment_check_seconds=300)  # only the start's own check runs in the test
        return create_app(settings), create_app(settings)

    @staticmethod
    def _redeployed_elsewhere(
        here: TestClient, there: TestClient, serving: Any, world: World, tiny: Tiny
    ) -> tuple[str, str]:
        """``there`` serves version 1.0.0 of a deployment that ``here`` then moves to 1.0.1;
        (the deployment, the new version)."""
        model = register(here, world)
        v1 = upload(here, model, world.developer.headers, onnx_file(tiny.first))["id"]
        v2 = upload(here, model, world.developer.headers, onnx_file(tiny.second))["id"]
        deployment = deployed(here, world, "fraud-api", v1)["id"]
        serving.check_generation()  # there has seen every change so far
        answers(there, world, tiny, "1.0.0", tiny.first)  # and serves the deployment
        moved = here.put(
            f"/api/v1/deployments/{deployment}",
            json={"model_version_id": v2},
            headers=world.developer.headers,
        )
        assert moved.status_code == 200, moved.text
        return deployment, v2

    def test_the_new_version_is_warm_there_before_its_name_moves(
        self,
        apps: tuple[FastAPI, FastAPI],
        world: World,
        tiny: Tiny,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        with TestClient(apps[0]) as here, TestClient(apps[1]) as there:
            serving = apps[1].state.serving
            deployment, v2 = self._redeployed_elsewhere(here, there, serving, world, tiny)

            with held_load(monkeypatch, v2) as hold, ThreadPoolExecutor(1) as pool:
                # Waits for the check that follows the deploy, whichever thread runs it.
                checking = pool.submit(serving.check_generation)
                hold.wait_until_held()
                for _ in range(5):
                    answers(there, world, tiny, "1.0.0", tiny.first)
                hold.released.set()
                checking.result(WAIT)
            loads = model_loads(there)
            answers(there, world, tiny, "1.0.1", tiny.second)
            assert model_loads(there) == loads  # warmed by the check, not by the request

            rolled = here.post(f"/api/v1/deployments/{deployment}/rollback", headers=world.developer.headers)
            assert rolled.status_code == 200, rolled.text
            serving.check_generation()
            loads = model_loads(there)
            answers(there, world, tiny, "1.0.0", tiny.first)
            assert model_loads(there) == loads

    def test_a_version_that_fails_to_load_there_leaves_the_old_one_serving(
        self,
        apps: tuple[FastAPI, FastAPI],
        world: World,
        tiny: Tiny,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        with TestClient(apps[0]) as here, TestClient(apps[1]) as there:
            serving = apps[1].state.serving
            deployment, _ = self._redeployed_elsewhere(here, there, serving, world, tiny)

            def refused(row: Any, *args: Any, **kwargs: Any) -> Runtime:
                raise ModelLoadError("out_of_memory", "no room here")

            with monkeypatch.context() as patch:
                patch.setattr(state, "load_checked_version", refused)
                serving.check_generation()
                for _ in range(3):
                    answers(there, world, tiny, "1.0.0", tiny.first)
            flush(apps[1])
            logged = here.get(
                f"/api/v1/deployments/{deployment}/logs",
                params={"level": "error"},
                headers=world.viewer.headers,
            ).json()["data"]
            assert [entry["event"] for entry in logged] == ["load_failed"]
            assert "1.0.1 could not be loaded in this process: no room here" in logged[0]["message"]
            assert logged[0]["details"]["reason"] == "out_of_memory"


class TestWarmUp:
    """The first predictions a load makes: one row, then a batch."""

    def test_a_row_then_a_batch(self, tiny: Tiny) -> None:
        runtime = load_runtime(onnx_file(tiny.first), format="onnx")
        shapes: list[tuple[int, ...]] = []
        answer = runtime.predict_with_proba

        def recorded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            shapes.append(matrix.shape)
            return answer(matrix)

        runtime.predict_with_proba = recorded  # type: ignore[method-assign]
        runtime.warm_up()
        assert shapes == [(1, 4), (WARM_UP_ROWS, 4)]

    def test_a_model_failing_on_the_batch_is_refused_as_before(self, tiny: Tiny) -> None:
        runtime = load_runtime(onnx_file(tiny.first), format="onnx")
        answer = runtime.predict_with_proba

        def one_row_only(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            if matrix.shape[0] > 1:
                raise PredictionError("prediction_failed", "The model could not predict: batch")
            return answer(matrix)

        runtime.predict_with_proba = one_row_only  # type: ignore[method-assign]
        with pytest.raises(ModelLoadError) as caught:
            runtime.warm_up()
        assert caught.value.reason == "warm_up_failed"
        assert "batch" in caught.value.message
