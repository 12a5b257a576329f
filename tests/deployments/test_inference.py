"""Inference on the platform: answers in the spec's shape, hostile input refused with a
clear error while the server keeps serving, what is recorded for monitoring, the health
and schema of a deployment, changes made by another process, the hot path's silence
towards the database, async batch jobs, and the Prometheus metrics."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression, Ridge
from sqlalchemy import event, func, select

from maestro.app import create_app
from maestro.config import Settings
from maestro.db import new_id
from maestro.deployments.models import PredictionLog
from maestro.deployments.predictions import MAX_LOGGED_ROWS, Served, logged_predictions
from maestro.deployments.state import ENTRY_MAX_AGE
from maestro.identity.models import AuditLog
from maestro.jobs.models import Job
from tests.conftest import held_reads
from tests.deployments.platform import (
    FEATURES,
    SCHEMA,
    Tiny,
    deployed,
    flush,
    onnx_file,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import Factory, World

ROW = {"amount": 1.5, "time_of_day": 0.2, "day_of_week": -0.3, "merchant_risk": 0.8}


@pytest.fixture
def live(client: TestClient, world: World, tiny: Tiny) -> dict[str, Any]:
    model = register(client, world)
    version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
    return deployed(client, world, "fraud-api", version["id"])


def call(
    client: TestClient, world: World, content: bytes, content_type: str = "application/json", path: str = ""
) -> Any:
    return client.post(
        f"/api/v1/inference/fraud-api{path}",
        content=content,
        headers={**world.key_headers, "Content-Type": content_type},
    )


def refusal(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert set(body) == {"success", "error", "metadata"}
    return body["error"]


class TestAnswers:
    def test_a_classifier_with_named_classes(self, client: TestClient, world: World, tiny: Tiny) -> None:
        named = LogisticRegression().fit(tiny.X, np.where(tiny.X[:, 0] + tiny.X[:, 3] > 0, "fraud", "legit"))
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(named))
        deployed(client, world, "fraud-api", version["id"])
        response = predict(client, "fraud-api", world.key_headers, records(tiny.X[:20]))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        answers = response.json()["predictions"]
        assert [a["prediction"] for a in answers] == named.predict(tiny.X[:20]).tolist()
        assert set(answers[0]["probabilities"]) == {"fraud", "legit"}
        assert answers[0]["confidence"] == answers[0]["probabilities"][answers[0]["prediction"]]

    def test_a_regressor_answers_values_only(self, client: TestClient, world: World, tiny: Tiny) -> None:
        regressor = Ridge().fit(tiny.X, tiny.X[:, 0] * 3 + 1)
        model = register(client, world)
        version = upload(client, model, world.developer.headers, skops_file(regressor))
        deployed(client, world, "amount-api", version["id"])
        response = predict(client, "amount-api", world.key_headers, records(tiny.X[:8]))
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert set(answers[0]) == {"prediction"}
        np.testing.assert_allclose(
            [a["prediction"] for a in answers], regressor.predict(tiny.X[:8]), rtol=1e-4
        )

    def test_health_and_schema(self, client: TestClient, world: World, live: dict[str, Any]) -> None:
        health = client.get("/api/v1/inference/fraud-api/health", headers=world.key_headers)
        assert health.status_code == 200, health.text
        assert health.json()["data"]["status"] == "healthy"
        assert health.json()["data"]["serving"] == "onnx"
        schema = client.get("/api/v1/inference/fraud-api/schema", headers=world.viewer.headers)
        assert schema.status_code == 200, schema.text
        data = schema.json()["data"]
        assert data["inputs"] == SCHEMA["inputs"]
        assert data["input_source"] == "model_schema"
        assert data["outputs"] == {
            "prediction": "label",
            "classes": [0, 1],
            "class_labels": ["0", "1"],
            "probabilities": True,
        }
        assert (data["max_rows"], data["max_batch_rows"]) == (100, 10_000)
        example = predict(client, "fraud-api", world.key_headers, data["example"]["instances"])
        assert example.status_code == 200
        client.put(
            f"/api/v1/deployments/{live['id']}", json={"status": "inactive"}, headers=world.admin.headers
        )
        assert client.get("/api/v1/inference/fraud-api/health", headers=world.key_headers).status_code == 503


class TestHostileInput:
    """Each is a clear error in the platform's shape; afterwards the deployment still answers."""

    @pytest.fixture
    def settings(self, make_settings: Any) -> Settings:
        """Only ``flush()`` writes here (the background writer waits 60 s): the allowance
        of error lines per write then ends where the test says, not where the clock does."""
        return make_settings(prediction_log_flush_seconds=60)

    @pytest.mark.parametrize(
        ("row", "field"),
        [
            ({"amount": 1.0, "time_of_day": 1.0, "day_of_week": 1.0}, "instances.0.merchant_risk"),
            ({**ROW, "zip_code": 12345}, "instances.0.zip_code"),
            ({**ROW, "amount": "1250"}, "instances.0.amount"),
            ({**ROW, "amount": None}, "instances.0.amount"),
            ({**ROW, "amount": [1, 2]}, "instances.0.amount"),
            ({**ROW, "amount": 1e301}, "instances.0.amount"),
            ({**ROW, "amount": 1e39}, "instances.0.amount"),  # beyond float32, which this ONNX model takes
        ],
    )
    def test_rows_that_do_not_fit_the_schema(
        self, client: TestClient, world: World, live: dict[str, Any], row: dict[str, Any], field: str
    ) -> None:
        error = refusal(predict(client, "fraud-api", world.key_headers, [row]), 422)
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"][0]["field"] == field
        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200

    @pytest.mark.parametrize(
        "content",
        [
            b'{"instances": [{"amount": NaN, "time_of_day": 0, "day_of_week": 0, "merchant_risk": 0}]}',
            b'{"instances": [{"amount": Infinity, "time_of_day": 0, "day_of_week": 0, "merchant_risk": 0}]}',
            b'{"instances": [{"amount": 1e999, "time_of_day": 0, "day_of_week": 0, "merchant_risk": 0}]}',
            b'{"instances": [{"amount": 1'
            + b"0" * 400
            + b', "time_of_day": 0, "day_of_week": 0, "merchant_risk": 0}]}',
            b'{"instances": [',
            b"",
            b"\xff\xfe not utf-8",
            b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            b'{"instances": [' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}",
            b'{"rows": [[1, 2, 3, 4]]}',
            b'{"instances": []}',
            b'{"instances": "everything"}',
            b"[1, 2, 3, 4]",
            b'{"instances": [[1, 2, 3]]}',
        ],
    )
    def test_bodies_that_are_not_rows(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any], content: bytes
    ) -> None:
        error = refusal(call(client, world, content), 422)
        assert error["code"] == "VALIDATION_ERROR"
        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200

    @pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"])
    def test_a_body_that_is_not_json(
        self, client: TestClient, world: World, live: dict[str, Any], content_type: str
    ) -> None:
        error = refusal(call(client, world, orjson.dumps({"instances": [ROW]}), content_type), 415)
        assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"

    def test_too_many_rows(self, client: TestClient, world: World, live: dict[str, Any]) -> None:
        error = refusal(predict(client, "fraud-api", world.key_headers, [ROW] * 101), 413)
        assert "…/batch" in error["message"]
        assert predict(client, "fraud-api", world.key_headers, [ROW] * 101, batch=True).status_code == 200
        million = orjson.dumps({"instances": [[0, 0, 0, 0]] * 1_000_000})
        error = refusal(call(client, world, million, path="/batch"), 413)
        assert error["message"] == "At most 10000 rows per request, got 1000000"
        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200

    def test_a_body_over_the_byte_limit(self, make_settings: Any, tiny: Tiny) -> None:
        app = create_app(make_settings(inference_max_body_bytes=4096))
        factory = Factory(app)
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin)
        with TestClient(app) as client:
            model = client.post(
                f"/api/v1/projects/{project}/models",
                json={"name": "M", "model_type": "classification"},
                headers=admin.headers,
            ).json()["data"]["id"]
            version = upload(client, model, admin.headers, onnx_file(tiny.first))
            client.post(
                f"/api/v1/projects/{project}/deployments",
                json={"name": "fraud-api", "model_version_id": version["id"]},
                headers=admin.headers,
            )
            big = orjson.dumps({"instances": [ROW] * 100})
            assert len(big) > 4096
            error = refusal(predict(client, "fraud-api", admin.headers, [ROW] * 100), 413)
            assert error["message"] == "The body is larger than 4,096 bytes"

            def chunked() -> Iterator[bytes]:  # no Content-Length: refused while streaming
                yield big[:3000]
                yield big[3000:]

            streamed = client.post(
                "/api/v1/inference/fraud-api",
                content=chunked(),
                headers={**admin.headers, "Content-Type": "application/json"},
            )
            refusal(streamed, 413)
            assert predict(client, "fraud-api", admin.headers, [ROW]).status_code == 200

    def test_failed_requests_are_counted_and_logged(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        for _ in range(12):
            call(client, world, b"{")
        predict(client, "fraud-api", world.key_headers, [ROW])
        flush(app)
        response = client.get(f"/api/v1/deployments/{live['id']}/metrics", headers=world.viewer.headers)
        counted = response.json()["data"]["totals"]
        assert (counted["request_count"], counted["error_count"]) == (13, 12)
        assert counted["error_rate"] == pytest.approx(12 / 13)
        entries = client.get(
            f"/api/v1/deployments/{live['id']}/logs", params={"level": "warn"}, headers=world.viewer.headers
        ).json()["data"]
        assert len(entries) == 11  # ten one by one, then a line counting the rest
        assert {e["event"] for e in entries} == {"request_failed"}
        assert any(
            e["message"] == "2 more requests failed since the last entry (not listed each)" for e in entries
        )
        assert all("not valid JSON" in e["message"] for e in entries if "more requests" not in e["message"])


class TestPredictionLog:
    def test_sampling_keeps_counting_every_request(self, make_settings: Any, tiny: Tiny) -> None:
        app = create_app(make_settings(prediction_log_sample_rate=0.0))
        factory = Factory(app)
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin)
        with TestClient(app) as client:
            model = client.post(
                f"/api/v1/projects/{project}/models",
                json={"name": "M", "model_type": "classification"},
                headers=admin.headers,
            ).json()["data"]["id"]
            version = upload(client, model, admin.headers, onnx_file(tiny.first))
            deployment = client.post(
                f"/api/v1/projects/{project}/deployments",
                json={"name": "fraud-api", "model_version_id": version["id"]},
                headers=admin.headers,
            ).json()["data"]["id"]
            for _ in range(3):
                assert predict(client, "fraud-api", admin.headers, [ROW]).status_code == 200
            flush(app)
            totals = client.get(f"/api/v1/deployments/{deployment}/metrics", headers=admin.headers).json()[
                "data"
            ]
        assert totals["totals"]["request_count"] == 3
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(PredictionLog)) == 0

    def test_the_log_reads_in_pages_oldest_first(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        live: dict[str, Any],
        tiny: Tiny,
    ) -> None:
        sent = [records(tiny.X[i : i + 1]) for i in range(5)]
        for rows in sent:
            assert predict(client, "fraud-api", world.key_headers, rows).status_code == 200
        flush(app)
        with factory.database.session(write=False) as session:
            everything = logged_predictions(session, live["id"])
            first = logged_predictions(session, live["id"], limit=2)
            second = logged_predictions(session, live["id"], after=first[-1], limit=2)
            rest = logged_predictions(session, live["id"], after=second[-1], limit=10)
            later = logged_predictions(session, live["id"], since=everything[2].created_at)
            before = logged_predictions(session, live["id"], until=everything[0].created_at)
            elsewhere = logged_predictions(session, "dep_not_a_deployment")
        assert [len(first), len(second), len(rest)] == [2, 2, 1]
        assert [p.id for p in first + second + rest] == [p.id for p in everything]
        assert [(p.created_at, p.id) for p in everything] == sorted((p.created_at, p.id) for p in everything)
        canonical = partial(json.dumps, sort_keys=True)  # PostgreSQL's JSONB orders keys its own way
        assert sorted(map(canonical, (p.inputs for p in everything))) == sorted(map(canonical, sent))
        assert all(p.status_code == 200 and p.row_count == 1 and len(p.outputs) == 1 for p in everything)
        assert len(later) >= 3 and all(p.created_at >= everything[2].created_at for p in later)
        assert before == [] and elsewhere == []

    def test_logged_rows_read_back_as_sent_with_missing_values_as_null(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        """What the log keeps of a request is what came and went: a missing value (NaN in
        the matrix) reads back as null, the outputs as the response wrote them, and a
        request over ``MAX_LOGGED_ROWS`` is cut there but counted whole."""
        names = tuple(FEATURES)
        holed = np.array([[1.0, 2.5, -3.0, 0.5], [0.1, np.nan, 0.3, 0.0]])
        outputs = [{"prediction": 1, "probabilities": {"no": 0.25, "yes": 0.75}, "confidence": 0.75}] * 2
        app.state.serving.recorder.record(  # as a model taking missing values would answer
            Served(
                deployment_id=live["id"],
                organization_id=world.org,
                version_id=live["model_version"]["id"],
                request_id="req",
                prediction_id=new_id("pred"),
                status_code=200,
                latency_ms=1.0,
                rows=len(holed),
                names=names,
                matrix=holed,
                values=[1, 1],
                probabilities=np.array([[0.25, 0.75]] * 2),
                classes=("no", "yes"),
            ),
            log=True,
        )
        big = np.arange(4 * (MAX_LOGGED_ROWS + 5), dtype=float).reshape(-1, 4) / 1000
        answered = predict(client, "fraud-api", world.key_headers, records(big), batch=True)
        assert answered.status_code == 200, answered.text
        flush(app)
        with factory.database.session(write=False) as session:
            first, second = logged_predictions(session, live["id"])
        assert first.inputs == [
            dict(zip(names, [1.0, 2.5, -3.0, 0.5], strict=True)),
            dict(zip(names, [0.1, None, 0.3, 0.0], strict=True)),
        ]
        assert first.outputs == outputs
        assert (second.row_count, len(second.inputs), len(second.outputs)) == (MAX_LOGGED_ROWS + 5,) + (
            MAX_LOGGED_ROWS,
        ) * 2
        assert second.inputs[-1] == dict(zip(names, big[MAX_LOGGED_ROWS - 1].tolist(), strict=True))
        assert second.outputs == answered.json()["predictions"][:MAX_LOGGED_ROWS]

    def test_failures_are_logged_without_their_input(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        call(client, world, orjson.dumps({"instances": [{**ROW, "amount": "x"}]}))
        flush(app)
        with factory.database.session(write=False) as session:
            [row] = session.scalars(select(PredictionLog))
        assert (row.status_code, row.inputs, row.outputs) == (422, None, None)
        assert "expected a number" in row.error


class TestTheHotPath:
    def test_a_warm_request_asks_the_database_nothing(self, app: FastAPI, world: World, tiny: Tiny) -> None:
        """No lifespan here, so no background thread: every statement is the request's own."""
        client = TestClient(app)
        model = register(client, world)
        version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
        deployed(client, world, "fraud-api", version["id"])
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        for headers in (world.key_headers, world.viewer.headers):
            assert predict(client, "fraud-api", headers, [ROW]).status_code == 200  # warms the caches
            event.listen(app.state.database.engine, "before_cursor_execute", count)
            try:
                for _ in range(5):
                    assert predict(client, "fraud-api", headers, [ROW]).status_code == 200
            finally:
                event.remove(app.state.database.engine, "before_cursor_execute", count)
        assert statements == []

    def test_an_old_directory_entry_is_read_again_by_one_request_while_the_others_use_it(
        self, app: FastAPI, world: World, tiny: Tiny
    ) -> None:
        client = TestClient(app)
        model = register(client, world)
        version = upload(client, model, world.developer.headers, onnx_file(tiny.first))
        deployed(client, world, "fraud-api", version["id"])
        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200
        serving = app.state.serving
        key = (world.org, "fraud-api")
        live, read_at = serving._directory[key]
        serving._directory[key] = (live, read_at - ENTRY_MAX_AGE - 1)  # as if read a minute ago

        release = threading.Event()
        reads, entered = held_reads(app, "deployments", hold=release)
        answers: list[int] = []
        reading = threading.Thread(
            target=lambda: answers.append(predict(client, "fraud-api", world.key_headers, [ROW]).status_code)
        )
        reading.start()
        try:
            assert entered.wait(30)  # one request reads the deployment again, held there
            for _ in range(3):
                assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200
            assert len(reads) == 1
        finally:
            release.set()
            reading.join(30)
        assert answers == [200]
        assert serving._directory[key][1] > read_at

    def test_revoking_a_key_or_logging_out_stops_access_at_once(
        self, client: TestClient, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        viewer = factory.user(world.org, "viewer")
        assert predict(client, "fraud-api", viewer.headers, [ROW]).status_code == 200
        assert client.post("/api/v1/auth/logout", headers=viewer.headers).status_code == 204
        assert predict(client, "fraud-api", viewer.headers, [ROW]).status_code == 401

        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 200
        keys = client.get(f"/api/v1/organizations/{world.org}/api-keys", headers=world.admin.headers).json()[
            "data"
        ]
        [key] = [k for k in keys if k["permissions"] == {"inference": ["read"]}]
        assert client.delete(f"/api/v1/api-keys/{key['id']}", headers=world.admin.headers).status_code == 204
        assert predict(client, "fraud-api", world.key_headers, [ROW]).status_code == 401

    def test_a_narrowed_key_stops_predicting_at_once(
        self, client: TestClient, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        key = factory.api_key(world.org, {"inference": ["read"], "models": ["read"]})
        assert predict(client, "fraud-api", {"X-API-Key": key}, [ROW]).status_code == 200
        keys = client.get(f"/api/v1/organizations/{world.org}/api-keys", headers=world.admin.headers).json()[
            "data"
        ]
        [row] = [k for k in keys if "models" in k["permissions"]]
        client.put(
            f"/api/v1/api-keys/{row['id']}",
            json={"permissions": {"models": ["read"]}},
            headers=world.admin.headers,
        )
        assert predict(client, "fraud-api", {"X-API-Key": key}, [ROW]).status_code == 403

    def test_a_refusal_is_audited(
        self, client: TestClient, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        scopeless = factory.api_key(world.org, {"models": ["read"]})
        refused = predict(client, "fraud-api", {"X-API-Key": scopeless}, [ROW])
        assert refused.status_code == 403
        with factory.database.session(write=False) as session:
            denials = session.execute(
                select(AuditLog.action, AuditLog.outcome, AuditLog.resource_type).where(
                    AuditLog.outcome == "denied"
                )
            ).all()
        assert [tuple(row) for row in denials] == [("inference:predict", "denied", "inference")]


class TestAnotherProcess:
    """Two apps on one database stand for two serving processes."""

    def test_a_deploy_elsewhere_is_picked_up_at_the_next_check(
        self, make_settings: Any, world: World, tiny: Tiny
    ) -> None:
        settings = make_settings()
        first, second = create_app(settings), create_app(settings)
        with TestClient(first) as here, TestClient(second) as there:
            model = register(here, world)
            v1 = upload(here, model, world.developer.headers, onnx_file(tiny.first))
            v2 = upload(here, model, world.developer.headers, onnx_file(tiny.second))
            deployment = deployed(here, world, "fraud-api", v1["id"])["id"]
            rows = records(tiny.X[:6])
            answer = predict(there, "fraud-api", world.key_headers, rows)
            assert [p["prediction"] for p in answer.json()["predictions"]] == tiny.first.predict(
                tiny.X[:6]
            ).tolist()
            moved = here.put(
                f"/api/v1/deployments/{deployment}",
                json={"model_version_id": v2["id"]},
                headers=world.developer.headers,
            )
            assert moved.status_code == 200
            second.state.serving.check_generation()
            answer = predict(there, "fraud-api", world.key_headers, rows)
            assert answer.json()["model_info"]["version"] == "1.0.1"
            assert [p["prediction"] for p in answer.json()["predictions"]] == tiny.second.predict(
                tiny.X[:6]
            ).tolist()
            here.delete(f"/api/v1/deployments/{deployment}", headers=world.developer.headers)
            second.state.serving.check_generation()
            assert predict(there, "fraud-api", world.key_headers, rows).status_code == 404


# --- batch jobs ------------------------------------------------------------------------------
def run_job(app: FastAPI, job_id: str) -> None:
    app.state.queue.execute(job_id)


def job(client: TestClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


class TestBatchJobs:
    def test_a_csv_body_comes_back_with_predictions(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        frame = pl.DataFrame(
            {"id": list(range(2500)), **{f: tiny.X[np.arange(2500) % 200, i] for i, f in enumerate(FEATURES)}}
        )
        submitted = client.post(
            "/api/v1/inference/fraud-api/batch-jobs",
            content=frame.write_csv().encode(),
            headers={**world.developer.headers, "Content-Type": "text/csv"},
        )
        assert submitted.status_code == 202, submitted.text
        accepted = submitted.json()["data"]
        assert accepted["status"] == "queued"
        assert accepted["model_version"]["version"] == "1.0.0"
        early = client.get(accepted["result_url"], headers=world.viewer.headers)
        assert early.status_code == 409

        run_job(app, accepted["job_id"])
        done = job(client, accepted["job_id"], world.viewer.headers)
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"] == 1.0
        assert done["result"]["rows"] == 2500
        assert done["result"]["serving"] == "onnx"
        download = client.get(accepted["result_url"], headers=world.viewer.headers)
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/csv")
        result = pl.read_csv(download.content)
        assert result.columns == ["id", *FEATURES, "prediction", "probability_0", "probability_1"]
        expected = tiny.first.predict(frame.select(FEATURES).to_numpy())
        assert result["prediction"].to_list() == expected.tolist()
        as_file = client.get(done["result"]["download_url"], headers=world.viewer.headers)
        assert as_file.content == download.content

    def test_an_uploaded_dataset_to_parquet(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, live: dict[str, Any]
    ) -> None:
        buffer = io.BytesIO()
        pl.DataFrame({f: tiny.X[:, i] for i, f in enumerate(FEATURES)}).write_parquet(buffer)
        uploaded = client.post(
            "/api/v1/upload/datasets",
            data={"project_id": world.project},
            files={"file": ("rows.parquet", buffer.getvalue(), "application/vnd.apache.parquet")},
            headers=world.developer.headers,
        )
        assert uploaded.status_code == 201, uploaded.text
        submitted = client.post(
            "/api/v1/inference/fraud-api/batch-jobs",
            json={"file_id": uploaded.json()["data"]["id"], "output_format": "parquet"},
            headers=world.developer.headers,
        )
        assert submitted.status_code == 202, submitted.text
        run_job(app, submitted.json()["data"]["job_id"])
        download = client.get(submitted.json()["data"]["result_url"], headers=world.developer.headers)
        assert download.status_code == 200, download.text
        result = pl.read_parquet(io.BytesIO(download.content))
        assert result["prediction"].to_list() == tiny.first.predict(tiny.X).tolist()

    def test_json_rows(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        live: dict[str, Any],
    ) -> None:
        key = {"X-API-Key": factory.api_key(world.org, {"inference": ["read", "write"]})}
        submitted = client.post(
            "/api/v1/inference/fraud-api/batch-jobs",
            json={"instances": records(tiny.X[:30])},
            headers=key,
        )
        assert submitted.status_code == 202, submitted.text
        run_job(app, submitted.json()["data"]["job_id"])
        download = client.get(submitted.json()["data"]["result_url"], headers=world.key_headers)
        assert (
            pl.read_csv(download.content)["prediction"].to_list() == tiny.first.predict(tiny.X[:30]).tolist()
        )

    def test_a_dataset_without_a_feature_fails_clearly(
        self, client: TestClient, app: FastAPI, world: World, live: dict[str, Any]
    ) -> None:
        submitted = client.post(
            "/api/v1/inference/fraud-api/batch-jobs",
            content=b"amount,time_of_day\n1,2\n",
            headers={**world.developer.headers, "Content-Type": "text/csv"},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["data"]["job_id"]
        run_job(app, job_id)
        failed = job(client, job_id, world.viewer.headers)
        assert failed["status"] == "failed"
        assert (
            failed["error"]
            == "ValueError: The dataset has no column for feature 'day_of_week', 'merchant_risk'"
        )
        result = client.get(submitted.json()["data"]["result_url"], headers=world.viewer.headers)
        assert result.status_code == 409
        assert "failed" in result.json()["error"]["message"]

    def test_refusals(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, live: dict[str, Any]
    ) -> None:
        path = "/api/v1/inference/fraud-api/batch-jobs"
        image = client.post(
            path, content=b"\x89PNG", headers={**world.developer.headers, "Content-Type": "image/png"}
        )
        assert image.status_code == 415
        garbage = client.post(
            path,
            content=b"\x00\x01\x02binary",
            headers={**world.developer.headers, "Content-Type": "text/csv"},
        )
        assert garbage.status_code == 422
        missing = client.post(path, json={"file_id": "file_nothere"}, headers=world.developer.headers)
        assert missing.status_code == 422
        unknown = client.post(
            "/api/v1/inference/no-such-api/batch-jobs",
            json={"instances": [ROW]},
            headers=world.viewer.headers,
        )
        assert unknown.status_code == 404
        assert (
            client.get(
                "/api/v1/inference/fraud-api/batch-jobs/job_nothere/result", headers=world.viewer.headers
            ).status_code
            == 404
        )
        with factory.database.session(write=False) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0


# --- Prometheus --------------------------------------------------------------------------------
class TestPrometheus:
    def test_the_scrape(self, client: TestClient, world: World, live: dict[str, Any]) -> None:
        predict(client, "fraud-api", world.key_headers, [ROW, ROW])
        call(client, world, b"{")
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        route = 'route="/api/v1/inference/{deployment_name}"'
        assert f'maestro_http_requests_total{{method="POST",{route},status="200"}} 1.0' in text
        # Without MAESTRO_METRICS_TOKEN: totals over deployments, no deployment names or versions
        # (test_model_server_tenancy.py scrapes them with the token).
        assert 'maestro_predictions_total{outcome="success"} 1.0' in text
        assert 'maestro_predictions_total{outcome="error"} 1.0' in text
        assert "maestro_predicted_rows_total 2.0" in text
        assert 'maestro_prediction_duration_seconds_bucket{le="0.0005"}' in text
        assert "fraud-api" not in text
        assert "maestro_models_loaded 1.0" in text
        assert "process_resident_memory_bytes" in text
        assert live["id"] not in text
        assert world.org not in text

    def test_it_can_be_turned_off(self, make_settings: Any) -> None:
        with TestClient(create_app(make_settings(metrics_enabled=False))) as client:
            assert client.get("/metrics").status_code == 404


def test_settings_document_their_limits() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.inference_max_rows, defaults.inference_batch_max_rows) == (100, 10_000)
    assert defaults.prediction_log_sample_rate == 1.0
