"""Reference data and drift through the API: a reference profiled from a dataset file in an
isolated process or merged from a window of served traffic; the drift endpoint's verdicts
on a shifted column, the predictions and the dataset; reports stored on request and on
the schedule (a clock the test moves), read back as a history; the drift quantities for
alert rules; and hostile input refused with a clear error, changing nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.config import Settings
from maestro.db import utcnow
from maestro.errors import NotFound, ValidationFailed
from maestro.events.models import OutboxEvent
from maestro.jobs import service as jobs_service
from maestro.jobs.maintenance import DRIFT_REPORTS
from maestro.jobs.models import Job
from maestro.monitoring import reports
from maestro.monitoring.folding import utc_hour
from maestro.monitoring.models import PREDICTION_COLUMN, MonitoringDriftReport, MonitoringReference
from maestro.monitoring.profiles import NumericProfile
from maestro.monitoring.service import quantity
from tests.deployments.platform import FEATURES, Tiny, onnx_file, upload
from tests.factories import Factory, World
from tests.monitoring.drifting import (
    T0,
    by_column,
    dataset_csv,
    deploy_classifier,
    drift,
    iso,
    monitoring_path,
    rows,
    run_job,
    serve,
    serve_and_fold,
    set_reference,
    upload_dataset,
)

isolated = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux")
DAY = timedelta(days=1)


@pytest.fixture
def live(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    return deploy_classifier(client, world, tiny)


def refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error", "metadata"}
    return dict(body["error"])


class TestReferenceFromADataset:
    @isolated
    def test_a_shifted_column_is_flagged_against_a_dataset(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        reference_rows = rows(5_000, seed=1)
        notes = ["note"] * len(reference_rows)
        file_id = upload_dataset(client, world, dataset_csv(reference_rows, extra={"note": notes}))
        put = client.put(
            monitoring_path(live["id"], "reference"),
            json={"dataset_file_id": file_id, "prediction_column": "label"},
            headers=world.developer.headers,
        )
        assert put.status_code == 202, put.text
        pending = put.json()["data"]
        assert (pending["status"], pending["source"], pending["dataset_file_id"]) == (
            "pending",
            "dataset",
            file_id,
        )
        not_yet = refused(drift(client, world, live["id"], T0 + DAY), 409)
        assert "still being profiled" in not_yet["message"]

        job = run_job(app, pending["job_id"])
        assert job.status == "succeeded", job.error
        shown = client.get(monitoring_path(live["id"], "reference"), headers=world.viewer.headers).json()[
            "data"
        ]
        assert (shown["status"], shown["rows"], shown["error"]) == ("ready", 5_000, None)
        profiled = {column["name"]: column for column in shown["columns"]}
        assert set(profiled) == {*FEATURES, PREDICTION_COLUMN}
        assert profiled[PREDICTION_COLUMN]["kind"] == "categorical"
        assert shown["skipped_columns"] == [["note", "not an input of the deployed version"]]
        with app.state.database.session(write=False) as session:
            _, stored = reports.ready_reference(session, live["id"])
        amount = stored["amount"]
        assert isinstance(amount, NumericProfile)
        assert (amount.count, amount.null_count) == (5_000, 0)
        assert amount.sum == pytest.approx(reference_rows[:, 0].sum())
        assert (amount.min, amount.max) == (reference_rows[:, 0].min(), reference_rows[:, 0].max())

        serve_and_fold(app, world, live, T0 + DAY, rows(3_000, seed=2, shift=0.5))
        answer = drift(client, world, live["id"], T0 + DAY)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        columns = by_column(data)
        assert list(columns) == sorted(FEATURES)
        shifted = columns["amount"]
        assert (shifted["test"], shifted["verdict"], shifted["drifted"]) == ("wasserstein", "drift", True)
        assert shifted["statistic"] > shifted["threshold"] == 0.1
        assert shifted["p_value"] is None and shifted["important"] is True
        assert (shifted["n_reference"], shifted["n_current"]) == (5_000, 3_000)
        assert shifted["null_rate_change"] == 0.0 and shifted["unseen_rate"] is None
        assert [name for name, column in columns.items() if column["drifted"]] == ["amount"]
        assert data["important_features"] == ["amount", "merchant_risk", "time_of_day"]
        assert "important feature 'amount' drifted (wasserstein)" in data["warnings"]
        assert data["dataset_drift"] == {
            "drifted": False,
            "share_drifted": 0.25,
            "threshold": 0.5,
            "judged_columns": 4,
            "drifted_columns": 1,
            "any_drift_corrected": True,
        }
        # More fraud is predicted once amounts rise: the label mix moves by about 14 points.
        prediction = data["prediction_drift"]
        assert (prediction["column"], prediction["test"], prediction["verdict"]) == (
            PREDICTION_COLUMN,
            "jensen_shannon",
            "drift",
        )
        assert prediction["unseen_rate"] == 0.0
        assert data["reference"] == {
            "source": "dataset",
            "dataset_file_id": file_id,
            "reference_start": None,
            "reference_end": None,
            "rows": 5_000,
        }
        assert (data["covered_start"], data["covered_end"]) == (
            iso(T0 + DAY),
            iso(T0 + DAY + timedelta(hours=1)),
        )

        # A window with no traffic: nothing to judge, nothing drifted.
        empty = drift(client, world, live["id"], T0 + 2 * DAY).json()["data"]
        assert {column["verdict"] for column in empty["columns"]} == {"insufficient_data"}
        assert empty["dataset_drift"]["share_drifted"] is None
        assert "no column had enough values to judge" in empty["warnings"]

    @isolated
    def test_the_training_data_the_model_card_names(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        refusal = refused(
            client.put(
                monitoring_path(live["id"], "reference"),
                json={"training_data": True},
                headers=world.developer.headers,
            ),
            422,
        )
        assert "names no training data" in refusal["message"]
        file_id = upload_dataset(client, world, dataset_csv(rows(500, seed=3)))
        model_id, version = live["model_version"]["model_id"], live["model_version"]["version"]
        saved = client.put(
            f"/api/v1/models/{model_id}/versions/{version}/card",
            json={"training_data": {"name": "Transactions", "source": file_id}},
            headers=world.developer.headers,
        )
        assert saved.status_code == 200, saved.text
        shown = set_reference(client, app, world, live["id"], {"training_data": True})
        assert (shown["status"], shown["source"], shown["dataset_file_id"]) == (
            "ready",
            "training_data",
            file_id,
        )
        assert shown["model_version_id"] == live["model_version"]["id"]
        assert {column["name"] for column in shown["columns"]} == set(FEATURES)  # no prediction column named


class TestReferenceFromTraffic:
    def test_a_window_of_traffic_and_an_override_in_the_query(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        serve_and_fold(app, world, live, T0, rows(4_000, seed=4))
        serve_and_fold(app, world, live, T0 + DAY, rows(3_000, seed=5, shift=0.5))
        window = {"start": iso(T0 + DAY), "end": iso(T0 + DAY + timedelta(hours=1))}
        overridden = client.get(
            monitoring_path(live["id"], "drift"),
            params={**window, "reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))},
            headers=world.viewer.headers,
        )
        assert overridden.status_code == 200, overridden.text
        assert overridden.json()["data"]["reference"]["source"] == "override"

        shown = set_reference(
            client,
            app,
            world,
            live["id"],
            {"reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))},
        )
        assert (shown["status"], shown["source"], shown["rows"]) == ("ready", "traffic", 4_000)
        assert {column["name"] for column in shown["columns"]} == {*FEATURES, PREDICTION_COLUMN}
        stored = drift(client, world, live["id"], T0 + DAY).json()["data"]
        assert stored["reference"]["source"] == "traffic"
        for data in (stored, overridden.json()["data"]):
            columns = by_column(data)
            assert columns["amount"]["verdict"] == "drift"
            assert [name for name, column in columns.items() if column["drifted"]] == ["amount"]
            assert data["prediction_drift"]["verdict"] == "drift"
        assert by_column(stored) == by_column(overridden.json()["data"])

        # Traffic like the reference's: no column drifts.
        serve_and_fold(app, world, live, T0 + 2 * DAY, rows(3_000, seed=6))
        quiet = drift(client, world, live["id"], T0 + 2 * DAY).json()["data"]
        assert [column["column"] for column in quiet["columns"] if column["drifted"]] == []
        assert quiet["dataset_drift"]["share_drifted"] == 0.0

    def test_an_empty_window_fails_the_reference_with_its_reason(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        shown = set_reference(
            client,
            app,
            world,
            live["id"],
            {"reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))},
        )
        assert shown["status"] == "failed"
        assert shown["error"].startswith("No served traffic was folded in that window")
        failed = refused(drift(client, world, live["id"], T0 + DAY), 409)
        assert "No served traffic was folded" in failed["message"]
        assert "PUT /api/v1/deployments/{id}/monitoring/reference" in failed["message"]

    def test_a_profiling_job_whose_workers_died_fails_the_reference(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any], tiny: Tiny
    ) -> None:
        """Each attempt's worker dies without a word (claimed, then no heartbeat); once the
        reaper gives the job up, the reference says failed and why, instead of waiting."""
        dataset = upload_dataset(client, world, dataset_csv(rows(300, seed=1)))
        response = client.put(
            monitoring_path(live["id"], "reference"),
            json={"dataset_file_id": dataset},
            headers=world.developer.headers,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["data"]["job_id"]
        database = app.state.queue.database
        while True:
            claimed = jobs_service.claim(database, job_id, "a worker that dies")
            assert claimed is not None
            report = jobs_service.reap(database, lambda _: None, heartbeat_timeout=0, redeliver_after=3600)
            if report.failed:
                break
            shown = client.get(monitoring_path(live["id"], "reference"), headers=world.viewer.headers)
            assert shown.json()["data"]["status"] == "pending"
        shown = client.get(monitoring_path(live["id"], "reference"), headers=world.viewer.headers)
        assert shown.json()["data"]["status"] == "failed"
        assert shown.json()["data"]["error"].startswith(f"The profiling job {job_id} failed: worker lost")
        failed = refused(drift(client, world, live["id"], T0), 409)
        assert "worker lost" in failed["message"]
        assert "PUT /api/v1/deployments/{id}/monitoring/reference" in failed["message"]


class TestReports:
    def test_a_report_on_request_appears_in_the_history(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        serve_and_fold(app, world, live, T0, rows(3_000, seed=7))
        set_reference(
            client,
            app,
            world,
            live["id"],
            {"reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))},
        )
        serve_and_fold(app, world, live, T0 + DAY, rows(3_000, seed=8, shift=0.6))
        asked = client.post(
            monitoring_path(live["id"], "drift"),
            json={"start": iso(T0 + DAY), "end": iso(T0 + DAY + timedelta(minutes=30))},
            headers=world.developer.headers,
        )
        assert asked.status_code == 202, asked.text
        accepted = asked.json()["data"]
        assert accepted["status_url"] == f"/api/v1/jobs/{accepted['job_id']}"
        job = run_job(app, accepted["job_id"])
        assert job.status == "succeeded", job.error
        assert job.result["drifted_columns"] == ["amount"]
        followed = client.get(accepted["status_url"], headers=world.viewer.headers).json()["data"]
        assert followed["status"] == "succeeded"

        history = client.get(
            monitoring_path(live["id"], "drift/history"),
            params={"start": iso(T0), "end": iso(T0 + 2 * DAY)},
            headers=world.viewer.headers,
        )
        assert history.status_code == 200, history.text
        data = history.json()["data"]
        assert data["dataset"] == [
            {
                "window_start": iso(T0 + DAY),
                "window_end": iso(T0 + DAY + timedelta(hours=1)),  # whole hours
                "share_drifted": 0.25,
                "dataset_drift": False,
                "judged_columns": 4,
                "drifted_columns": 1,
                "trigger": "requested",
            }
        ]
        series = {item["column"]: item["points"] for item in data["columns"]}
        assert set(series) == {*FEATURES, PREDICTION_COLUMN}
        assert [point["verdict"] for point in series["amount"]] == ["drift"]
        only = client.get(
            monitoring_path(live["id"], "drift/history"),
            params={"start": iso(T0), "end": iso(T0 + 2 * DAY), "column": "merchant_risk"},
            headers=world.viewer.headers,
        ).json()["data"]
        assert [item["column"] for item in only["columns"]] == ["merchant_risk"]
        assert only["columns"][0]["points"][0]["verdict"] in ("ok", "warning")

        again = client.post(
            monitoring_path(live["id"], "drift"),
            json={"start": iso(T0 + DAY), "end": iso(T0 + DAY + timedelta(hours=1))},
            headers=world.developer.headers,
        ).json()["data"]
        run_job(app, again["job_id"])
        with app.state.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(MonitoringDriftReport)) == 1  # replaced
            assert (
                session.scalars(select(OutboxEvent).where(OutboxEvent.type == "drift.detected")).all() == []
            )

        # Where a quarter of the columns drifting makes the dataset drift, the report is an event.
        strict = app.state.settings.model_copy(update={"monitoring_dataset_drift_share": 0.25})
        window = (T0 + DAY, T0 + DAY + timedelta(hours=1))
        found = reports.report_window(app.state.database, strict, live["id"], *window, trigger="requested")
        assert found["dataset_drift"] is True
        with app.state.database.session(write=False) as session:
            detected = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "drift.detected")).all()
        assert [(event.payload["report_id"], event.payload["drifted_columns"]) for event in detected] == [
            (found["report_id"], ["amount"])
        ]

    def test_scheduled_reports_follow_a_clock_the_test_moves(
        self,
        make_settings: Callable[..., Settings],
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
    ) -> None:
        """Traffic in the hours after now: like the reference for two hours, then shifted;
        each run reports the hours closed (and settled) by its clock, once each."""
        start = utc_hour(utcnow()) + timedelta(hours=1)
        serve_and_fold(app, world, live, start - DAY, rows(4_000, seed=9))
        reference_start = utc_hour(start - DAY)
        set_reference(
            client,
            app,
            world,
            live["id"],
            {
                "reference_start": iso(reference_start),
                "reference_end": iso(reference_start + timedelta(hours=1)),
            },
        )
        for hour, shift in ((0, 0.0), (1, 0.0), (2, 0.6)):
            serve(
                app,
                world,
                live,
                start + timedelta(hours=hour, minutes=10),
                rows(4_000, seed=10 + hour, shift=shift),
            )
        settings = app.state.settings
        assert settings.monitoring_drift_interval_seconds == 3600
        database = app.state.database

        def history() -> list[dict[str, Any]]:
            answer = client.get(
                monitoring_path(live["id"], "drift/history"),
                params={"start": iso(start - DAY), "end": iso(start + DAY)},
                headers=world.viewer.headers,
            )
            assert answer.status_code == 200, answer.text
            return list(answer.json()["data"]["dataset"])

        # Two hours and a half in: the first two hours are closed (and the hour before them).
        first = reports.scheduled_reports(database, settings, now=start + timedelta(hours=2, minutes=30))
        assert first["failed"] == [] and first["deployments"] == 1
        points = {point["window_start"]: point for point in history()}
        assert iso(start) in points and iso(start + timedelta(hours=1)) in points
        assert iso(start + timedelta(hours=2)) not in points
        assert {
            points[iso(start)]["drifted_columns"],
            points[iso(start + timedelta(hours=1))]["drifted_columns"],
        } == {0}
        assert all(point["trigger"] == "scheduled" for point in points.values())

        again = reports.scheduled_reports(database, settings, now=start + timedelta(hours=2, minutes=40))
        assert again["reports"] == 0  # nothing newly closed

        # The third hour closes; it is reported only once folding has had time to settle.
        unsettled = reports.scheduled_reports(database, settings, now=start + timedelta(hours=3, seconds=30))
        assert unsettled["reports"] == 0
        later = reports.scheduled_reports(database, settings, now=start + timedelta(hours=3, minutes=5))
        assert later["reports"] == 1
        third = {point["window_start"]: point for point in history()}[iso(start + timedelta(hours=2))]
        assert (third["drifted_columns"], third["share_drifted"]) == (1, 0.25)
        series = client.get(
            monitoring_path(live["id"], "drift/history"),
            params={"start": iso(start), "end": iso(start + DAY), "column": "amount"},
            headers=world.viewer.headers,
        ).json()["data"]["columns"][0]["points"]
        assert [point["verdict"] for point in series][-1] == "drift"
        assert [point["window_start"] for point in series][-3:] == [
            iso(start + timedelta(hours=hour)) for hour in range(3)
        ]

        # Off: no report at all.
        off = reports.scheduled_reports(
            database, make_settings(monitoring_drift_interval_seconds=0), now=start + timedelta(hours=9)
        )
        assert off == {"deployments": 0, "reports": 0}

    def test_the_schedule_submits_one_run_at_a_time(
        self, make_settings: Callable[..., Settings], tiny: Tiny
    ) -> None:
        from maestro.app import create_app

        app = create_app(make_settings(maintenance_interval_minutes=60))
        with TestClient(app, raise_server_exceptions=False):
            queue = app.state.queue
            queue.schedule_maintenance()
            queue.schedule_maintenance()  # the first run still waits: not another
            with app.state.database.session(write=False) as session:
                runs = session.scalars(select(Job).where(Job.kind == DRIFT_REPORTS)).all()
            assert len(runs) == 1
            job = run_job(app, runs[0].id)
            assert job.status == "succeeded", job.error
            assert job.result == {"deployments": 0, "reports": 0, "failed": []}
            queue.huey.storage.flush_all()


class TestQuantities:
    def test_drift_quantities_agree_with_the_endpoint(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        window = (T0 + DAY, T0 + DAY + timedelta(hours=1))
        with factory.database.session(write=False) as session:
            assert quantity(session, None, live["id"], "drift.amount", *window) is None  # no reference yet
            assert quantity(session, None, live["id"], "dataset_drift_share", *window) is None
        serve_and_fold(app, world, live, T0, rows(3_000, seed=11))
        serve_and_fold(app, world, live, T0 + DAY, rows(3_000, seed=12, shift=0.5))
        set_reference(
            client,
            app,
            world,
            live["id"],
            {"reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))},
        )
        data = drift(client, world, live["id"], T0 + DAY).json()["data"]
        with factory.database.session(write=False) as session:
            for column in FEATURES:
                assert quantity(session, None, live["id"], f"drift.{column}", *window) == pytest.approx(
                    by_column(data)[column]["statistic"]
                )
            assert quantity(
                session, None, live["id"], f"drift.{PREDICTION_COLUMN}", *window
            ) == pytest.approx(data["prediction_drift"]["statistic"])
            assert quantity(session, None, live["id"], "dataset_drift_share", *window) == 0.25
            with pytest.raises(ValidationFailed, match="No column 'nope'"):
                quantity(session, None, live["id"], "drift.nope", *window)
            with pytest.raises(ValidationFailed, match="needs a column"):
                quantity(session, None, live["id"], "drift.", *window)
            with pytest.raises(ValidationFailed, match=r"dataset_drift_share, drift\.<column>"):
                quantity(session, None, live["id"], "drift_share", *window)
            with pytest.raises(ValidationFailed, match="At most 92 days"):
                quantity(session, None, live["id"], "drift.amount", T0 - 3650 * DAY, T0)
            with pytest.raises(NotFound):
                quantity(session, None, "deploy_doesnotexist", "drift.amount", *window)


class TestHostileInput:
    @isolated
    def test_files_that_cannot_be_a_reference(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        def put(body: dict[str, Any]) -> Any:
            return client.put(
                monitoring_path(live["id"], "reference"), json=body, headers=world.developer.headers
            )

        model_file = client.post(
            "/api/v1/upload/models",
            data={"project_id": world.project},
            files={"file": ("model.onnx", onnx_file(tiny.first), "application/octet-stream")},
            headers=world.developer.headers,
        ).json()["data"]["id"]
        not_a_dataset = refused(put({"dataset_file_id": model_file}), 422)
        assert not_a_dataset["message"] == "The file is not a dataset"

        globex_file = client.post(
            "/api/v1/upload/datasets",
            data={"project_id": world.other_project},
            files={"file": ("theirs.csv", dataset_csv(rows(50, seed=13)), "text/csv")},
            headers=world.outsider.headers,
        ).json()["data"]["id"]
        theirs, unknown = put({"dataset_file_id": globex_file}), put({"dataset_file_id": "file_doesnotexist"})
        assert refused(theirs, 404) == refused(unknown, 404)
        assert refused(put({"dataset_file_id": "../../etc/passwd"}), 422)["code"] == "VALIDATION_ERROR"
        with app.state.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(MonitoringReference)) == 0
            assert session.scalar(select(func.count()).select_from(Job)) == 0

        words = upload_dataset(client, world, b"amount,note\nlots,hello\nsome,world\n", filename="words.csv")
        shown = set_reference(client, app, world, live["id"], {"dataset_file_id": words})
        assert shown["status"] == "failed"
        assert shown["error"].startswith("None of the deployed version's inputs ('amount'")
        ragged = upload_dataset(
            client, world, b"amount,time_of_day\n1,2\n3,4,5,6\n7\n", filename="ragged.csv"
        )
        shown = set_reference(client, app, world, live["id"], {"dataset_file_id": ragged})
        assert shown["status"] == "failed"
        assert shown["error"].startswith("The dataset could not be read")
        assert "maestro-reference" not in shown["error"]  # no scratch path leaks
        column = upload_dataset(client, world, dataset_csv(rows(40, seed=14)), filename="ok.csv")
        missing = set_reference(
            client, app, world, live["id"], {"dataset_file_id": column, "prediction_column": "nope"}
        )
        assert missing["error"] == "The dataset has no column 'nope' (the prediction column)"

    def test_bodies_and_windows(self, client: TestClient, world: World, live: dict[str, Any]) -> None:
        def put(body: Any) -> dict[str, Any]:
            response = client.put(
                monitoring_path(live["id"], "reference"), json=body, headers=world.developer.headers
            )
            return refused(response, 422)

        assert "exactly one of" in str(put({}))
        assert "exactly one of" in str(put({"dataset_file_id": "file_x", "training_data": True}))
        assert "both reference_start and reference_end" in str(put({"reference_start": iso(T0)}))
        assert put({"dataset_file_id": "file_x", "role": "admin"})["code"] == "VALIDATION_ERROR"
        backwards = put({"reference_start": iso(T0 + DAY), "reference_end": iso(T0)})
        assert backwards["message"] == "reference_start must be before reference_end"
        assert (
            "At most 366 days"
            in put({"reference_start": "2015-01-01T00:00:00Z", "reference_end": iso(T0)})["message"]
        )
        future = put({"reference_start": iso(utcnow()), "reference_end": iso(utcnow() + DAY)})
        assert "in the future" in future["message"]

        def get(**params: Any) -> dict[str, Any]:
            answer = client.get(
                monitoring_path(live["id"], "drift"), params=params, headers=world.viewer.headers
            )
            return refused(answer, 422)

        assert get(start=iso(T0 + DAY), end=iso(T0))["message"] == "start must be before end"
        ten_years = get(start="2016-01-01T00:00:00Z", end="2026-01-01T00:00:00Z")
        assert "At most 92 days" in ten_years["message"]
        assert (
            "At most 92 days"
            in get(
                start=iso(T0),
                end=iso(T0 + DAY),
                reference_start="2016-01-01T00:00:00Z",
                reference_end=iso(T0),
            )["message"]
        )
        assert "both reference_start and reference_end" in get(reference_start=iso(T0))["message"]
        assert get(start="0001-01-01T00:00:00Z")["code"] == "VALIDATION_ERROR"
        asked = client.post(
            monitoring_path(live["id"], "drift"),
            json={"start": "2016-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            headers=world.developer.headers,
        )
        assert "At most 92 days" in refused(asked, 422)["message"]
        decade = client.get(
            monitoring_path(live["id"], "drift/history"),
            params={"start": "2016-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            headers=world.viewer.headers,
        )
        assert decade.status_code == 200 and decade.json()["data"]["dataset"] == []

    def test_no_reference_is_a_conflict_that_says_how_to_set_one(
        self, client: TestClient, world: World, live: dict[str, Any]
    ) -> None:
        shown = client.get(monitoring_path(live["id"], "reference"), headers=world.viewer.headers)
        assert shown.json()["data"]["status"] == "none"
        for response in (
            drift(client, world, live["id"], T0),
            client.post(monitoring_path(live["id"], "drift"), headers=world.developer.headers),
        ):
            error = refused(response, 409)
            assert error["code"] == "CONFLICT"
            assert "PUT /api/v1/deployments/{id}/monitoring/reference" in error["message"]

    def test_another_tenants_deployment_is_unknown(
        self, client: TestClient, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        from tests.deployments.platform import register

        model = register(client, world, "Theirs", project=world.other_project)
        version = upload(client, model, world.outsider.headers, onnx_file(tiny.first))
        theirs = client.post(
            f"/api/v1/projects/{world.other_project}/deployments",
            json={"name": "globex-api", "model_version_id": version["id"]},
            headers=world.outsider.headers,
        ).json()["data"]["id"]
        window = {"reference_start": iso(T0), "reference_end": iso(T0 + timedelta(hours=1))}
        for method, what, body in (
            ("GET", "reference", None),
            ("PUT", "reference", window),
            ("GET", "drift", None),
            ("POST", "drift", None),
            ("GET", "drift/history", None),
        ):
            answers = [
                client.request(method, monitoring_path(target, what), json=body, headers=world.admin.headers)
                for target in (theirs, "deploy_doesnotexist")
            ]
            assert [answer.status_code for answer in answers] == [404, 404], (method, what)
            assert answers[0].json()["error"] == answers[1].json()["error"]
        viewer = client.put(
            monitoring_path(live["id"], "reference"), json=window, headers=world.viewer.headers
        )
        assert refused(viewer, 403)["code"] == "INSUFFICIENT_PERMISSIONS"


def test_compare_on_generated_data_at_10k_rows() -> None:
    """The numeric columns of the generated table (served inputs are numbers): random
    halves flag nothing and raise no dataset alarm; +15 % income is the one column flagged,
    and it is reported as an important feature."""
    from maestro.monitoring.profiles import profile_columns
    from tests.monitoring.data import COLUMNS, generate, random_halves

    numeric = [name for name, kind in COLUMNS.items() if kind == "numeric"]
    kinds = ["numeric"] * len(numeric)
    warnings = 0
    for seed in range(20):
        first, second = random_halves(10_000, seed)
        result = reports.compare(
            profile_columns(numeric, first, kinds), profile_columns(numeric, second, kinds), threshold=0.5
        )
        assert [column.column for column in result.columns if column.drifted] == []
        warnings += sum(column.warning for column in result.columns)
        assert not result.summary.dataset_drift and result.share == 0.0
    assert warnings <= 2  # a distance past half its threshold, from the sketches' error (1 in 120 measured)
    rng = np.random.default_rng(99)
    reference, current = generate(10_000, rng), generate(10_000, rng)
    current["income"] = current["income"] * 1.15
    result = reports.compare(
        profile_columns(numeric, reference, kinds),
        profile_columns(numeric, current, kinds),
        important=["income", "age"],
        threshold=0.5,
    )
    assert [column.column for column in result.columns if column.drifted] == ["income"]
    assert result.share == pytest.approx(1 / len(numeric))
    assert "important feature 'income' drifted (wasserstein)" in result.warnings
