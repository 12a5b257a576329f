"""After a restart the active deployments' models load in the background: the server is
live at once, ready (/api/v1/health) only once they are loaded, and the first prediction
finds its model already loaded."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from maestro.app import create_app
from maestro.config import Settings
from tests.conftest import RunningProcess, wait_until
from tests.deployments.platform import SCHEMA, Tiny, records, skops_file
from tests.factories import Factory

pytestmark = pytest.mark.slow


def model_loads(server: RunningProcess) -> int:
    """Models this server process has loaded, as its Prometheus metrics count them."""
    text = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(r'^maestro_model_loads_total\{outcome="loaded"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def test_active_deployments_are_warm_before_the_server_is_ready(
    serve: Callable[..., RunningProcess], make_settings: Callable[..., Settings], tmp_path: Path, tiny: Tiny
) -> None:
    hold = tmp_path / "warm-up-may-start"
    settings = make_settings(warmup_hold_file=hold)
    factory = Factory(create_app(settings))  # writes the people straight into the server's database
    org = factory.organization()
    developer = factory.user(org, "developer")
    project = factory.project(org, developer, "organization")
    key = {"X-API-Key": factory.api_key(org, {"inference": ["read"]})}

    first = serve(settings)
    hold.touch()  # the first start has nothing to warm
    with httpx.Client(base_url=first.base_url, headers=developer.headers, timeout=60) as http:
        model = http.post(
            f"/api/v1/projects/{project}/models", json={"name": "Fraud", "model_type": "classification"}
        ).json()["data"]["id"]
        version = http.post(
            f"/api/v1/models/{model}/versions",
            data={"model_schema": json.dumps(SCHEMA)},
            files={"model_file": ("m.skops", skops_file(tiny.first), "application/octet-stream")},
        ).json()["data"]["id"]
        created = http.post(
            f"/api/v1/projects/{project}/deployments", json={"name": "fraud-api", "model_version_id": version}
        )
        assert created.status_code == 201, created.text
    first.stop()

    hold.unlink()  # the restarted server's warm-up waits for this file
    server = serve(settings)  # live: /health answers
    not_ready = httpx.get(f"{server.base_url}/api/v1/health")
    assert not_ready.status_code == 503
    error = not_ready.json()["error"]
    assert "deployments" in error["message"]
    assert any(detail["field"] == "deployments" for detail in error["details"])
    assert model_loads(server) == 0

    hold.touch()
    wait_until(lambda: httpx.get(f"{server.base_url}/api/v1/health").status_code == 200, timeout=60)
    ready: dict[str, Any] = httpx.get(f"{server.base_url}/api/v1/health").json()["data"]
    assert ready["checks"]["deployments"]["status"] == "up"
    assert model_loads(server) == 1  # loaded before any request asked for it

    rows = tiny.X[:4]
    answer = httpx.post(
        f"{server.base_url}/api/v1/inference/fraud-api", json={"instances": records(rows)}, headers=key
    )
    assert answer.status_code == 200, answer.text
    assert [p["prediction"] for p in answer.json()["predictions"]] == tiny.first.predict(rows).tolist()
    assert model_loads(server) == 1  # answered by the model loaded at start
