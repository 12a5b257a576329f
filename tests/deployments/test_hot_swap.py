"""Against a real ``maestro serve``: a deploy and a rollback under concurrent load, where
every request answers 200, first from the old version, then the new one, then the old
again; and the prediction log and request counts still in memory written at shutdown."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.config import Settings
from maestro.deployments.models import Deployment, DeploymentMinute, PredictionLog
from tests.conftest import wait_until
from tests.deployments.platform import SCHEMA, Tiny, records, skops_file
from tests.factories import Factory

THREADS = 3


@pytest.mark.slow
def test_no_request_fails_during_a_deploy_and_a_rollback(serve: Any, settings: Settings, tiny: Tiny) -> None:
    factory = Factory(create_app(settings))  # writes the people straight into the server's database
    org = factory.organization()
    developer = factory.user(org, "developer")
    project = factory.project(org, developer, "organization")
    key = {"X-API-Key": factory.api_key(org, {"inference": ["read"]})}
    server = serve(settings)
    rows = records(tiny.X[:4])
    body = {"instances": rows}
    expected = {
        "1.0.0": tiny.first.predict(tiny.X[:4]).tolist(),
        "1.0.1": tiny.second.predict(tiny.X[:4]).tolist(),
    }

    with httpx.Client(base_url=server.base_url, headers=developer.headers, timeout=60) as http:
        model = http.post(
            f"/api/v1/projects/{project}/models", json={"name": "Fraud", "model_type": "classification"}
        ).json()["data"]["id"]
        versions = [
            http.post(
                f"/api/v1/models/{model}/versions",
                data={"model_schema": json.dumps(SCHEMA)},
                files={"model_file": ("m.skops", skops_file(m), "application/octet-stream")},
            ).json()["data"]["id"]
            for m in (tiny.first, tiny.second)
        ]
        created = http.post(
            f"/api/v1/projects/{project}/deployments",
            json={"name": "fraud-api", "model_version_id": versions[0]},
        )
        assert created.status_code == 201, created.text
        deployment = created.json()["data"]["id"]

        answers: list[tuple[int, str | None, bool]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            # Requests go on until the test says stop (also when a wait below fails), not
            # for a number of requests that a slow deploy could outlast.
            with httpx.Client(base_url=server.base_url, headers=key, timeout=60) as caller:
                while not stop.is_set():
                    response = caller.post("/api/v1/inference/fraud-api", json=body)
                    version, right = None, False
                    if response.status_code == 200:
                        answer = response.json()
                        version = answer["model_info"]["version"]
                        right = [p["prediction"] for p in answer["predictions"]] == expected[version]
                    with lock:
                        answers.append((response.status_code, version, right))

        def answered(version: str, after: int) -> bool:
            with lock:
                return any(v == version for _, v, _ in answers[after:])

        threads = [threading.Thread(target=load, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(answers) >= 30, timeout=60)
            mark = len(answers)
            redeployed = http.put(f"/api/v1/deployments/{deployment}", json={"model_version_id": versions[1]})
            assert redeployed.status_code == 200, redeployed.text
            wait_until(lambda: answered("1.0.1", mark), timeout=60)
            wait_until(lambda: len(answers) >= mark + 60, timeout=60)
            mark = len(answers)
            rolled = http.post(f"/api/v1/deployments/{deployment}/rollback", json={"reason": "load test"})
            assert rolled.status_code == 200, rolled.text
            wait_until(lambda: answered("1.0.0", mark), timeout=60)
            wait_until(lambda: len(answers) >= mark + 60, timeout=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)

    statuses = {status for status, _, _ in answers}
    assert statuses == {200}, f"{sum(s != 200 for s, _, _ in answers)} of {len(answers)} requests failed"
    assert all(right for _, _, right in answers), "an answer did not match the version it named"
    served = [version for _, version, _ in answers]
    changes = [v for i, v in enumerate(served) if i == 0 or v != served[i - 1]]
    assert changes[0] == "1.0.0" and "1.0.1" in changes and changes[-1] == "1.0.0"


@pytest.mark.slow
def test_what_is_buffered_is_written_at_shutdown(serve: Any, make_settings: Any, tiny: Tiny) -> None:
    settings = make_settings(prediction_log_flush_seconds=60)  # only the shutdown writes them
    factory = Factory(create_app(settings))
    org = factory.organization()
    developer = factory.user(org, "developer")
    project = factory.project(org, developer, "organization")
    server = serve(settings)
    with httpx.Client(base_url=server.base_url, headers=developer.headers, timeout=60) as http:
        model = http.post(
            f"/api/v1/projects/{project}/models", json={"name": "Fraud", "model_type": "classification"}
        ).json()["data"]["id"]
        version = http.post(
            f"/api/v1/models/{model}/versions",
            data={"model_schema": json.dumps(SCHEMA)},
            files={"model_file": ("m.skops", skops_file(tiny.first), "application/octet-stream")},
        ).json()["data"]["id"]
        deployment = http.post(
            f"/api/v1/projects/{project}/deployments", json={"name": "fraud-api", "model_version_id": version}
        ).json()["data"]["id"]
        for _ in range(3):
            response = http.post("/api/v1/inference/fraud-api", json={"instances": records(tiny.X[:2])})
            assert response.status_code == 200, response.text
    server.stop()  # SIGTERM: uvicorn runs the app's shutdown, then exits by the signal
    assert "Application shutdown complete" in server.output()
    with factory.database.session(write=False) as session:
        logged = session.scalar(select(func.count()).select_from(PredictionLog))
        counted = session.scalar(select(func.sum(DeploymentMinute.request_count)))
        last = session.get(Deployment, deployment).last_request_at  # type: ignore[union-attr]
    assert (logged, counted) == (3, 3)
    assert last is not None
