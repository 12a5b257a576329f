"""Monitoring from end to end against a real ``maestro serve`` with its own job consumer:
a classifier deployed, traffic sent over HTTP, labels sent afterwards for part of it and
read back as accuracy with its label coverage, reference data set from a dataset file and
profiled by the server's job, then a drifted column in new traffic flagged by
``…/monitoring/drift`` and kept in the history by a requested report.

The server folds a log once it is ``MAESTRO_MONITORING_FOLD_SETTLE_SECONDS`` old (here
three log flushes), so the test asks for the report until it counts every row sent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from maestro.config import Settings
from tests.conftest import RunningProcess, wait_until
from tests.deployments.platform import FEATURES, Tiny
from tests.factories import World
from tests.monitoring.drifting import dataset_csv, deploy_classifier, iso, labels, rows, upload_dataset

pytestmark = pytest.mark.slow

FLUSH_SECONDS = 0.4
SETTLE_SECONDS = 1.2  # what the server waits before folding a log: three flushes (see settle_seconds)
ROWS_PER_REQUEST = 25


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def _send(http: httpx.Client, headers: dict[str, str], matrix: np.ndarray) -> list[tuple[str, list[str]]]:
    """Serve ``matrix`` in requests of ``ROWS_PER_REQUEST`` rows: (prediction id, labels)."""
    served = []
    for first in range(0, len(matrix), ROWS_PER_REQUEST):
        part = matrix[first : first + ROWS_PER_REQUEST]
        instances = [dict(zip(FEATURES, row, strict=True)) for row in part.tolist()]
        answer = http.post("/api/v1/inference/fraud-api", json={"instances": instances}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        served.append(
            (body["model_info"]["prediction_id"], [str(p["prediction"]) for p in body["predictions"]])
        )
    return served


def _hours(start: datetime) -> dict[str, str]:
    """Whole UTC hours from ``start``'s to the one after now: monitoring compares hours."""
    floor = start.replace(minute=0, second=0, microsecond=0)
    ceiling = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return {"start": iso(floor), "end": iso(ceiling)}


def test_traffic_labels_accuracy_reference_and_drift_on_a_real_server(
    client: TestClient,
    world: World,
    tiny: Tiny,
    make_settings: Callable[..., Settings],
    serve: Callable[..., RunningProcess],
) -> None:
    live = deploy_classifier(client, world, tiny)
    monitoring = f"/api/v1/deployments/{live['id']}/monitoring"
    reference_file = upload_dataset(client, world, dataset_csv(rows(2_000, seed=1)))
    server = serve(
        make_settings(
            run_worker_in_process=True,
            prediction_log_flush_seconds=FLUSH_SECONDS,
            monitoring_fold_settle_seconds=SETTLE_SECONDS,
            monitoring_drift_interval_seconds=0,
        )
    )
    began = datetime.now(UTC)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        # 1. Traffic, then labels for half of its requests: three rows in four right.
        calm = rows(1_000, seed=2)
        served = _send(http, world.key_headers, calm)
        truth = labels(calm)
        items, right = [], 0
        for index, (prediction_id, predicted) in enumerate(served[::2]):
            for row in range(ROWS_PER_REQUEST):
                actual = truth[2 * index * ROWS_PER_REQUEST + row]
                if row % 4 == 3:
                    actual = "legit" if predicted[row] == "fraud" else "fraud"
                right += actual == predicted[row]
                items.append({"prediction_id": prediction_id, "row": row, "actual": actual})

        def all_matched() -> bool:  # each log is written within a flush of its request
            answer = _ok(
                http.post(
                    f"{monitoring}/ground-truth", json={"items": items}, headers=world.developer.headers
                )
            )
            return answer["unknown_count"] == 0

        wait_until(all_matched, timeout=60, interval=FLUSH_SECONDS)
        metrics = _ok(
            http.get(
                f"{monitoring}/metrics",
                params={**_hours(began), "granularity": "1h"},
                headers=world.viewer.headers,
            )
        )
        current = metrics["current_metrics"]
        assert current["accuracy"] == pytest.approx(right / len(items))
        assert current["quality"]["label_count"] == len(items) == 500
        assert current["quality"]["label_coverage"] == pytest.approx(len(items) / len(calm))
        labelled_hours = [point for point in metrics["time_series"] if point["accuracy"] is not None]
        assert sum(point["quality"]["label_count"] for point in labelled_hours) == len(items)

        # 2. Reference data from the dataset file, profiled by the server's job.
        _ok(
            http.put(
                f"{monitoring}/reference",
                json={"dataset_file_id": reference_file},
                headers=world.developer.headers,
            ),
            202,
        )
        wait_until(
            lambda: (
                _ok(http.get(f"{monitoring}/reference", headers=world.viewer.headers))["status"]
                in ("ready", "failed")
            ),
            timeout=120,
            interval=0.2,
        )
        assert _ok(http.get(f"{monitoring}/reference", headers=world.viewer.headers))["status"] == "ready"

        # 3. New traffic with `amount` moved by three standard deviations.
        _send(http, world.key_headers, rows(1_000, seed=3, shift=3.0))
        window = _hours(began)

        def job_done(job_id: str) -> dict[str, Any] | None:
            job = _ok(http.get(f"/api/v1/jobs/{job_id}", headers=world.developer.headers))
            return job if job["status"] in ("succeeded", "failed") else None

        def report_of_every_row() -> dict[str, Any] | None:
            """A requested report once it counts all 2,000 rows: the server folds only
            settled logs, so a report asked for too early sees fewer and is asked again
            (the same window's report is replaced)."""
            requested = _ok(
                http.post(f"{monitoring}/drift", json=window, headers=world.developer.headers), 202
            )
            job = wait_until(lambda: job_done(requested["job_id"]), timeout=120, interval=0.2)
            assert job["status"] == "succeeded", job
            report = _ok(http.get(f"{monitoring}/drift", params=window, headers=world.viewer.headers))
            amount = next(column for column in report["columns"] if column["column"] == "amount")
            return report if amount["n_current"] == 2_000 else None

        report = wait_until(report_of_every_row, timeout=120, interval=SETTLE_SECONDS)
        verdicts = {column["column"]: column["verdict"] for column in report["columns"]}
        assert verdicts["amount"] == "drift", report
        assert {verdicts[name] for name in FEATURES if name != "amount"} <= {"ok", "warning"}

        history = _ok(http.get(f"{monitoring}/drift/history", params=window, headers=world.viewer.headers))
        assert [point["trigger"] for point in history["dataset"]] == ["requested"]
        amount = next(series for series in history["columns"] if series["column"] == "amount")
        assert amount["points"][-1]["verdict"] == "drift", amount
