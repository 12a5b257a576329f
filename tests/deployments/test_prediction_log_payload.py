"""The prediction log's stored form: an answered request is one binary payload (inputs
and probabilities as raw float64), which reads back as exactly what was sent and
answered; logs written as JSON before it still read the same; a damaged payload is
refused by the decoder and read as a request without rows, not as garbage."""

from __future__ import annotations

import logging
import struct
from datetime import timedelta
from typing import Any
from unittest.mock import ANY

import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import Ridge
from sqlalchemy import select, text, update

from maestro.db import utcnow
from maestro.deployments.models import PredictionLog
from maestro.deployments.payloads import MAGIC, decode, encode
from maestro.deployments.predictions import MAX_LOGGED_ROWS, Served, logged_matrices, logged_predictions
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


def _stored(factory: Factory, deployment: str) -> list[dict[str, Any]]:
    """The deployment's log rows as the database holds them."""
    with factory.database.session(write=False) as session:
        found = session.execute(
            text(
                "SELECT id, payload, inputs IS NULL AS no_inputs, outputs IS NULL AS no_outputs"
                " FROM prediction_logs WHERE deployment_id = :deployment ORDER BY created_at, id"
            ),
            {"deployment": deployment},
        )
        return [dict(row._mapping) for row in found]


def _holed(tiny: Tiny, rows: int) -> tuple[np.ndarray, list[dict[str, float | None]]]:
    """``rows`` rows with a missing value in every seventh, as a matrix (NaN) and as sent (null)."""
    matrix = np.resize(tiny.X, (rows, len(FEATURES))).copy()
    matrix[::7, 1] = np.nan
    sent = [
        {name: None if value != value else value for name, value in row.items()} for row in records(matrix)
    ]
    return matrix, sent


class TestTheStoredForm:
    def test_a_classifier_s_batch_is_one_small_payload_that_reads_back_as_answered(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        """Named classes, missing values and more rows than are logged: the log holds the
        first ``MAX_LOGGED_ROWS`` as sent (null where missing) and the answers exactly as
        the response had them, in a payload far smaller than the JSON it replaces."""
        y = np.where(tiny.X[:, 0] + tiny.X[:, 3] > 0, 1, 0)
        model = HistGradientBoostingClassifier(max_iter=5).fit(tiny.X, y)
        version = upload(
            client,
            register(client, world),
            world.developer.headers,
            skops_file(model),
            schema={**SCHEMA, "class_labels": ["legit", "fraud"]},
        )
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        matrix, sent = _holed(tiny, MAX_LOGGED_ROWS + 5)
        answered = predict(client, "fraud-api", world.key_headers, sent, batch=True)
        assert answered.status_code == 200, answered.text
        answers = answered.json()["predictions"]
        assert {a["prediction"] for a in answers} == {"legit", "fraud"}
        flush(app)

        with factory.database.session(write=False) as session:
            [logged] = logged_predictions(session, deployment)
            [arrays] = logged_matrices(session, deployment)
        assert logged.row_count == MAX_LOGGED_ROWS + 5
        assert logged.inputs == sent[:MAX_LOGGED_ROWS]
        assert logged.outputs == answers[:MAX_LOGGED_ROWS]
        assert arrays.arrays is not None
        assert arrays.arrays.columns == FEATURES
        np.testing.assert_array_equal(arrays.arrays.matrix, matrix[:MAX_LOGGED_ROWS])
        assert arrays.arrays.predictions == [a["prediction"] for a in answers[:MAX_LOGGED_ROWS]]
        assert arrays.arrays.classes == ("legit", "fraud")
        assert arrays.arrays.probabilities is not None
        assert arrays.arrays.probabilities.tolist() == [
            [a["probabilities"]["legit"], a["probabilities"]["fraud"]] for a in answers[:MAX_LOGGED_ROWS]
        ]

        [row] = _stored(factory, deployment)
        assert row["no_inputs"] and row["no_outputs"]
        payload = bytes(row["payload"])
        assert payload.startswith(MAGIC)
        as_json = orjson.dumps(
            {"columns": FEATURES, "rows": matrix[:MAX_LOGGED_ROWS]}, option=orjson.OPT_SERIALIZE_NUMPY
        ) + orjson.dumps(answers[:MAX_LOGGED_ROWS])
        assert len(payload) < 60_000 < len(as_json)

    def test_a_regressor_s_log_holds_its_values_and_no_probabilities(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        regressor = Ridge().fit(tiny.X, tiny.X[:, 0] * 3 + 1)
        version = upload(client, register(client, world), world.developer.headers, skops_file(regressor))
        deployment = deployed(client, world, "amount-api", version["id"])["id"]
        sent = records(tiny.X[:8])
        answered = predict(client, "amount-api", world.key_headers, sent)
        assert answered.status_code == 200, answered.text
        flush(app)
        with factory.database.session(write=False) as session:
            [logged] = logged_predictions(session, deployment)
            [arrays] = logged_matrices(session, deployment)
        assert logged.inputs == sent
        assert logged.outputs == answered.json()["predictions"]
        assert set(logged.outputs[0]) == {"prediction"}
        assert arrays.arrays is not None
        assert (arrays.arrays.classes, arrays.arrays.probabilities) == (None, None)
        [row] = _stored(factory, deployment)
        assert row["payload"] is not None and row["no_inputs"] and row["no_outputs"]

    def test_logs_written_as_json_before_still_read_back(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        version = upload(client, register(client, world), world.developer.headers, onnx_file(tiny.first))
        live = deployed(client, world, "fraud-api", version["id"])
        answered = [{"prediction": 1, "probabilities": {"0": 0.25, "1": 0.75}, "confidence": 0.75}] * 2
        as_columns = {"columns": list(FEATURES), "rows": [[1.0, None, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]}
        as_records = [dict(zip(FEATURES, [1.0, 2.0, 3.0, 4.0], strict=True))]
        with factory.database.session() as session:
            for at, inputs, outputs in ((1, as_columns, answered), (2, as_records, answered[:1])):
                session.add(
                    PredictionLog(
                        organization_id=world.org,
                        deployment_id=live["id"],
                        model_version_id=version["id"],
                        inputs=inputs,
                        outputs=outputs,
                        row_count=len(outputs),
                        latency_ms=1.0,
                        status_code=200,
                        created_at=utcnow() - timedelta(minutes=1) + timedelta(microseconds=at),
                    )
                )
        assert predict(client, "fraud-api", world.key_headers, as_records).status_code == 200
        flush(app)
        with factory.database.session(write=False) as session:
            columns, listed, binary = logged_predictions(session, live["id"])
            matrices = logged_matrices(session, live["id"])
        assert columns.inputs == [dict(zip(FEATURES, row, strict=True)) for row in as_columns["rows"]]
        assert columns.outputs == answered
        assert (listed.inputs, listed.outputs) == (as_records, answered[:1])
        assert binary.inputs == as_records
        assert [m.arrays.columns if m.arrays else None for m in matrices] == [FEATURES, ANY, FEATURES]
        assert matrices[1].arrays is not None and sorted(matrices[1].arrays.columns) == sorted(FEATURES)
        old = matrices[0].arrays
        assert old is not None and old.probabilities is not None
        np.testing.assert_array_equal(old.matrix, [[1.0, np.nan, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
        assert old.predictions == [1, 1]
        assert sorted(old.classes or ()) == ["0", "1"]  # PostgreSQL's JSONB orders keys its own way
        assert sorted(old.probabilities[0].tolist()) == [0.25, 0.75]

    def test_a_damaged_payload_reads_as_a_request_without_rows(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The rest of the log still reads, the damaged row keeps its place and counts,
        and a warning names it."""
        version = upload(client, register(client, world), world.developer.headers, onnx_file(tiny.first))
        deployment = deployed(client, world, "fraud-api", version["id"])["id"]
        for rows in (tiny.X[:3], tiny.X[3:5]):
            assert predict(client, "fraud-api", world.key_headers, records(rows)).status_code == 200
        flush(app)
        damaged, intact = _stored(factory, deployment)
        with factory.database.session() as session:
            session.execute(
                update(PredictionLog)
                .where(PredictionLog.id == damaged["id"])
                .values(payload=bytes(damaged["payload"])[:-8])
            )
        with (
            caplog.at_level(logging.WARNING, logger="maestro.serving"),
            factory.database.session(write=False) as session,
        ):
            first, second = logged_predictions(session, deployment)
            after = logged_predictions(session, deployment, after=first)
            matrices = logged_matrices(session, deployment)
        assert (first.id, first.row_count, first.status_code) == (damaged["id"], 3, 200)
        assert (first.inputs, first.outputs) == ([], [])
        assert second.inputs == records(tiny.X[3:5]) and len(second.outputs) == 2
        assert [p.id for p in after] == [intact["id"]]
        assert [m.arrays is None for m in matrices] == [True, False]
        assert any(damaged["id"] in message and "cannot be read" in message for message in caplog.messages)
        with factory.database.session(write=False) as session:
            assert (
                session.scalar(select(PredictionLog.row_count).where(PredictionLog.id == damaged["id"])) == 3
            )


# --- the decoder -------------------------------------------------------------------------------
def _payload() -> bytes:
    matrix = np.array([[1.0, np.nan], [3.0, 4.0]])
    return encode(("a", "b"), matrix, ["x", "y"], ("x", "y"), np.array([[0.9, 0.1], [0.2, 0.8]]))


def _with_header(header: dict[str, Any], body: bytes) -> bytes:
    encoded = orjson.dumps(header)
    return MAGIC + struct.pack("<I", len(encoded)) + encoded + body


def test_a_payload_decodes_to_what_was_encoded() -> None:
    arrays = decode(_payload())
    assert arrays.inputs() == [{"a": 1.0, "b": None}, {"a": 3.0, "b": 4.0}]
    assert arrays.outputs() == [
        {"prediction": "x", "probabilities": {"x": 0.9, "y": 0.1}, "confidence": 0.9},
        {"prediction": "y", "probabilities": {"x": 0.2, "y": 0.8}, "confidence": 0.8},
    ]
    three = decode(encode(("a",), np.zeros((1, 1)), [2], ("p", "q", "r"), np.array([[0.2, 0.5, 0.3]])))
    assert three.outputs() == [
        {"prediction": 2, "probabilities": {"p": 0.2, "q": 0.5, "r": 0.3}, "confidence": 0.5}
    ]


GOOD = _payload()
HEADER_LENGTH = struct.unpack_from("<I", GOOD, 4)[0]


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "too short"),
        (b"MPL", "too short"),
        (b"PK\x03\x04" + GOOD[4:], "unknown format"),
        (b"\x80\x04\x95" + GOOD[3:], "unknown format"),  # a pickle is not read
        (GOOD[:4] + struct.pack("<I", len(GOOD)) + GOOD[8:], "header"),
        (GOOD[:4] + struct.pack("<I", 2**32 - 1) + GOOD[8:], "header"),
        (GOOD[: 8 + HEADER_LENGTH] + b"\x00" * 8, "take"),  # the matrix cut short
        (GOOD[:-8], "take"),  # the probabilities cut short
        (GOOD + b"\x00" * 8, "take"),
        (GOOD[:8] + b"[" + GOOD[9:], "not JSON"),
        (
            _with_header({"columns": ["a"], "rows": 1, "predictions": [1, 2], "classes": None}, b"\x00" * 8),
            "list of 1",
        ),
        (_with_header({"columns": ["a"], "rows": -1, "predictions": [], "classes": None}, b""), "count"),
        (
            _with_header({"columns": ["a"], "rows": True, "predictions": [1], "classes": None}, b"\x00" * 8),
            "count",
        ),
        (_with_header({"columns": "ab", "rows": 0, "predictions": [], "classes": None}, b""), "columns"),
        (_with_header({"columns": ["a"], "rows": 0, "predictions": [], "classes": [1]}, b""), "classes"),
        (MAGIC + struct.pack("<I", 2) + b"[]", "not an object"),
        (
            _with_header({"columns": ["a"] * 1000, "rows": 10**12, "predictions": [], "classes": None}, b""),
            "not a list of",
        ),
    ],
)
def test_the_decoder_refuses_what_it_did_not_write(payload: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        decode(payload)


def test_a_log_that_cannot_be_encoded_is_counted_as_dropped_and_the_request_stands(app: FastAPI) -> None:
    """Logs are encoded as requests are recorded: one whose rows do not match its answers
    is dropped with a log line, never raised into the request that was answered."""
    recorder = app.state.serving.recorder
    registry = recorder.metrics.registry
    before = registry.get_sample_value("maestro_prediction_logs_dropped_total") or 0.0
    mismatched = Served(
        deployment_id="deploy_x",
        organization_id="org_x",
        version_id=None,
        request_id="req_x",
        prediction_id="pred_x",
        status_code=200,
        latency_ms=1.0,
        rows=2,
        names=("amount",),
        matrix=np.zeros((2, 1)),
        values=["only one answer"],
    )
    recorder.record(mismatched, log=True)
    assert registry.get_sample_value("maestro_prediction_logs_dropped_total") == before + 1
    assert recorder.flush().logs == 0
