from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.tracking.models import MetricPoint
from tests.factories import Factory
from tests.tracking.conftest import (
    World,
    audit_rows,
    error_of,
    log_metrics,
    new_experiment,
    new_run,
    ok,
    run_url,
)


@pytest.fixture
def run(client: TestClient, world: World) -> dict:
    experiment = new_experiment(client, world.project, world.admin.headers)
    return new_run(client, experiment["id"], world.admin.headers)


def base(run: dict) -> str:
    return run_url(run["experiment_id"], run["id"])


def history(client: TestClient, run: dict, world: World, name: str, **params: object) -> dict:
    return ok(client.get(f"{base(run)}/metrics/{name}", params=params, headers=world.viewer.headers))


def point_count(factory: Factory) -> int:
    with factory.database.session(write=False) as session:
        return session.scalar(select(func.count()).select_from(MetricPoint)) or 0


class TestLogging:
    def test_thousands_of_points_in_one_request(
        self, client: TestClient, factory: Factory, world: World, run: dict
    ) -> None:
        points = [{"name": "loss", "value": 1 / (step + 1), "step": step} for step in range(5000)]
        points += [{"name": "accuracy", "value": step / 5000, "step": step} for step in range(5000)]
        data = ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        assert data == {"run_id": run["id"], "logged": 10_000, "keys": ["accuracy", "loss"]}
        assert point_count(factory) == 10_000
        latest = ok(client.get(f"{base(run)}/metrics", headers=world.viewer.headers))
        assert [(item["name"], item["step"], item["value"]) for item in latest] == [
            ("accuracy", 4999, 4999 / 5000),
            ("loss", 4999, 1 / 5000),
        ]
        # one audit row for the whole batch
        [row] = audit_rows(factory, world.org, "tracking:log_run_metrics")
        assert row.details["points"] == 10_000

    def test_latest_is_the_highest_step_then_timestamp(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        eid, rid = run["experiment_id"], run["id"]
        points = [
            {"name": "m", "value": 1, "step": 5, "timestamp": 1000},
            {"name": "m", "value": 2, "step": 9, "timestamp": 500},
            {"name": "m", "value": 3, "step": 9, "timestamp": 400},
        ]
        ok(log_metrics(client, eid, rid, world.admin.headers, points))
        # a later batch with a lower step does not replace it; a tie on step with a later time does
        ok(log_metrics(client, eid, rid, world.admin.headers, [{"name": "m", "value": 4, "step": 3}]))
        assert ok(client.get(base(run), headers=world.admin.headers))["metrics"] == {"m": 2}
        ok(
            log_metrics(
                client,
                eid,
                rid,
                world.admin.headers,
                [{"name": "m", "value": 5, "step": 9, "timestamp": 600}],
            )
        )
        assert ok(client.get(base(run), headers=world.admin.headers))["metrics"] == {"m": 5}

    def test_nan_and_infinities_round_trip(self, client: TestClient, world: World, run: dict) -> None:
        # what Python's and MLflow's JSON writers send: bare NaN / Infinity tokens
        body = json.dumps(
            {
                "metrics": [
                    {"name": "nan", "value": math.nan, "step": 0},
                    {"name": "inf", "value": math.inf, "step": 0},
                    {"name": "ninf", "value": -math.inf, "step": 0},
                    {"name": "text_nan", "value": "NaN", "step": 0},
                    {"name": "text_inf", "value": "-Infinity", "step": 0},
                ]
            }
        )
        response = client.post(
            f"{base(run)}/metrics",
            content=body,
            headers={**world.admin.headers, "Content-Type": "application/json"},
        )
        ok(response)
        metrics = ok(client.get(base(run), headers=world.admin.headers))["metrics"]
        assert metrics == {
            "inf": "Infinity",
            "nan": "NaN",
            "ninf": "-Infinity",
            "text_inf": "-Infinity",
            "text_nan": "NaN",
        }
        points = history(client, run, world, "nan")["points"]
        assert [point["value"] for point in points] == ["NaN"]

    def test_default_timestamp_and_step(self, client: TestClient, world: World, run: dict) -> None:
        ok(
            log_metrics(
                client, run["experiment_id"], run["id"], world.admin.headers, [{"name": "a", "value": 1}]
            )
        )
        [point] = history(client, run, world, "a")["points"]
        assert point["step"] == 0
        assert point["timestamp"] > 1_700_000_000_000

    def test_names_with_slashes_and_spaces(self, client: TestClient, world: World, run: dict) -> None:
        points = [{"name": "train/loss", "value": 0.5}, {"name": "val loss", "value": 0.7}]
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        assert history(client, run, world, "train/loss")["points"][0]["value"] == 0.5
        assert history(client, run, world, "val%20loss")["points"][0]["value"] == 0.7

    @pytest.mark.parametrize(
        "points",
        [
            [],
            [{"name": "a"}],
            [{"name": "a", "value": "high"}],
            [{"name": "a", "value": None}],
            [{"name": "", "value": 1}],
            [{"name": "a" * 251, "value": 1}],
            [{"name": "bad!name", "value": 1}],
            [{"name": "a/../b", "value": 1}],
            [{"name": "/root", "value": 1}],
            [{"name": "a", "value": 1, "step": 2**63}],
            [{"name": "a", "value": 1, "timestamp": -1}],
            [{"name": "a", "value": 1, "step": 1.5}],
            [{"name": "a", "value": 1}] * 3 + [{"name": "b", "value": [1]}],
        ],
    )
    def test_invalid_points_store_nothing(
        self, client: TestClient, factory: Factory, world: World, run: dict, points: list
    ) -> None:
        response = log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points)
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "VALIDATION_ERROR"
        assert point_count(factory) == 0

    @pytest.mark.parametrize(
        "content", [b"", b"not json", b'{"metrics": [', b"\xff\xfe", b"[]", b'{"metrics": {}}']
    )
    def test_malformed_bodies(self, client: TestClient, world: World, run: dict, content: bytes) -> None:
        response = client.post(
            f"{base(run)}/metrics",
            content=content,
            headers={**world.admin.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422

    def test_not_json_is_415(self, client: TestClient, world: World, run: dict) -> None:
        response = client.post(
            f"{base(run)}/metrics",
            content=b"a=1",
            headers={**world.admin.headers, "Content-Type": "text/plain"},
        )
        assert response.status_code == 415

    def test_batch_limit_is_a_setting(self, make_settings, world: World) -> None:  # type: ignore[no-untyped-def]
        app = create_app(make_settings(max_metric_batch=100))
        with TestClient(app) as client:
            experiment = new_experiment(client, world.project, world.admin.headers)
            run = new_run(client, experiment["id"], world.admin.headers)
            points = [{"name": "a", "value": step, "step": step} for step in range(101)]
            response = log_metrics(client, experiment["id"], run["id"], world.admin.headers, points)
            assert response.status_code == 422
            assert "100" in error_of(response)["message"]
            # a body far beyond what the limit allows is refused before it is parsed
            huge = b'{"metrics": [' + b'{"name": "a", "value": 1},' * 10_000 + b'{"name": "a", "value": 1}]}'
            response = client.post(
                f"{run_url(experiment['id'], run['id'])}/metrics",
                content=huge,
                headers={**world.admin.headers, "Content-Type": "application/json"},
            )
            assert response.status_code == 413

    def test_logging_to_an_ended_run_is_allowed(self, client: TestClient, world: World, run: dict) -> None:
        client.put(f"{base(run)}/status", json={"status": "completed"}, headers=world.admin.headers)
        ok(
            log_metrics(
                client, run["experiment_id"], run["id"], world.admin.headers, [{"name": "late", "value": 1}]
            )
        )


class TestHistory:
    def test_raw_history_pages_by_keyset(self, client: TestClient, world: World, run: dict) -> None:
        points = [{"name": "loss", "value": float(step), "step": step} for step in range(2500)]
        # two points on one step: both kept, in the order logged
        points.append({"name": "loss", "value": -1.0, "step": 7})
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        seen: list[tuple[int, float]] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, object] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = history(client, run, world, "loss", **params)
            assert page["total_points"] == 2501
            assert page["downsampled"] is False
            seen += [(point["step"], point["value"]) for point in page["points"]]
            pages += 1
            cursor = page["next_cursor"]
            if not page["has_next"]:
                break
        assert pages == 3
        assert len(seen) == 2501
        assert seen[7:9] == [(7, 7.0), (7, -1.0)]
        assert [step for step, _ in seen] == sorted(step for step, _ in seen)

    def test_unknown_metric_has_an_empty_history(self, client: TestClient, world: World, run: dict) -> None:
        page = history(client, run, world, "never_logged")
        assert (page["total_points"], page["points"], page["has_next"]) == (0, [], False)

    def test_bad_cursor_is_422(self, client: TestClient, world: World, run: dict) -> None:
        for cursor in ("garbage", "W10", "WyJoIiwgMSwgLTFd"):
            response = client.get(
                f"{base(run)}/metrics/loss", params={"cursor": cursor}, headers=world.admin.headers
            )
            assert response.status_code == 422

    def test_downsampling_keeps_first_last_and_extremes(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        values = [math.sin(step / 50) for step in range(10_000)]
        values[4321] = 25.0  # a spike
        values[777] = -25.0  # a dip
        points = [{"name": "signal", "value": value, "step": step} for step, value in enumerate(values)]
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        page = history(client, run, world, "signal", max_points=100)
        assert page["downsampled"] is True
        assert page["total_points"] == 10_000
        steps = [point["step"] for point in page["points"]]
        assert len(steps) <= 100
        assert steps == sorted(steps)
        assert steps[0] == 0 and steps[-1] == 9999
        assert 4321 in steps and 777 in steps
        by_step = {point["step"]: point["value"] for point in page["points"]}
        assert by_step[4321] == 25.0 and by_step[777] == -25.0
        # the maximum and minimum of the whole series survive
        assert max(by_step.values()) == 25.0 and min(by_step.values()) == -25.0

    def test_short_series_are_not_downsampled(self, client: TestClient, world: World, run: dict) -> None:
        points = [{"name": "few", "value": step, "step": step} for step in range(20)]
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        page = history(client, run, world, "few", max_points=50)
        assert page["downsampled"] is False
        assert len(page["points"]) == 20

    def test_downsampling_with_nan_and_extreme_steps(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        points = [{"name": "odd", "value": "NaN", "step": step} for step in range(50)]
        points += [
            {"name": "odd", "value": 1.0, "step": -(2**63)},
            {"name": "odd", "value": 2.0, "step": 2**63 - 1},
        ]
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))
        page = history(client, run, world, "odd", max_points=10)
        assert page["downsampled"] is True
        steps = [point["step"] for point in page["points"]]
        assert steps[0] == -(2**63) and steps[-1] == 2**63 - 1
        assert len(steps) <= 10

    def test_max_points_with_cursor_is_422(self, client: TestClient, world: World, run: dict) -> None:
        response = client.get(
            f"{base(run)}/metrics/loss",
            params={"max_points": 100, "cursor": "x"},
            headers=world.admin.headers,
        )
        assert response.status_code == 422
