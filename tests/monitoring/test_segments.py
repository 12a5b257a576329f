"""Segments: a deployment names one input column, and its traffic folded since is also
profiled per value (the 10 most frequent, then ``__other__``); labels are counted per
segment, and drift, its history and quantities answer for one segment. Hostile input
(unknown columns and segments, oversized values, another tenant's deployment) is
refused and changes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.db import Database, new_id
from maestro.deployments.predictions import Served
from maestro.monitoring import segments
from maestro.monitoring.folding import fold_new_predictions, merged_profiles
from maestro.monitoring.models import PREDICTION_COLUMN, MonitoringProfile
from maestro.monitoring.profiles import NumericProfile
from maestro.monitoring.service import quantity
from tests.deployments.platform import FEATURES, Tiny, flush, onnx_file, register, upload
from tests.factories import World
from tests.monitoring.drifting import (
    T0,
    dataset_csv,
    deploy_classifier,
    iso,
    labels,
    monitoring_path,
    rows,
    run_job,
    set_reference,
    upload_dataset,
)

DAY = FEATURES.index("day_of_week")
HOUR = FEATURES.index("time_of_day")


@pytest.fixture
def live(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    return deploy_classifier(client, world, tiny)


def set_segment(
    client: TestClient,
    world: World,
    deployment_id: str,
    column: str | None,
    monkeypatch: pytest.MonkeyPatch,
    *,
    at: datetime = T0 - timedelta(minutes=1),
) -> dict[str, Any]:
    """Set the segment column as of ``at`` (the clock the setting reads is moved there)."""
    monkeypatch.setattr(segments, "utcnow", lambda: at)
    response = client.put(
        monitoring_path(deployment_id, "segment"), json={"column": column}, headers=world.developer.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def serve(app: FastAPI, world: World, live: dict[str, Any], at: datetime, matrix: np.ndarray) -> list[str]:
    """One answered request per 100 rows at ``at``, logged and written; their prediction ids."""
    ids = []
    for first in range(0, len(matrix), 100):
        part = matrix[first : first + 100]
        ids.append(new_id("pred"))
        app.state.serving.recorder.record(
            Served(
                deployment_id=live["id"],
                organization_id=world.org,
                version_id=live["model_version"]["id"],
                request_id=new_id("req"),
                prediction_id=ids[-1],
                status_code=200,
                latency_ms=2.0,
                rows=len(part),
                names=FEATURES,
                matrix=part,
                values=labels(part),
                at=at.timestamp() + first / 1_000_000,
            ),
            log=True,
        )
    flush(app)
    return ids


def profiles(database: Database, deployment_id: str, segment: str) -> dict[str, Any]:
    with database.session(write=False) as session:
        return merged_profiles(
            session, deployment_id, T0 - timedelta(hours=1), T0 + timedelta(hours=3), segment
        )


def refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    return dict(body["error"])


def with_hours(n: int, counts: dict[float, int], seed: int = 1) -> np.ndarray:
    """``n`` rows whose ``time_of_day`` takes each value of ``counts`` that many times
    (then NaN for the rest), in shuffled order."""
    matrix = rows(n, seed)
    values = [value for value, count in counts.items() for _ in range(count)]
    values += [np.nan] * (n - len(values))
    matrix[:, HOUR] = np.random.default_rng(seed).permutation(np.array(values, dtype=np.float64))
    return matrix


class TestSettingTheSegment:
    def test_set_read_cleared_and_validated(
        self, client: TestClient, world: World, live: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = monitoring_path(live["id"], "segment")
        shown = client.get(path, headers=world.viewer.headers)
        assert shown.status_code == 200, shown.text
        assert shown.json()["data"] | {"since": None} == {
            "deployment_id": live["id"],
            "column": None,
            "values": [],
            "segments": [],
            "since": None,
        }
        found = set_segment(client, world, live["id"], "time_of_day", monkeypatch)
        assert (found["column"], found["values"], found["segments"]) == ("time_of_day", [], ["__other__"])

        unknown = refused(client.put(path, json={"column": "weather"}, headers=world.developer.headers), 422)
        assert "'weather' is not an input column" in unknown["message"]
        assert "amount, time_of_day, day_of_week, merchant_risk" in unknown["message"]
        for body in ({"column": ""}, {"column": "x" * 301}, {"column": 3}, {}, {"column": "amount", "x": 1}):
            refused(client.put(path, json=body, headers=world.developer.headers), 422)
        viewer = client.put(path, json={"column": "amount"}, headers=world.viewer.headers)
        assert refused(viewer, 403)["code"] == "INSUFFICIENT_PERMISSIONS"
        assert client.get(path, headers=world.viewer.headers).json()["data"]["column"] == "time_of_day"

        cleared = client.put(path, json={"column": None}, headers=world.developer.headers)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["data"]["column"] is None

    def test_segment_queries_are_checked(
        self, client: TestClient, world: World, live: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        metrics = monitoring_path(live["id"], "metrics")
        none_set = refused(client.get(metrics, params={"segment": "3"}, headers=world.viewer.headers), 422)
        assert "no segment column" in none_set["message"]
        set_segment(client, world, live["id"], "time_of_day", monkeypatch)
        for what in ("metrics", "drift", "drift/history"):
            path = monitoring_path(live["id"], what)
            unknown = refused(client.get(path, params={"segment": "7"}, headers=world.viewer.headers), 422)
            assert "Unknown segment '7'" in unknown["message"], what
            assert "known: __other__" in unknown["message"], what
            oversized = client.get(path, params={"segment": "7" * 201}, headers=world.viewer.headers)
            assert refused(oversized, 422)["code"] == "VALIDATION_ERROR", what
            refused(client.get(path, params={"segment": ""}, headers=world.viewer.headers), 422)

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
        for method, body in (("GET", None), ("PUT", {"column": "amount"})):
            answers = [
                client.request(
                    method, monitoring_path(target, "segment"), json=body, headers=world.admin.headers
                )
                for target in (theirs, "deploy_doesnotexist")
            ]
            assert [answer.status_code for answer in answers] == [404, 404], method
            assert answers[0].json()["error"] == answers[1].json()["error"]
        shown = client.get(monitoring_path(theirs, "segment"), headers=world.outsider.headers)
        assert shown.json()["data"]["column"] is None


class TestFoldingPerSegment:
    def test_segments_add_up_to_the_whole_and_the_rest_is_other(
        self,
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        database = app.state.database
        serve(app, world, live, T0 - timedelta(minutes=5), rows(200, 9))  # before the column was set
        set_segment(client, world, live["id"], "time_of_day", monkeypatch)
        # 12 values with distinct counts (value 12 the most frequent), and 490 missing ones.
        counts = {float(value): 10 + 5 * value for value in range(1, 13)}
        matrix = with_hours(1000, counts)
        serve(app, world, live, T0 + timedelta(minutes=10), matrix)
        fold_new_predictions(database, live["id"])

        found = client.get(monitoring_path(live["id"], "segment"), headers=world.viewer.headers).json()[
            "data"
        ]
        top = ["__null__", "12", "11", "10", "9", "8", "7", "6", "5", "4"]  # 490 missing, then 70, 65, …
        assert found["values"] == top
        assert found["segments"] == [*top, "__other__"]

        whole = profiles(database, live["id"], "")
        assert whole[PREDICTION_COLUMN].count == 1200  # the traffic before the column counts here only
        per_segment = {segment: profiles(database, live["id"], segment) for segment in found["segments"]}
        assert sum(p[PREDICTION_COLUMN].count for p in per_segment.values()) == 1000
        assert per_segment["12"][PREDICTION_COLUMN].count == 70
        assert per_segment["__null__"]["amount"].count == 490
        assert per_segment["__other__"]["amount"].count == counts[1.0] + counts[2.0] + counts[3.0]
        amounts = per_segment["7"]["amount"]
        assert isinstance(amounts, NumericProfile)
        assert amounts.sum == pytest.approx(matrix[matrix[:, HOUR] == 7.0, 0].sum())
        hours = per_segment["__other__"]["time_of_day"]
        assert isinstance(hours, NumericProfile)
        assert (hours.min, hours.max) == (1.0, 3.0)

        # Later traffic: a new value while 10 are known lands in __other__.
        serve(app, world, live, T0 + timedelta(minutes=70), with_hours(100, {20.0: 60, 12.0: 40}, seed=2))
        fold_new_predictions(database, live["id"])
        shown = client.get(monitoring_path(live["id"], "segment"), headers=world.viewer.headers)
        assert shown.json()["data"]["values"] == top
        assert profiles(database, live["id"], "__other__")[PREDICTION_COLUMN].count == 60 + 60
        assert profiles(database, live["id"], "12")[PREDICTION_COLUMN].count == 70 + 40

        # Another column discards the per-segment rows and values; the whole stays.
        set_segment(client, world, live["id"], "day_of_week", monkeypatch, at=T0 + timedelta(hours=2))
        with database.session(write=False) as session:
            kept = set(
                session.scalars(
                    select(MonitoringProfile.segment).where(MonitoringProfile.deployment_id == live["id"])
                )
            )
        assert kept == {""}
        assert profiles(database, live["id"], "")[PREDICTION_COLUMN].count == 1300

    def test_later_folds_add_values_while_fewer_than_ten(
        self,
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        database = app.state.database
        set_segment(client, world, live["id"], "time_of_day", monkeypatch)
        serve(app, world, live, T0, with_hours(100, {1.0: 60, 2.5: 40}))
        fold_new_predictions(database, live["id"])
        serve(app, world, live, T0 + timedelta(minutes=1), with_hours(100, {-3.0: 70, 1.0: 30}, seed=4))
        fold_new_predictions(database, live["id"])
        shown = client.get(monitoring_path(live["id"], "segment"), headers=world.viewer.headers)
        assert shown.json()["data"]["values"] == ["1", "2.5", "-3"]
        assert profiles(database, live["id"], "1")[PREDICTION_COLUMN].count == 90


class TestQualityPerSegment:
    def test_accuracy_differs_per_segment(
        self,
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        database = app.state.database
        set_segment(client, world, live["id"], "day_of_week", monkeypatch)
        matrix = rows(400, 5)
        matrix[:, DAY] = np.where(np.arange(400) % 4 == 0, 6.0, 1.0)  # 100 rows on day 6
        ids = serve(app, world, live, T0 + timedelta(minutes=3), matrix)
        fold_new_predictions(database, live["id"])
        predicted = labels(matrix)
        items = []
        for index in range(400):
            truth = predicted[index]
            if matrix[index, DAY] == 6.0:  # day 6: every answer wrong
                truth = "legit" if truth == "fraud" else "fraud"
            items.append({"prediction_id": ids[index // 100], "row": index % 100, "actual": truth})
        sent = client.post(
            monitoring_path(live["id"], "ground-truth"),
            json={"items": items},
            headers=world.developer.headers,
        )
        assert sent.status_code == 200, sent.text

        def accuracy(segment: str | None) -> Any:
            params = {"start": iso(T0), "end": iso(T0 + timedelta(hours=1))}
            if segment is not None:
                params["segment"] = segment
            response = client.get(
                monitoring_path(live["id"], "metrics"), params=params, headers=world.viewer.headers
            )
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            assert data["segment"] == segment
            return data["current_metrics"]

        whole, monday, sunday = accuracy(None), accuracy("1"), accuracy("6")
        assert (whole["accuracy"], monday["accuracy"], sunday["accuracy"]) == (0.75, 1.0, 0.0)
        assert (monday["quality"]["label_count"], sunday["quality"]["label_count"]) == (300, 100)
        assert sunday["quality"]["label_coverage"] == 1.0
        # Request figures come from counters without segments: the whole deployment's.
        assert sunday["request_count"] == whole["request_count"] == 4

        with database.session(write=False) as session:
            assert (
                quantity(session, None, live["id"], "accuracy", T0, T0 + timedelta(hours=1), segment="6")
                == 0.0
            )
            assert quantity(session, None, live["id"], "accuracy", T0, T0 + timedelta(hours=1)) == 0.75

        # A label sent again for a day-6 row replaces its counts in its segment and the whole.
        first = items[0]
        fixed = {**first, "actual": predicted[0]}
        again = client.post(
            monitoring_path(live["id"], "ground-truth"),
            json={"items": [fixed]},
            headers=world.developer.headers,
        )
        assert again.json()["data"]["updated"] == 1
        assert accuracy("6")["accuracy"] == pytest.approx(0.01)
        assert accuracy("6")["quality"]["label_count"] == 100
        assert accuracy(None)["accuracy"] == pytest.approx(301 / 400)


class TestDriftPerSegment:
    def test_one_segment_drifts_while_the_whole_does_not(
        self,
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        database = app.state.database
        reference = rows(3000, 11)
        # Day 2 is one row in 80: its shift below moves the whole traffic's distances to
        # about 0.04, well clear of the 0.1 drift threshold whatever the sketches' noise.
        reference[:, DAY] = np.where(np.arange(3000) % 80 == 0, 2.0, 1.0)
        dataset = upload_dataset(client, world, dataset_csv(reference))
        assert (
            set_reference(client, app, world, live["id"], {"dataset_file_id": dataset})["status"] == "ready"
        )
        set_segment(client, world, live["id"], "day_of_week", monkeypatch)
        traffic = rows(6000, 12)
        traffic[:, DAY] = np.where(np.arange(6000) % 80 == 0, 2.0, 1.0)  # 75 rows on day 2
        day_two = traffic[:, DAY] == 2.0
        for column in ("amount", "time_of_day", "merchant_risk"):
            traffic[day_two, FEATURES.index(column)] += 3.0
        serve(app, world, live, T0 + timedelta(hours=1), traffic)
        fold_new_predictions(database, live["id"])

        def drift(segment: str | None) -> dict[str, Any]:
            params = {"start": iso(T0 + timedelta(hours=1)), "end": iso(T0 + timedelta(hours=2))}
            if segment is not None:
                params["segment"] = segment
            response = client.get(
                monitoring_path(live["id"], "drift"), params=params, headers=world.viewer.headers
            )
            assert response.status_code == 200, response.text
            return dict(response.json()["data"])

        whole, two, one = drift(None), drift("2"), drift("1")
        assert (whole["segment"], two["segment"]) == (None, "2")
        assert whole["dataset_drift"]["drifted"] is False
        assert two["dataset_drift"]["drifted"] is True
        assert one["dataset_drift"]["drifted"] is False
        drifted = {column["column"] for column in two["columns"] if column["drifted"]}
        assert {"amount", "time_of_day", "merchant_risk"} <= drifted
        assert {column["column"]: column["n_current"] for column in two["columns"]}["amount"] == 75

        with database.session(write=False) as session:
            window = (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
            share = quantity(session, None, live["id"], "dataset_drift_share", *window, segment="2")
            assert share == two["dataset_drift"]["share_drifted"]
            assert quantity(session, None, live["id"], "drift.amount", *window, segment="2") > 0.1

        asked = client.post(
            monitoring_path(live["id"], "drift"),
            json={"start": iso(T0 + timedelta(hours=1)), "end": iso(T0 + timedelta(hours=2))},
            headers=world.developer.headers,
        )
        assert asked.status_code == 202, asked.text
        job = run_job(app, asked.json()["data"]["job_id"])
        assert job.result is not None
        assert job.result["segments"]["2"]["dataset_drift"] is True

        def history(segment: str | None) -> list[bool]:
            params = {"start": iso(T0), "end": iso(T0 + timedelta(days=1))}
            if segment is not None:
                params["segment"] = segment
            response = client.get(
                monitoring_path(live["id"], "drift/history"), params=params, headers=world.viewer.headers
            )
            assert response.status_code == 200, response.text
            return [point["dataset_drift"] for point in response.json()["data"]["dataset"]]

        assert (history(None), history("2"), history("__other__")) == ([False], [True], [False])

    def test_a_label_before_its_value_is_known_counts_as_other(
        self,
        client: TestClient,
        app: FastAPI,
        world: World,
        live: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        database = app.state.database
        before = serve(app, world, live, T0 - timedelta(minutes=30), rows(100, 6))  # before the column
        set_segment(client, world, live["id"], "day_of_week", monkeypatch)
        matrix = rows(100, 7)
        matrix[:, DAY] = 1.0
        (early,) = serve(app, world, live, T0 + timedelta(minutes=1), matrix)
        predicted = labels(matrix)

        def send(prediction_id: str, count: int) -> None:
            items = [{"prediction_id": prediction_id, "row": i, "actual": predicted[i]} for i in range(count)]
            response = client.post(
                monitoring_path(live["id"], "ground-truth"),
                json={"items": items},
                headers=world.developer.headers,
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"]["matched"] == count

        def labelled(segment: str | None) -> int:
            params = {"start": iso(T0 - timedelta(hours=1)), "end": iso(T0 + timedelta(hours=1))}
            if segment is not None:
                params["segment"] = segment
            response = client.get(
                monitoring_path(live["id"], "metrics"), params=params, headers=world.viewer.headers
            )
            assert response.status_code == 200, response.text
            return int(response.json()["data"]["current_metrics"]["quality"]["label_count"])

        send(before[0], 10)  # served before the column was set: the whole deployment's only
        send(early, 20)  # not folded yet: day 1 is not a known value
        fold_new_predictions(database, live["id"])
        assert labelled("__other__") == 20
        send(early, 30)  # 20 of them again (they stay where they were counted), and 10 more
        assert (labelled(None), labelled("1"), labelled("__other__")) == (40, 10, 20)
