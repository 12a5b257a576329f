from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.logs import JsonFormatter


def test_access_log_lines_are_structured(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(access_log=True, log_json=True))
    with caplog.at_level(logging.INFO, logger="maestro.access"), TestClient(app) as client:
        response = client.get("/api/v1/nothing-here", headers={"X-Request-ID": "trace-7"})
    record = next(r for r in caplog.records if r.name == "maestro.access")
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == response.headers["x-request-id"] == "trace-7"
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/nothing-here"
    assert line["status"] == 404
    assert line["duration_ms"] >= 0
    assert line["level"] == "INFO"
    assert line["time"].endswith("Z")


def test_access_log_can_be_turned_off(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(access_log=False))
    with caplog.at_level(logging.INFO, logger="maestro.access"), TestClient(app) as client:
        client.get("/health")
    assert not [r for r in caplog.records if r.name == "maestro.access"]
