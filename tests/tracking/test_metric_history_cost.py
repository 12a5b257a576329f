"""A metric history stays cheap however long the series: downsampling is done by the
database, reads at most ``MAESTRO_METRIC_DOWNSAMPLE_MAX_SCAN`` points, and a long series
takes a turn of the shared pool for CPU-heavy work; and the route's entry in the OpenAPI
document is exact (its path, and that it needs credentials)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from maestro.api.deps import route_requires_principal
from maestro.config import Settings
from maestro.tracking.metrics import HEAVY_SERIES
from tests.conftest import wait_until
from tests.tracking.conftest import World, error_of, log_metrics, new_experiment, new_run, ok, run_url

MAX_SCAN = 1000
BATCH = 10_000


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        metric_downsample_max_scan=MAX_SCAN,
        heavy_workers=2,
        heavy_per_owner=1,
        heavy_queue_per_owner=0,
        heavy_queue=0,
    )


@pytest.fixture
def run(client: TestClient, world: World) -> dict:
    experiment = new_experiment(client, world.project, world.admin.headers)
    return new_run(client, experiment["id"], world.admin.headers)


def log(client: TestClient, world: World, run: dict, name: str, values: list[tuple[int, Any]]) -> None:
    for start in range(0, len(values), BATCH):
        points = [
            {"name": name, "step": step, "value": value} for step, value in values[start : start + BATCH]
        ]
        ok(log_metrics(client, run["experiment_id"], run["id"], world.admin.headers, points))


def history(client: TestClient, world: World, run: dict, name: str, **params: Any) -> Any:
    return client.get(
        f"{run_url(run['experiment_id'], run['id'])}/metrics/{name}",
        params=params,
        headers=world.viewer.headers,
    )


class TestDownsampling:
    def test_a_series_longer_than_the_scan_limit_shows_its_latest_points(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        values: list[tuple[int, Any]] = [(step, (step % 7) / 7) for step in range(3 * MAX_SCAN)]
        values[100] = (100, 50.0)  # a peak among the points no chart request reads any more
        values[2500] = (2500, -50.0)  # a dip among the latest MAX_SCAN points
        log(client, world, run, "loss", values)
        page = ok(history(client, world, run, "loss", max_points=20))
        steps = [point["step"] for point in page["points"]]
        assert page["downsampled"] is True and page["total_points"] == 3 * MAX_SCAN
        assert len(steps) <= 20 and steps == sorted(steps)
        assert steps[0] == 2 * MAX_SCAN and steps[-1] == 3 * MAX_SCAN - 1
        by_step = {point["step"]: point["value"] for point in page["points"]}
        assert by_step[2500] == -50.0
        assert 50.0 not in by_step.values() and min(steps) > 100

    @pytest.mark.parametrize(("size", "max_points", "seed"), [(900, 10, 1), (950, 64, 2), (400, 100, 3)])
    def test_each_range_keeps_its_lowest_and_highest_value(
        self, client: TestClient, world: World, run: dict, size: int, max_points: int, seed: int
    ) -> None:
        """Against a plain computation of the same ranges (every point within the scan
        limit), on a series with repeated and negative steps, ties and NaN (a range of
        nothing but NaN shows a NaN)."""
        rng = random.Random(seed)
        values: list[tuple[int, Any]] = []
        for _ in range(size):
            step = rng.randint(-500, 3000)
            value: Any = rng.choice([rng.uniform(-1, 1), round(rng.uniform(-1, 1), 1), "NaN"])
            values.append((step, value))
        values += [(step, "NaN") for step in range(4000, 4040)]  # a stretch of NaN only
        log(client, world, run, "noisy", values)
        page = ok(history(client, world, run, "noisy", max_points=max_points))
        got = [(point["step"], point["value"]) for point in page["points"]]
        assert page["downsampled"] is True and len(got) <= max_points
        assert [step for step, _ in got] == sorted(step for step, _ in got)
        steps = sorted(step for step, _ in values)
        assert got[0][0] == steps[0] and got[-1][0] == steps[-1]
        buckets = max(1, max_points // 2 - 1)
        low, high = steps[0], steps[-1]
        width = max(1, -(-(high - low + 1) // buckets))
        expected: dict[int, list[float | str]] = {}
        for step, value in values:
            expected.setdefault((step - low) // width, []).append(value)
        shown: dict[int, list[float | str]] = {}
        for step, value in got:
            shown.setdefault((step - low) // width, []).append(value)
        for bucket, held in expected.items():
            numbers = [value for value in held if value != "NaN"]
            if numbers:
                assert min(numbers) in shown[bucket] and max(numbers) in shown[bucket]
            else:
                assert "NaN" in shown[bucket]


@pytest.fixture
def hold_share(app: FastAPI) -> Iterator[Callable[[tuple[str, ...]], None]]:
    """Takes a turn of the shared pool for the given owners in another thread and keeps
    it until the test ends."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hold(owners: tuple[str, ...]) -> None:
        entered = threading.Event()

        def keep() -> None:
            with app.state.heavy.slot(owners):
                entered.set()
                release.wait()

        thread = threading.Thread(target=keep, daemon=True)
        thread.start()
        threads.append(thread)
        assert entered.wait(30)

    yield hold
    release.set()
    for thread in threads:
        thread.join(30)


class TestSharedPool:
    def test_a_long_series_waits_for_its_organisations_turn(
        self,
        app: FastAPI,
        client: TestClient,
        world: World,
        run: dict,
        hold_share: Callable[[tuple[str, ...]], None],
    ) -> None:
        log(client, world, run, "long", [(step, step % 11) for step in range(HEAVY_SERIES)])
        log(client, world, run, "short", [(step, step % 11) for step in range(500)])
        hold_share((f"organization:{world.org}",))
        refused = history(client, world, run, "long", max_points=100)
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert error_of(refused)["code"] == "RATE_LIMIT_EXCEEDED"
        # what costs little never waits: a short series, a page of raw points
        assert ok(history(client, world, run, "short", max_points=100))["downsampled"] is True
        assert len(ok(history(client, world, run, "long", limit=100))["points"]) == 100
        # another organisation's turn is its own
        other_run = {"experiment_id": world.other_experiment, "id": world.other_run}
        ok(log_metrics(client, world.other_experiment, world.other_run, world.outsider.headers, [
            {"name": "m", "step": step, "value": step} for step in range(300)
        ]))  # fmt: skip
        outsider = client.get(
            f"{run_url(other_run['experiment_id'], other_run['id'])}/metrics/m",
            params={"max_points": 10},
            headers=world.outsider.headers,
        )
        assert ok(outsider)["downsampled"] is True
        assert app.state.heavy.stats() == {"running": 1, "waiting": 0}

    def test_the_turn_is_given_back(self, app: FastAPI, client: TestClient, world: World, run: dict) -> None:
        log(client, world, run, "long", [(step, step % 11) for step in range(HEAVY_SERIES)])
        for _ in range(3):  # one at a time per organisation, again and again
            page = ok(history(client, world, run, "long", max_points=100))
            assert page["total_points"] == HEAVY_SERIES and len(page["points"]) <= 100
        wait_until(lambda: app.state.heavy.stats() == {"running": 0, "waiting": 0})


class TestDocument:
    def test_the_history_route_is_documented_with_its_path_and_credentials(self, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        operation = spec["paths"]["/api/v1/experiments/{experiment_id}/runs/{run_id}/metrics/{name}"]["get"]
        assert operation["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
        assert {"429", "503"} <= set(operation["responses"])
        assert not [path for path in spec["paths"] if ":" in path]

    def test_every_operation_that_needs_credentials_says_so(self, app: FastAPI, client: TestClient) -> None:
        spec = client.get("/api/v1/openapi.json").json()
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods:
                operation = spec["paths"][context.path_format][method.lower()]
                assert ("security" in operation) == route_requires_principal(route.dependant), (
                    method,
                    context.path_format,
                )

    def test_a_name_with_a_slash_as_is_or_percent_encoded(
        self, client: TestClient, world: World, run: dict
    ) -> None:
        log(client, world, run, "val/loss", [(0, 1.0), (1, 0.5)])
        url = run_url(run["experiment_id"], run["id"])
        for path in (f"{url}/metrics/val/loss", f"{url}/metrics/val%2Floss"):
            page = ok(client.get(path, headers=world.viewer.headers))
            assert page["name"] == "val/loss" and [p["value"] for p in page["points"]] == [1.0, 0.5]
        assert client.get(f"{url}/metrics/val%2Floss").status_code == 401
