"""A deployment's performance over time: requests counted by the real serving path at
known minutes, read back over a window and per interval (1m, 1h, the default), with
every process's rows added up and empty intervals shown; hostile windows refused with a
clear error; another tenant's deployment unknown; and ``quantity`` answering what the
route shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.db import new_id
from maestro.deployments.models import DeploymentMinute
from maestro.deployments.predictions import Served
from maestro.errors import NotFound, ValidationFailed
from maestro.monitoring.service import QUANTITIES, quantity
from tests.deployments.platform import Tiny, deployed, flush, onnx_file, register, upload
from tests.factories import Factory, World

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)  # a past hour the traffic below is served in


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def live(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    return deployed(client, world, "fraud-api", version["id"])


def serve(
    app: FastAPI, live: dict[str, Any], world: World, minute: float, latency_ms: float, **kw: Any
) -> None:
    app.state.serving.recorder.record(
        Served(
            deployment_id=live["id"],
            organization_id=world.org,
            version_id=live["model_version"]["id"],
            request_id=new_id("req"),
            prediction_id=new_id("pred"),
            status_code=kw.get("status", 200),
            latency_ms=latency_ms,
            rows=kw.get("rows", 1),
            at=at(minute).timestamp(),
        ),
        log=False,
    )


@pytest.fixture
def traffic(app: FastAPI, live: dict[str, Any], world: World, factory: Factory) -> dict[str, Any]:
    """10:00 three 20 ms answers; 10:01 nothing; 10:02 a 200 ms answer of 5 rows and a
    3 ms failure from one process, two 40 ms answers from another; 11:30 two 600 ms
    answers and two 600 ms failures."""
    for _ in range(3):
        serve(app, live, world, 0.5, 20.0)
    serve(app, live, world, 2.1, 200.0, rows=5)
    serve(app, live, world, 2.2, 3.0, status=500, rows=0)
    flush(app)
    for _ in range(2):
        serve(app, live, world, 2.9, 40.0)  # the same minute, written by another flush
    for status in (200, 200, 422, 422):
        serve(app, live, world, 90.0, 600.0, status=status)
    flush(app)
    with factory.database.session(write=False) as session:
        rows = session.scalar(
            select(func.count()).where(
                DeploymentMinute.deployment_id == live["id"], DeploymentMinute.minute == at(2)
            )
        )
    assert rows == 2
    return live


def monitoring(client: TestClient, deployment_id: str, headers: dict[str, str], **params: Any) -> Any:
    return client.get(
        f"/api/v1/deployments/{deployment_id}/monitoring/metrics", params=params, headers=headers
    )


def metrics(client: TestClient, world: World, deployment_id: str, **params: Any) -> dict[str, Any]:
    response = monitoring(client, deployment_id, world.viewer.headers, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    return body["error"]


class TestFigures:
    def test_the_window(self, client: TestClient, world: World, traffic: dict[str, Any]) -> None:
        data = metrics(client, world, traffic["id"], start=iso(at(0)), end=iso(at(120)), granularity="1h")
        current = data["current_metrics"]
        assert (current["request_count"], current["error_count"], current["prediction_count"]) == (11, 3, 12)
        assert current["throughput_rps"] == pytest.approx(11 / 7200, abs=1e-6)
        assert current["error_rate"] == pytest.approx(3 / 11, abs=1e-6)
        assert current["accuracy"] is None
        # latencies 3, 20 x3, 40 x2, 200, 600 x4: the median in (25, 50], p95 and p99
        # in (500, 1000] and never past the slowest request
        assert 25 <= current["latency_p50"] <= 50
        assert 500 <= current["latency_p95"] <= current["latency_p99"] <= 600

    def test_hourly(self, client: TestClient, world: World, traffic: dict[str, Any]) -> None:
        data = metrics(client, world, traffic["id"], start=iso(at(0)), end=iso(at(120)), granularity="1h")
        assert data["granularity"] == "1h"
        first, second = data["time_series"]
        assert first["timestamp"] == "2025-06-01T10:00:00Z"
        assert second["timestamp"] == "2025-06-01T11:00:00Z"
        assert first["request_count"] == 7
        assert first["throughput_rps"] == pytest.approx(7 / 3600, abs=1e-6)
        assert first["error_rate"] == pytest.approx(1 / 7, abs=1e-6)
        assert 100 <= first["latency_p95"] <= 200  # 200 ms is the slowest of the hour
        assert second["request_count"] == 4
        assert second["error_rate"] == 0.5
        assert 500 <= second["latency_p95"] <= 600
        assert first["accuracy"] is second["accuracy"] is None

    def test_by_the_minute_with_empty_minutes(
        self, client: TestClient, world: World, traffic: dict[str, Any]
    ) -> None:
        data = metrics(client, world, traffic["id"], start=iso(at(0)), end=iso(at(5)), granularity="1m")
        series = data["time_series"]
        assert [p["timestamp"] for p in series] == [iso(at(m)) for m in range(5)]
        assert [p["request_count"] for p in series] == [3, 0, 4, 0, 0]
        assert series[0]["throughput_rps"] == pytest.approx(3 / 60, abs=1e-6)
        assert series[0]["error_rate"] == 0
        assert 10 <= series[0]["latency_p95"] <= 20
        # both processes' rows for 10:02: 200, 3 (failed), 40, 40 ms
        assert series[2]["throughput_rps"] == pytest.approx(4 / 60, abs=1e-6)
        assert series[2]["error_rate"] == 0.25
        assert 100 <= series[2]["latency_p95"] <= 200
        no_labels = {name: None for name in series[1]["quality"]} | {"label_count": 0}
        assert series[1] == {
            "timestamp": iso(at(1)),
            "accuracy": None,
            "latency_p95": None,
            "throughput_rps": 0.0,
            "error_rate": None,
            "request_count": 0,
            "quality": no_labels,
        }
        assert data["current_metrics"]["request_count"] == 7

    def test_a_window_inside_intervals_counts_its_part(
        self, client: TestClient, world: World, traffic: dict[str, Any]
    ) -> None:
        data = metrics(client, world, traffic["id"], start=iso(at(2)), end=iso(at(30)), granularity="1h")
        (point,) = data["time_series"]
        assert point["timestamp"] == "2025-06-01T10:00:00Z"  # the interval's start
        assert point["request_count"] == data["current_metrics"]["request_count"] == 4
        assert (
            point["throughput_rps"]
            == data["current_metrics"]["throughput_rps"]
            == pytest.approx(4 / 1680, abs=1e-6)
        )

    def test_default_granularities(self, client: TestClient, world: World, traffic: dict[str, Any]) -> None:
        two_hours = metrics(client, world, traffic["id"], start=iso(at(0)), end=iso(at(120)))
        assert two_hours["granularity"] == "1m"
        assert len(two_hours["time_series"]) == 120
        assert sum(p["request_count"] for p in two_hours["time_series"]) == 11
        last_day = metrics(client, world, traffic["id"])
        assert last_day["granularity"] == "5m"
        assert len(last_day["time_series"]) in (288, 289)
        assert last_day["current_metrics"]["request_count"] == 0
        assert last_day["current_metrics"]["error_rate"] is None
        decade = metrics(
            client, world, traffic["id"], start="2016-06-01T00:00:00Z", end="2026-06-01T00:00:00Z"
        )
        assert decade["granularity"] == "1d"
        assert decade["current_metrics"]["request_count"] == 11
        assert sum(p["request_count"] for p in decade["time_series"]) == 11

    def test_quantity_agrees_with_the_route(
        self, client: TestClient, world: World, factory: Factory, traffic: dict[str, Any]
    ) -> None:
        window = (at(0), at(120))
        shown = metrics(client, world, traffic["id"], start=iso(window[0]), end=iso(window[1]))[
            "current_metrics"
        ]
        current = {**shown, **shown["quality"]}
        assert set(QUANTITIES) <= set(current)
        with factory.database.session(write=False) as session:
            for name in QUANTITIES:
                expected = current[name]
                got = quantity(session, None, traffic["id"], name, *window)
                assert got == (None if expected is None else pytest.approx(float(expected))), name
            assert quantity(session, None, traffic["id"], "error_rate", at(60), at(120)) == 0.5
            with pytest.raises(ValidationFailed, match="latency_p95"):
                quantity(session, None, traffic["id"], "latency_p42", *window)
            with pytest.raises(NotFound):
                quantity(session, None, "deploy_doesnotexist", "request_count", *window)
            with pytest.raises(ValidationFailed):
                quantity(session, None, traffic["id"], "request_count", at(120), at(0))


class TestRefusals:
    def test_hostile_windows(self, client: TestClient, world: World, live: dict[str, Any]) -> None:
        def asked(**params: Any) -> dict[str, Any]:
            return refused(monitoring(client, live["id"], world.viewer.headers, **params), 422)

        backwards = asked(start=iso(at(60)), end=iso(at(0)))
        assert backwards["code"] == "VALIDATION_ERROR"
        assert "start must be before end" in backwards["message"]
        assert asked(start=iso(at(0)), end=iso(at(0)))["code"] == "VALIDATION_ERROR"
        assert asked(granularity="2m")["code"] == "VALIDATION_ERROR"
        assert asked(start="0001-01-01T00:00:00Z")["code"] == "VALIDATION_ERROR"
        assert asked(start="yesterday")["code"] == "VALIDATION_ERROR"
        ten_years = asked(start="2016-01-01T00:00:00Z", end="2026-01-01T00:00:00Z", granularity="1m")
        assert "At most 10000 points" in ten_years["message"]
        everything = asked(start="1970-01-02T00:00:00Z", end="9998-12-30T00:00:00Z")
        assert "At most 10000 points" in everything["message"]

    def test_another_tenants_deployment_is_unknown(
        self, client: TestClient, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        model = register(client, world, "Theirs", project=world.other_project)
        version = upload(client, model, world.outsider.headers, onnx_file(tiny.first))
        theirs = client.post(
            f"/api/v1/projects/{world.other_project}/deployments",
            json={"name": "globex-api", "model_version_id": version["id"]},
            headers=world.outsider.headers,
        ).json()["data"]["id"]
        answers = [
            monitoring(client, target, world.admin.headers) for target in (theirs, "deploy_doesnotexist")
        ]
        assert [a.status_code for a in answers] == [404, 404]
        assert answers[0].json()["error"] == answers[1].json()["error"]
        assert monitoring(client, theirs, world.outsider.headers).status_code == 200
        assert monitoring(client, live["id"], world.outsider.headers).status_code == 404

    def test_readers_are_those_of_the_deployment(
        self, client: TestClient, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        model = client.post(
            f"/api/v1/projects/{world.private}/models",
            json={"name": "Secret model", "model_type": "classification"},
            headers=world.admin.headers,
        ).json()["data"]["id"]
        version = upload(client, model, world.admin.headers, onnx_file(tiny.first))
        secret = client.post(
            f"/api/v1/projects/{world.private}/deployments",
            json={"name": "secret-api", "model_version_id": version["id"]},
            headers=world.admin.headers,
        ).json()["data"]["id"]
        for target, headers, status in (
            (secret, world.viewer.headers, 404),  # a private project the viewer is not in
            (live["id"], world.key_headers, 403),  # an API key for inference only
            (live["id"], {}, 401),
        ):
            deployment = client.get(f"/api/v1/deployments/{target}", headers=headers)
            answer = monitoring(client, target, headers)
            assert answer.status_code == deployment.status_code == status
        world.acme.add_to_project(world.private, world.viewer, "viewer")
        assert monitoring(client, secret, world.viewer.headers).status_code == 200
