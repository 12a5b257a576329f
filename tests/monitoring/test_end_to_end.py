"""Monitoring from end to end against real ``maestro serve`` processes with their own job
consumers. A classifier is deployed and answers traffic "yesterday" (a server whose wall
clock is a day behind, ``tests/clock_behind.py``); a day later a server on the true clock
takes labels for part of it, which land in yesterday's windows and are read back as
accuracy with its label coverage. Reference data is set from a dataset file and profiled
by the server's job; a drifted column in today's traffic is flagged by
``…/monitoring/drift`` while yesterday's window is not, and both reports are in the
history.

The server folds a log once it is ``MAESTRO_MONITORING_FOLD_SETTLE_SECONDS`` old (here
three log flushes), so the test asks for today's report until it counts every row sent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.conftest import RunningProcess, wait_until
from tests.deployments.platform import FEATURES, Tiny
from tests.factories import World
from tests.monitoring.drifting import (
    data_of,
    dataset_csv,
    deploy_classifier,
    iso,
    labels,
    rows,
    send_over_http,
    upload_dataset,
)

pytestmark = pytest.mark.slow

FLUSH_SECONDS = 0.4
SETTLE_SECONDS = 1.2  # what the server waits before folding a log: three flushes (see settle_seconds)
ROWS_PER_REQUEST = 25
DAY = timedelta(days=1)


def _hours(opens: datetime, closes: datetime) -> dict[str, str]:
    """The whole UTC hours that hold ``[opens, closes]``: monitoring compares hours."""
    floor = opens.replace(minute=0, second=0, microsecond=0)
    ceiling = closes.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return {"start": iso(floor), "end": iso(ceiling)}


def test_traffic_yesterday_labels_today_accuracy_reference_and_drift_on_a_real_server(
    client: TestClient,
    world: World,
    tiny: Tiny,
    make_settings: Callable[..., Settings],
    serve: Callable[..., RunningProcess],
) -> None:
    live = deploy_classifier(client, world, tiny)
    monitoring = f"/api/v1/deployments/{live['id']}/monitoring"
    reference_file = upload_dataset(client, world, dataset_csv(rows(2_000, seed=1)))
    settings = make_settings(
        run_worker_in_process=True,
        prediction_log_flush_seconds=FLUSH_SECONDS,
        monitoring_fold_settle_seconds=SETTLE_SECONDS,
        monitoring_drift_interval_seconds=0,
    )

    # 1. Yesterday: traffic answered by a server whose clock is a day behind; stopping it
    # writes what it still holds.
    began_yesterday = datetime.now(UTC) - DAY
    calm = rows(1_000, seed=2)
    yesterday = serve(settings, clock_behind=DAY.total_seconds())
    with httpx.Client(base_url=yesterday.base_url, timeout=60) as http:
        served = send_over_http(http, world.key_headers, calm, ROWS_PER_REQUEST)
    yesterday.stop()
    assert "Application shutdown complete" in yesterday.output(), yesterday.output()
    ended_yesterday = datetime.now(UTC) - DAY
    yesterdays_hours = _hours(began_yesterday, ended_yesterday)

    today = serve(settings)
    began_today = datetime.now(UTC)
    with httpx.Client(base_url=today.base_url, timeout=60) as http:
        # 2. Today: labels for half of yesterday's requests, three rows in four right.
        truth = labels(calm)
        items, right = [], 0
        for index, (prediction_id, predicted) in enumerate(served[::2]):
            for row in range(ROWS_PER_REQUEST):
                actual = truth[2 * index * ROWS_PER_REQUEST + row]
                if row % 4 == 3:
                    actual = "legit" if predicted[row] == "fraud" else "fraud"
                right += actual == predicted[row]
                items.append({"prediction_id": prediction_id, "row": row, "actual": actual})
        answer = data_of(
            http.post(f"{monitoring}/ground-truth", json={"items": items}, headers=world.developer.headers)
        )
        assert (answer["matched"], answer["unknown_count"]) == (len(items), 0)

        def metrics(window: dict[str, str]) -> dict[str, Any]:
            params = {**window, "granularity": "1h"}
            return data_of(http.get(f"{monitoring}/metrics", params=params, headers=world.viewer.headers))

        then = metrics(yesterdays_hours)
        current = then["current_metrics"]
        assert current["accuracy"] == pytest.approx(right / len(items))
        assert current["quality"]["label_count"] == len(items) == 500
        assert current["quality"]["label_coverage"] == pytest.approx(len(items) / len(calm))
        assert sum(point["request_count"] for point in then["time_series"]) == len(served)
        labelled_hours = [point for point in then["time_series"] if point["accuracy"] is not None]
        assert sum(point["quality"]["label_count"] for point in labelled_hours) == len(items)
        # The labels went to the windows of their predictions, not to the day they came.
        now = metrics(_hours(began_today, datetime.now(UTC)))["current_metrics"]
        assert (now["accuracy"], now["quality"]["label_count"]) == (None, 0)

        # 3. Reference data from the dataset file, profiled by the server's job.
        data_of(
            http.put(
                f"{monitoring}/reference",
                json={"dataset_file_id": reference_file},
                headers=world.developer.headers,
            ),
            202,
        )
        wait_until(
            lambda: (
                data_of(http.get(f"{monitoring}/reference", headers=world.viewer.headers))["status"]
                in ("ready", "failed")
            ),
            timeout=120,
            interval=0.2,
        )
        assert data_of(http.get(f"{monitoring}/reference", headers=world.viewer.headers))["status"] == "ready"

        # 4. Today's traffic with `amount` moved by three standard deviations.
        send_over_http(http, world.key_headers, rows(1_000, seed=3, shift=3.0), ROWS_PER_REQUEST)
        todays_hours = _hours(began_today, datetime.now(UTC))

        def job_done(job_id: str) -> dict[str, Any] | None:
            job = data_of(http.get(f"/api/v1/jobs/{job_id}", headers=world.developer.headers))
            return job if job["status"] in ("succeeded", "failed") else None

        def report(window: dict[str, str], rows_sent: int) -> dict[str, Any] | None:
            """A requested report once it counts every row sent in ``window``: the server
            folds only settled logs, so a report asked for too early sees fewer and is
            asked again (the same window's report is replaced)."""
            requested = data_of(
                http.post(f"{monitoring}/drift", json=window, headers=world.developer.headers), 202
            )
            job = wait_until(lambda: job_done(requested["job_id"]), timeout=120, interval=0.2)
            assert job["status"] == "succeeded", job
            answer = data_of(http.get(f"{monitoring}/drift", params=window, headers=world.viewer.headers))
            amount = next(column for column in answer["columns"] if column["column"] == "amount")
            return answer if amount["n_current"] == rows_sent else None

        def verdicts(answer: dict[str, Any]) -> dict[str, str]:
            return {column["column"]: column["verdict"] for column in answer["columns"]}

        drifted = verdicts(
            wait_until(lambda: report(todays_hours, 1_000), timeout=120, interval=SETTLE_SECONDS)
        )
        assert drifted["amount"] == "drift", drifted
        assert {drifted[name] for name in FEATURES if name != "amount"} <= {"ok", "warning"}
        calm_then = verdicts(report(yesterdays_hours, 1_000) or {})
        assert {calm_then[name] for name in FEATURES} <= {"ok", "warning"}, calm_then

        both_days = {"start": yesterdays_hours["start"], "end": todays_hours["end"]}
        history = data_of(
            http.get(f"{monitoring}/drift/history", params=both_days, headers=world.viewer.headers)
        )
        assert [point["trigger"] for point in history["dataset"]] == ["requested", "requested"]
        amount = next(series for series in history["columns"] if series["column"] == "amount")
        assert [point["verdict"] for point in amount["points"]][-1] == "drift", amount
        assert amount["points"][0]["verdict"] in ("ok", "warning"), amount
