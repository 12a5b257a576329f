"""Ground truth: labels sent for predictions served through the real inference path,
joined to what each row predicted, counted in the minute of the prediction, and read
back as quality figures that equal scikit-learn's on the same rows; hostile bodies
refused whole, another tenant's ids answered like unknown ones, and two writers of one
minute both counted."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sqlalchemy import event, func, select, text

from maestro.db import Database
from maestro.monitoring import ground_truth
from maestro.monitoring.folding import delete_folded_before, fold_new_predictions
from maestro.monitoring.models import MonitoringLabel, MonitoringQuality
from maestro.monitoring.service import QUANTITIES, quantity
from tests.conftest import wait_until
from tests.deployments.platform import (
    SCHEMA,
    Tiny,
    deployed,
    flush,
    predict,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import Factory, World, api_key_headers

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)  # the hour the predictions below are served in
BINARY = ["legit", "fraud"]
THREE = ["low", "mid", "high"]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- serving --------------------------------------------------------------------------------------
@pytest.fixture
def clock(client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Serving's clock: requests answered after ``clock(moment)`` are recorded (logged and
    counted) at ``moment``."""
    recorder = app.state.serving.recorder
    record = recorder.record
    now: list[datetime] = []

    def stamped(served: Any, *, log: bool) -> None:
        if now:
            served.at = now[-1].timestamp()
        record(served, log=log)

    monkeypatch.setattr(recorder, "record", stamped)
    return now.append


def _deploy(client: TestClient, world: World, name: str, model: Any, schema: dict[str, Any]) -> str:
    version = upload(
        client, register(client, world, name=name), world.developer.headers, skops_file(model), schema=schema
    )
    return str(deployed(client, world, name, version["id"])["id"])


def binary(client: TestClient, world: World, tiny: Tiny, name: str = "fraud-api") -> str:
    y = np.where(tiny.X[:, 0] + tiny.X[:, 3] > 0, 1, 0)
    model = LogisticRegression(C=0.05).fit(tiny.X, y)  # scores spread over [0, 1]
    return _deploy(client, world, name, model, {**SCHEMA, "class_labels": BINARY})


def three_classes(client: TestClient, world: World, tiny: Tiny) -> str:
    y = np.digitize(tiny.X[:, 0] + tiny.X[:, 3], [-0.7, 0.7])
    model = LogisticRegression(C=0.3).fit(tiny.X, y)
    return _deploy(client, world, "risk-api", model, {**SCHEMA, "class_labels": THREE})


def regressor(client: TestClient, world: World, tiny: Tiny) -> str:
    model = Ridge().fit(tiny.X, tiny.X[:, 0] * 3 + 1)
    return _deploy(client, world, "amount-api", model, SCHEMA)


def serve(
    client: TestClient, name: str, headers: dict[str, str], rows: np.ndarray
) -> tuple[str, list[dict[str, Any]]]:
    """One batch request: its prediction id and answers."""
    answered = predict(client, name, headers, records(rows), batch=True)
    assert answered.status_code == 200, answered.text
    body = answered.json()
    return body["model_info"]["prediction_id"], body["predictions"]


def send(client: TestClient, deployment: str, headers: dict[str, str], items: Any) -> Any:
    return client.post(
        f"/api/v1/deployments/{deployment}/monitoring/ground-truth", json={"items": items}, headers=headers
    )


def labelled(
    client: TestClient, world: World, deployment: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    response = send(client, deployment, world.developer.headers, items)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def window(
    client: TestClient, world: World, deployment: str, start: datetime, end: datetime, **params: Any
) -> Any:
    response = client.get(
        f"/api/v1/deployments/{deployment}/monitoring/metrics",
        params={"start": iso(start), "end": iso(end), **params},
        headers=world.viewer.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def quality(
    client: TestClient, world: World, deployment: str, start: datetime = T0, end: datetime = at(60)
) -> dict[str, Any]:
    current = window(client, world, deployment, start, end)["current_metrics"]
    return {"accuracy": current["accuracy"], **current["quality"]}


def stored(database: Database, deployment: str) -> tuple[int, int, list[bytes]]:
    """Labels, labelled rows and the quality counts kept for a deployment."""
    with database.session(write=False) as session:
        labels = session.scalar(
            select(func.count())
            .select_from(MonitoringLabel)
            .where(MonitoringLabel.deployment_id == deployment)
        )
        rows = session.execute(
            select(MonitoringQuality.labels, MonitoringQuality.data)
            .where(MonitoringQuality.deployment_id == deployment)
            .order_by(MonitoringQuality.minute)
        ).all()
    return int(labels or 0), sum(r.labels for r in rows), [r.data for r in rows]


def flipped(predicted: str, index: int, classes: list[str]) -> str:
    """Mostly the predicted class; every third row another one."""
    return classes[(classes.index(predicted) + 1) % len(classes)] if index % 3 == 0 else predicted


def assert_classification_matches(
    found: dict[str, Any], actual: list[str], answers: list[dict[str, Any]], classes: list[str]
) -> None:
    """Counted figures exactly as scikit-learn's; AUC within the reported bound."""
    predicted = [a["prediction"] for a in answers]
    assert found["label_count"] == len(actual)
    assert found["accuracy"] == pytest.approx(accuracy_score(actual, predicted), abs=1e-12)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            actual, predicted, average=average, zero_division=0
        )
        assert found[f"precision_{average}"] == pytest.approx(precision, abs=1e-12)
        assert found[f"recall_{average}"] == pytest.approx(recall, abs=1e-12)
        assert found[f"f1_{average}"] == pytest.approx(f1, abs=1e-12)
    ordered = sorted(classes)  # scikit-learn's column order
    scores = np.array([[a["probabilities"][c] for c in ordered] for a in answers])
    with warnings.catch_warnings():  # float32 probabilities (ONNX) sum to 1 within 1e-7, not 1e-8
        warnings.filterwarnings("ignore", "The y_prob values do not sum to one", UserWarning)
        expected_loss = log_loss(actual, scores, labels=ordered)
    assert found["log_loss"] == pytest.approx(expected_loss, rel=1e-9)
    if len(classes) == 2:
        positive = classes[1]
        exact = roc_auc_score(
            [a == positive for a in actual], [a["probabilities"][positive] for a in answers]
        )
    else:
        exact = roc_auc_score(actual, scores, multi_class="ovr", average="macro", labels=ordered)
    assert 0 <= found["roc_auc_max_error"] < 0.01
    assert abs(found["roc_auc"] - exact) <= found["roc_auc_max_error"] + 1e-12
    assert found["mae"] is found["rmse"] is found["mape"] is found["r2"] is None


# --- labels joined to predictions ----------------------------------------------------------------
class TestLabels:
    def test_labels_join_their_rows_and_equal_scikit_learn(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, clock: Callable[[datetime], None]
    ) -> None:
        deployment = binary(client, world, tiny)
        clock(at(5))
        first, first_answers = serve(client, "fraud-api", world.key_headers, tiny.X[:120])
        clock(at(7))
        second, second_answers = serve(client, "fraud-api", world.key_headers, tiny.X[120:125])
        flush(app)
        items = [
            {"prediction_id": first, "row": i, "actual": flipped(a["prediction"], i, BINARY)}
            for i, a in enumerate(first_answers)
        ]
        items.append({"prediction_id": second, "actual": "fraud"})  # row 0 by default
        items.append({"prediction_id": second, "row": 5, "actual": "fraud"})  # the request had 5 rows
        items.append({"prediction_id": "pred_00000000000000000000000000", "actual": "legit"})
        answer = labelled(client, world, deployment, items)
        assert answer == {
            "matched": 121,
            "updated": 0,
            "unknown_count": 2,
            "unknown": [
                {"prediction_id": second, "row": 5},
                {"prediction_id": "pred_00000000000000000000000000", "row": 0},
            ],
        }
        actual = [item["actual"] for item in items[:121]]
        assert_classification_matches(
            quality(client, world, deployment), actual, [*first_answers, second_answers[0]], BINARY
        )
        # Each minute alone: the minute of each prediction holds its labels.
        assert quality(client, world, deployment, at(5), at(6))["label_count"] == 120
        assert quality(client, world, deployment, at(7), at(8))["label_count"] == 1
        assert quality(client, world, deployment, at(6), at(7))["label_count"] == 0

    def test_the_last_label_wins_and_a_new_one_replaces_the_old(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        clock: Callable[[datetime], None],
    ) -> None:
        deployment = binary(client, world, tiny)
        clock(at(1))
        prediction, answers = serve(client, "fraud-api", world.key_headers, tiny.X[:60])
        flush(app)
        wrong = [
            {"prediction_id": prediction, "row": i, "actual": flipped(a["prediction"], 0, BINARY)}
            for i, a in enumerate(answers)
        ]
        right = [
            {"prediction_id": prediction, "row": i, "actual": a["prediction"]} for i, a in enumerate(answers)
        ]
        # Within one body the last label of a row wins: all right, counted once each.
        assert labelled(client, world, deployment, wrong + right)["matched"] == 60
        found = quality(client, world, deployment)
        assert (found["label_count"], found["accuracy"]) == (60, 1.0)
        # Sent again later: the earlier labels are taken out, not added to.
        again = labelled(client, world, deployment, wrong[:20])
        assert (again["matched"], again["updated"]) == (20, 20)
        actual = [w["actual"] for w in wrong[:20]] + [r["actual"] for r in right[20:]]
        assert_classification_matches(quality(client, world, deployment), actual, answers, BINARY)
        # And back: the counts are those of the right labels again, exactly.
        labelled(client, world, deployment, right[:20])
        assert_classification_matches(
            quality(client, world, deployment), [r["actual"] for r in right], answers, BINARY
        )
        labels, rows, _ = stored(factory.database, deployment)
        assert (labels, rows) == (60, 60)

    def test_a_late_label_counts_in_its_prediction_s_window(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, clock: Callable[[datetime], None]
    ) -> None:
        """Labels sent long after the predictions (now, in 2025's terms a year and
        more later) land in the hours the predictions were made in."""
        deployment = binary(client, world, tiny)
        clock(at(10))
        early, early_answers = serve(client, "fraud-api", world.key_headers, tiny.X[:30])
        clock(at(130))
        late, late_answers = serve(client, "fraud-api", world.key_headers, tiny.X[30:50])
        flush(app)
        labelled(
            client,
            world,
            deployment,
            [{"prediction_id": late, "row": i, "actual": "fraud"} for i in range(20)],
        )
        series = window(client, world, deployment, T0, at(180), granularity="1h")["time_series"]
        assert [p["quality"]["label_count"] for p in series] == [0, 0, 20]
        assert [p["accuracy"] for p in series][:2] == [None, None]
        expected = sum(a["prediction"] == "fraud" for a in late_answers) / 20
        assert series[2]["accuracy"] == pytest.approx(expected)
        labelled(
            client,
            world,
            deployment,
            [{"prediction_id": early, "row": i, "actual": "legit"} for i in range(30)],
        )
        series = window(client, world, deployment, T0, at(180), granularity="1h")["time_series"]
        assert [p["quality"]["label_count"] for p in series] == [30, 0, 20]
        assert series[0]["accuracy"] == pytest.approx(
            sum(a["prediction"] == "legit" for a in early_answers) / 30
        )
        assert series[2]["accuracy"] == pytest.approx(expected)  # untouched by the later labels
        now = datetime.now(UTC)
        assert (
            quality(client, world, deployment, now - timedelta(hours=1), now + timedelta(minutes=1))[
                "label_count"
            ]
            == 0
        )

    def test_three_classes_equal_scikit_learn(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, clock: Callable[[datetime], None]
    ) -> None:
        deployment = three_classes(client, world, tiny)
        clock(at(20))
        prediction, answers = serve(client, "risk-api", world.key_headers, tiny.X)
        flush(app)
        assert {a["prediction"] for a in answers} == set(THREE)
        actual = [flipped(a["prediction"], i, THREE) for i, a in enumerate(answers)]
        labelled(
            client,
            world,
            deployment,
            [{"prediction_id": prediction, "row": i, "actual": y} for i, y in enumerate(actual)],
        )
        assert_classification_matches(quality(client, world, deployment), actual, answers, THREE)

    def test_a_regressor_s_errors_equal_scikit_learn(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        clock: Callable[[datetime], None],
    ) -> None:
        deployment = regressor(client, world, tiny)
        clock(at(30))
        first, first_answers = serve(client, "amount-api", world.key_headers, tiny.X[:100])
        clock(at(95))
        second, second_answers = serve(client, "amount-api", world.key_headers, tiny.X[100:150])
        flush(app)
        rng = np.random.default_rng(7)
        truth = (tiny.X[:150, 0] * 3 + 1 + rng.normal(scale=0.5, size=150)).tolist()
        truth[3] = 0  # no percentage error for it: skipped
        truth[4] = 2  # an integer is a number too
        items = [{"prediction_id": first, "row": i, "actual": truth[i]} for i in range(100)]
        items += [{"prediction_id": second, "row": i, "actual": truth[100 + i]} for i in range(50)]
        assert labelled(client, world, deployment, items)["matched"] == 150
        predicted = np.array([a["prediction"] for a in first_answers + second_answers])
        y = np.array(truth, dtype=float)
        found = quality(client, world, deployment, T0, at(120))
        assert found["label_count"] == 150
        assert found["mae"] == pytest.approx(mean_absolute_error(y, predicted), rel=1e-9)
        assert found["rmse"] == pytest.approx(root_mean_squared_error(y, predicted), rel=1e-9)
        assert found["r2"] == pytest.approx(r2_score(y, predicted), rel=1e-9)
        nonzero = y != 0
        assert found["mape"] == pytest.approx(
            mean_absolute_percentage_error(y[nonzero], predicted[nonzero]), rel=1e-9
        )
        for name in ("accuracy", "precision_macro", "f1_weighted", "roc_auc", "log_loss"):
            assert found[name] is None, name
        # The hours merged, not averaged: the second hour alone, then both.
        second_hour = quality(client, world, deployment, at(60), at(120))
        assert second_hour["mae"] == pytest.approx(mean_absolute_error(y[100:], predicted[100:]), rel=1e-9)
        # A label that is not a number is refused, and nothing changes.
        before = stored(factory.database, deployment)
        for bad in ("3.5", True, "high"):
            response = send(
                client,
                deployment,
                world.developer.headers,
                [items[0], {"prediction_id": first, "row": 1, "actual": bad}],
            )
            error = refused(response, 422)
            assert error["details"][0]["field"] == "items.1.actual", error
            assert "not a number" in error["message"], error
        assert stored(factory.database, deployment) == before

    def test_quantity_answers_what_the_route_shows(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        clock: Callable[[datetime], None],
    ) -> None:
        deployment = binary(client, world, tiny)
        clock(at(12))
        prediction, answers = serve(client, "fraud-api", world.key_headers, tiny.X[:40])
        flush(app)
        labelled(
            client,
            world,
            deployment,
            [
                {"prediction_id": prediction, "row": i, "actual": flipped(a["prediction"], i, BINARY)}
                for i, a in enumerate(answers)
            ],
        )
        shown = quality(client, world, deployment)
        with factory.database.session(write=False) as session:
            for name in QUANTITIES:
                if name in shown:
                    got = quantity(session, None, deployment, name, T0, at(60))
                    assert got == (None if shown[name] is None else pytest.approx(float(shown[name]))), name
        assert shown["label_coverage"] == 1.0


class TestCoverage:
    def test_coverage_counts_logged_rows_before_and_after_folding_and_retention(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        clock: Callable[[datetime], None],
    ) -> None:
        deployment = binary(client, world, tiny)
        clock(at(3))
        first, answers = serve(client, "fraud-api", world.key_headers, tiny.X[:100])
        clock(at(50))
        serve(client, "fraud-api", world.key_headers, tiny.X[100:160])
        failed = predict(client, "fraud-api", world.key_headers, [{"amount": "lots"}])
        assert failed.status_code >= 400  # logged, without rows
        clock(at(70))
        serve(client, "fraud-api", world.key_headers, tiny.X[:40])  # the next hour
        flush(app)
        assert quality(client, world, deployment)["label_coverage"] == 0.0
        labelled(
            client,
            world,
            deployment,
            [{"prediction_id": first, "row": i, "actual": "legit"} for i in range(40)],
        )

        def coverages() -> tuple[Any, ...]:
            hour = quality(client, world, deployment)
            # a part of an hour answers for the whole hour; two hours for both
            part = quality(client, world, deployment, at(2), at(4))
            both = quality(client, world, deployment, T0, at(120))
            return hour["label_coverage"], part["label_coverage"], both["label_coverage"], both["label_count"]

        expected = (40 / 160, 40 / 160, 40 / 200, 40)
        assert coverages() == pytest.approx(expected)
        assert fold_new_predictions(factory.database, deployment) == 4
        assert coverages() == pytest.approx(expected)  # from the hourly profiles now
        # every log but the newest, at the fold mark (which folding keeps)
        assert delete_folded_before(factory.database, datetime.now(UTC)) == 3
        assert coverages() == pytest.approx(expected)  # with the raw logs gone
        # A row labelled before can be labelled again without its log; a new row cannot.
        answer = labelled(
            client,
            world,
            deployment,
            [
                {"prediction_id": first, "row": 0, "actual": "fraud"},
                {"prediction_id": first, "row": 50, "actual": "legit"},
            ],
        )
        assert answer == {
            "matched": 1,
            "updated": 1,
            "unknown_count": 1,
            "unknown": [{"prediction_id": first, "row": 50}],
        }
        assert quality(client, world, deployment)["accuracy"] == pytest.approx(
            (sum(a["prediction"] == "legit" for a in answers[1:40]) + (answers[0]["prediction"] == "fraud"))
            / 40
        )


# --- refusals ---------------------------------------------------------------------------------
def refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    return body["error"]


class TestRefusals:
    @pytest.fixture
    def logged(
        self, client: TestClient, app: FastAPI, world: World, tiny: Tiny, clock: Callable[[datetime], None]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """A deployment with one labelled row, and its prediction of 10 rows."""
        deployment = binary(client, world, tiny)
        clock(at(1))
        prediction, answers = serve(client, "fraud-api", world.key_headers, tiny.X[:10])
        flush(app)
        labelled(client, world, deployment, [{"prediction_id": prediction, "actual": "fraud"}])
        return deployment, prediction, answers

    def test_hostile_bodies_are_refused_whole(
        self,
        client: TestClient,
        factory: Factory,
        world: World,
        logged: tuple[str, str, list[dict[str, Any]]],
    ) -> None:
        deployment, prediction, _ = logged
        before = stored(factory.database, deployment)
        good = [{"prediction_id": prediction, "row": i, "actual": "legit"} for i in range(1, 10)]

        too_many = refused(send(client, deployment, world.developer.headers, good * 1111 + good[:2]), 422)
        assert too_many["code"] == "VALIDATION_ERROR"
        assert too_many["details"][0]["field"] == "items"
        assert "10000" in too_many["details"][0]["message"]
        assert stored(factory.database, deployment) == before
        most = labelled(client, world, deployment, (good * 1112)[:10_000])
        assert (most["matched"], most["updated"]) == (9, 0)  # nine rows, the last label of each
        before = stored(factory.database, deployment)

        for actual in ({"class": "fraud"}, ["fraud"], None, "", "x" * 1001):
            error = refused(
                send(
                    client,
                    deployment,
                    world.developer.headers,
                    [good[0], {"prediction_id": prediction, "actual": actual}],
                ),
                422,
            )
            assert all(d["field"].startswith("items.1.actual") for d in error["details"]), error
        unknown_class = refused(
            send(
                client,
                deployment,
                world.developer.headers,
                [*good, {"prediction_id": prediction, "row": 3, "actual": "Fraud"}],
            ),
            422,
        )
        assert unknown_class["message"].startswith(
            "Item 9: 'Fraud' is not one of the model's classes ('legit', 'fraud')"
        )
        assert unknown_class["details"] == [
            {"field": "items.9.actual", "message": unknown_class["details"][0]["message"]}
        ]
        for body in (
            [{"prediction_id": prediction, "row": -1, "actual": "fraud"}],
            [{"prediction_id": prediction, "row": "0", "actual": "fraud"}],
            [{"prediction_id": prediction, "actual": "fraud", "organization_id": "org_x"}],
            [{"actual": "fraud"}],
        ):
            refused(send(client, deployment, world.developer.headers, body), 422)
        for raw in (b'{"items": [', b"[]", b'{"items": {}}', b"\xff\xfe"):
            response = client.post(
                f"/api/v1/deployments/{deployment}/monitoring/ground-truth",
                content=raw,
                headers={**world.developer.headers, "Content-Type": "application/json"},
            )
            refused(response, 422)
        assert stored(factory.database, deployment) == before

    def test_another_tenant_s_ids_answer_like_unknown_ones(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        logged: tuple[str, str, list[dict[str, Any]]],
    ) -> None:
        deployment, _, _ = logged
        # Globex serves a model under the same name; Acme serves a second deployment.
        model = register(client, world, name="Globex fraud", project=world.other_project)
        version = upload(client, model, world.outsider.headers, skops_file(tiny.first), schema=SCHEMA)
        theirs = client.post(
            f"/api/v1/projects/{world.other_project}/deployments",
            json={"name": "fraud-api", "model_version_id": version["id"]},
            headers=world.outsider.headers,
        )
        assert theirs.status_code == 201, theirs.text
        globex_key = api_key_headers(world.globex.api_key({"inference": ["read"]}))
        their_prediction, _ = serve(client, "fraud-api", globex_key, tiny.X[:3])
        binary(client, world, tiny, name="other-api")
        sibling_prediction, _ = serve(client, "other-api", world.key_headers, tiny.X[:3])
        flush(app)
        before = stored(factory.database, deployment)

        def answer_for(prediction_id: str) -> str:
            response = send(
                client,
                deployment,
                world.developer.headers,
                [{"prediction_id": prediction_id, "actual": "fraud"}],
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["success"] is True
            return json.dumps(body["data"]).replace(prediction_id, "PREDICTION")  # the answer, word for word

        never = answer_for("pred_01zzzzzzzzzzzzzzzzzzzzzzzz")
        assert answer_for(their_prediction) == never
        assert answer_for(sibling_prediction) == never
        assert stored(factory.database, deployment) == before

        # Their deployment is unknown to Acme, word for word, and Acme's to them.
        body = {"items": [{"prediction_id": their_prediction, "actual": "fraud"}]}
        path = "/api/v1/deployments/{}/monitoring/ground-truth"
        theirs_seen = client.post(
            path.format(theirs.json()["data"]["id"]), json=body, headers=world.developer.headers
        )
        missing = client.post(
            path.format("deploy_01zzzzzzzzzzzzzzzzzzzzzzzz"), json=body, headers=world.developer.headers
        )
        assert refused(theirs_seen, 404) == refused(missing, 404)
        outsider = client.post(path.format(deployment), json=body, headers=world.outsider.headers)
        assert refused(outsider, 404) == refused(missing, 404)

    def test_who_may_send_labels(
        self,
        client: TestClient,
        factory: Factory,
        world: World,
        logged: tuple[str, str, list[dict[str, Any]]],
    ) -> None:
        deployment, prediction, _ = logged
        item = [{"prediction_id": prediction, "row": 2, "actual": "legit"}]
        assert refused(send(client, deployment, world.viewer.headers, item), 403)
        reader = api_key_headers(world.acme.api_key({"monitoring": ["read"]}))
        # refused for the permission before the body is looked at
        for items in (item, [{"actual": []}]):
            error = refused(send(client, deployment, reader, items), 403)
            assert error["message"] == "This API key lacks monitoring: write"
        assert refused(send(client, deployment, world.key_headers, item), 403)
        writer = api_key_headers(world.acme.api_key({"monitoring": ["write"]}))
        response = send(client, deployment, writer, item)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["matched"] == 1


# --- two writers of one minute ------------------------------------------------------------------
class TestConcurrency:
    def test_two_posts_to_one_minute_are_both_counted(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        clock: Callable[[datetime], None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The minute has counts already. The first request is held once it has locked
        them; the second, labelling another prediction of the same minute, starts and
        waits (PostgreSQL shows it waiting on the lock; SQLite lets one writer in at a
        time). Released, all three labels are counted."""
        deployment = binary(client, world, tiny)
        clock(at(4.1))
        first, first_answers = serve(client, "fraud-api", world.key_headers, tiny.X[:5])
        clock(at(4.6))
        second, second_answers = serve(client, "fraud-api", world.key_headers, tiny.X[5:10])
        clock(at(4.9))
        earlier, earlier_answers = serve(client, "fraud-api", world.key_headers, tiny.X[10:15])
        flush(app)
        labelled(client, world, deployment, [{"prediction_id": earlier, "actual": "fraud"}])
        reached, release, waiting = threading.Event(), threading.Event(), threading.Event()
        locked_minutes = ground_truth._locked_minutes
        calls: list[int] = []

        def held(*args: Any) -> Any:
            calls.append(1)
            if len(calls) > 1:
                waiting.set()
                return locked_minutes(*args)
            locked = locked_minutes(*args)
            reached.set()
            assert release.wait(60)
            return locked

        monkeypatch.setattr(ground_truth, "_locked_minutes", held)

        def begins(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if reached.is_set() and statement.startswith("BEGIN IMMEDIATE"):
                waiting.set()  # SQLite: the second request asks for the write lock

        event.listen(factory.database.engine, "before_cursor_execute", begins)
        answers: dict[str, Any] = {}

        def post(name: str, prediction: str, actual: str) -> Callable[[], None]:
            def run() -> None:
                answers[name] = send(
                    client,
                    deployment,
                    world.developer.headers,
                    [{"prediction_id": prediction, "actual": actual}],
                )

            return run

        one = threading.Thread(target=post("one", first, "fraud"))
        two = threading.Thread(target=post("two", second, "legit"))
        try:
            one.start()
            assert reached.wait(60)
            two.start()
            assert waiting.wait(60)
            if not factory.database.is_sqlite:
                wait_until(lambda: _waiting_on_a_lock(factory.database))
        finally:
            release.set()
            one.join(60)
            two.join(60)
            event.remove(factory.database.engine, "before_cursor_execute", begins)
        assert answers["one"].status_code == answers["two"].status_code == 200, (
            answers["one"].text,
            answers["two"].text,
        )
        found = quality(client, world, deployment, at(4), at(5))
        assert found["label_count"] == 3
        right = (
            (first_answers[0]["prediction"] == "fraud")
            + (second_answers[0]["prediction"] == "legit")
            + (earlier_answers[0]["prediction"] == "fraud")
        )
        assert found["accuracy"] == right / 3


def _waiting_on_a_lock(database: Database) -> bool:
    with database.session(write=False) as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)
