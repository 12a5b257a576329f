"""Folding served requests into hourly profiles: requests answered through the real
serving path are folded once each (again, with new traffic, after a crash, with two
folders at once), the profiles say what numpy says of the values sent, and the
prediction log is deleted after its retention period only where it was folded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import Ridge
from sqlalchemy import select, text

from maestro.config import Settings
from maestro.db import Database, utcnow
from maestro.deployments.predictions import Served, logged_matrices
from maestro.jobs.maintenance import FOLD
from maestro.jobs.models import Job, JobStatus
from maestro.jobs.queue import JobQueue
from maestro.monitoring import folding
from maestro.monitoring.folding import (
    delete_folded_before,
    fold_all,
    fold_new_predictions,
    merged_profiles,
)
from maestro.monitoring.models import PREDICTION_COLUMN, PROBABILITY_PREFIX, MonitoringProfile
from maestro.monitoring.profiles import CategoricalProfile, ColumnProfile, NumericProfile
from tests.conftest import wait_until
from tests.deployments.platform import (
    FEATURES,
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
from tests.factories import Factory, World

LABELS = ["legit", "fraud"]


def _classifier(client: TestClient, world: World, tiny: Tiny, name: str) -> str:
    """A deployment answering the labels with their probabilities."""
    y = np.where(tiny.X[:, 0] + tiny.X[:, 3] > 0, 1, 0)
    model = HistGradientBoostingClassifier(max_iter=5).fit(tiny.X, y)
    version = upload(
        client,
        register(client, world, name=name),
        world.developer.headers,
        skops_file(model),
        schema={**SCHEMA, "class_labels": LABELS},
    )
    return deployed(client, world, name, version["id"])["id"]


def _send(client: TestClient, world: World, name: str, batches: list[np.ndarray]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for batch in batches:
        answered = predict(client, name, world.key_headers, records(batch), batch=True)
        assert answered.status_code == 200, answered.text
        answers += answered.json()["predictions"]
    return answers


def _everything(database: Database, deployment: str) -> dict[str, ColumnProfile]:
    now = utcnow()
    with database.session(write=False) as session:
        return merged_profiles(session, deployment, now - timedelta(days=400), now + timedelta(hours=1))


def _numeric(profiles: dict[str, ColumnProfile], column: str) -> NumericProfile:
    profile = profiles[column]
    assert isinstance(profile, NumericProfile)
    return profile


def _categorical(profiles: dict[str, ColumnProfile], column: str) -> CategoricalProfile:
    profile = profiles[column]
    assert isinstance(profile, CategoricalProfile)
    return profile


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Logs are written when a test flushes them, never by the writer's own clock in between."""
    return make_settings(prediction_log_flush_seconds=60)


def _assert_describes(profile: NumericProfile, values: np.ndarray) -> None:
    """Counts, bounds and sum exactly; quantiles within the sketch's rank error."""
    assert profile.count == values.size
    assert profile.null_count == 0
    assert (profile.min, profile.max) == (values.min(), values.max())
    assert profile.sum == pytest.approx(values.sum())
    for q in (0.1, 0.5, 0.9):
        estimate = profile.sketch.get_quantile(q)
        below, up_to = float(np.mean(values < estimate)), float(np.mean(values <= estimate))
        assert below - 0.02 <= q <= up_to + 0.02, (q, below, up_to)  # ties share one rank


def _counts(database: Database, deployment: str) -> dict[str, int]:
    return {column: profile.count for column, profile in _everything(database, deployment).items()}


class TestFolding:
    def test_folded_profiles_describe_what_was_served(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        deployment = _classifier(client, world, tiny, "fraud-api")
        batches = [tiny.X[:70], tiny.X[70:71], tiny.X[71:200]]
        answers = _send(client, world, "fraud-api", batches)
        failed = predict(client, "fraud-api", world.key_headers, [{"amount": "lots"}])
        assert failed.status_code >= 400
        assert flush(app).logs == 4

        assert fold_new_predictions(factory.database, deployment) == 4  # the failure moves the mark only
        profiles = _everything(factory.database, deployment)
        sent = np.vstack(batches)
        assert set(profiles) == {*FEATURES, PREDICTION_COLUMN} | {PROBABILITY_PREFIX + c for c in LABELS}
        for index, feature in enumerate(FEATURES):
            _assert_describes(_numeric(profiles, feature), sent[:, index])
        predicted = _categorical(profiles, PREDICTION_COLUMN)
        assert predicted.counts == Counter(a["prediction"] for a in answers)
        fraud = np.array([a["probabilities"]["fraud"] for a in answers])
        _assert_describes(_numeric(profiles, PROBABILITY_PREFIX + "fraud"), fraud)

        assert fold_new_predictions(factory.database, deployment) == 0
        assert _counts(factory.database, deployment) == {column: 200 for column in profiles}

        _send(client, world, "fraud-api", [tiny.X[:30]])
        flush(app)
        assert fold_all(factory.database) == {deployment: 1}
        assert fold_all(factory.database) == {}
        again = _everything(factory.database, deployment)
        _assert_describes(_numeric(again, "amount"), np.concatenate([sent[:, 0], tiny.X[:30, 0]]))

    def test_a_regressor_s_predictions_are_numeric(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        regressor = Ridge().fit(tiny.X, tiny.X[:, 0] * 3 + 1)
        version = upload(client, register(client, world), world.developer.headers, skops_file(regressor))
        deployment = deployed(client, world, "amount-api", version["id"])["id"]
        answers = _send(client, world, "amount-api", [tiny.X[:50], tiny.X[50:120]])
        flush(app)
        assert fold_new_predictions(factory.database, deployment, page=1) == 2
        profiles = _everything(factory.database, deployment)
        _assert_describes(_numeric(profiles, PREDICTION_COLUMN), np.array([a["prediction"] for a in answers]))
        assert not any(column.startswith(PROBABILITY_PREFIX) for column in profiles)

    def test_halves_folded_apart_merge_to_one_fold_of_all(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        apart = _classifier(client, world, tiny, "fraud-apart")
        together = _classifier(client, world, tiny, "fraud-together")
        halves = [tiny.X[:90], tiny.X[90:]]
        for half in halves:
            for name in ("fraud-apart", "fraud-together"):
                _send(client, world, name, [half[:40], half[40:]])
            flush(app)
            assert fold_new_predictions(factory.database, apart) == 2
        assert fold_new_predictions(factory.database, together, page=3) == 4
        split, whole = _everything(factory.database, apart), _everything(factory.database, together)
        assert set(split) == set(whole)
        for column in FEATURES:
            a, b = _numeric(split, column), _numeric(whole, column)
            assert (a.count, a.null_count, a.min, a.max) == (b.count, b.null_count, b.min, b.max)
            assert a.sum == pytest.approx(b.sum)
            assert a.sketch.get_quantile(0.5) == pytest.approx(b.sketch.get_quantile(0.5))
        assert _categorical(split, PREDICTION_COLUMN).counts == _categorical(whole, PREDICTION_COLUMN).counts

    def test_a_fold_that_fails_half_way_leaves_nothing_behind(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Profiles and the mark are written together: a crash after the profiles
        would otherwise count the page again on the next fold."""
        deployment = _classifier(client, world, tiny, "fraud-api")
        _send(client, world, "fraud-api", [tiny.X[:10], tiny.X[10:25]])
        flush(app)
        stored = folding._store

        def store_then_crash(*args: Any) -> None:
            stored(*args)
            raise RuntimeError("the worker died here")

        monkeypatch.setattr(folding, "_store", store_then_crash)
        with pytest.raises(RuntimeError, match="died"):
            fold_new_predictions(factory.database, deployment)
        assert _everything(factory.database, deployment) == {}
        monkeypatch.setattr(folding, "_store", stored)
        assert fold_new_predictions(factory.database, deployment) == 2
        assert set(_counts(factory.database, deployment).values()) == {25}


class TestTwoFoldersAtOnce:
    @pytest.fixture
    def second_database(self, settings: Settings) -> Iterator[Database]:
        """Another process's connection pool to the same database."""
        database = Database(settings)
        yield database
        database.dispose()

    def test_every_row_is_counted_once(
        self,
        client: TestClient,
        app: FastAPI,
        factory: Factory,
        world: World,
        tiny: Tiny,
        second_database: Database,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The first folder is held after reading its page under the mark's lock; the
        second has seen the same unfolded logs and waits for the lock. Once the first
        commits, the second finds nothing left past the mark."""
        deployment = _classifier(client, world, tiny, "fraud-api")
        _send(client, world, "fraud-api", [tiny.X[:60], tiny.X[60:100], tiny.X[100:]])
        flush(app)
        read, reached, release = logged_matrices, threading.Event(), threading.Event()
        locking = threading.Event()
        locked_mark = folding._locked_mark

        def held_read(*args: Any, **kwargs: Any) -> Any:
            page = read(*args, **kwargs)
            if threading.current_thread().name == "first" and kwargs["limit"] > 1:
                reached.set()
                assert release.wait(60)
            return page

        def announced_lock(*args: Any) -> Any:
            if threading.current_thread().name == "second":
                locking.set()
            return locked_mark(*args)

        monkeypatch.setattr(folding, "logged_matrices", held_read)
        monkeypatch.setattr(folding, "_locked_mark", announced_lock)
        results: dict[str, int] = {}

        def run(name: str, database: Database) -> Callable[[], None]:
            def fold() -> None:
                results[name] = fold_new_predictions(database, deployment)

            return fold

        first = threading.Thread(target=run("first", factory.database), name="first")
        second = threading.Thread(target=run("second", second_database), name="second")
        first.start()
        assert reached.wait(60)
        second.start()
        assert locking.wait(60)
        if not factory.database.is_sqlite:  # PostgreSQL shows the second waiting on the row lock
            wait_until(lambda: _waiting_on_a_lock(factory.database))
        release.set()
        first.join(60)
        second.join(60)
        assert results == {"first": 3, "second": 0}
        assert set(_counts(factory.database, deployment).values()) == {200}


def _waiting_on_a_lock(database: Database) -> bool:
    with database.session(write=False) as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


class TestRetention:
    def _serve_at(
        self, app: FastAPI, world: World, deployment: str, version: str, at: float, rows: np.ndarray
    ) -> None:
        """A request answered at ``at`` (epoch seconds), as serving records it."""
        app.state.serving.recorder.record(
            Served(
                deployment_id=deployment,
                organization_id=world.org,
                version_id=version,
                request_id=f"req-{at}",
                prediction_id=f"pred_{int(at * 1000):020d}",
                status_code=200,
                latency_ms=2.0,
                rows=len(rows),
                names=FEATURES,
                matrix=rows,
                values=["legit"] * len(rows),
                at=at,
            ),
            log=True,
        )

    def test_old_logs_go_once_folded_and_their_profiles_stay(
        self, client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
    ) -> None:
        deployment = _classifier(client, world, tiny, "fraud-api")
        with factory.database.session(write=False) as session:
            version = session.scalar(
                text("SELECT model_version_id FROM deployments WHERE id = :id"), {"id": deployment}
            )
        day = 86_400.0
        now = time.time()
        old = {now - 40 * day: tiny.X[:5], now - 40 * day + 3600: tiny.X[5:12], now - 38 * day: tiny.X[12:20]}
        for at, rows in old.items():
            self._serve_at(app, world, deployment, version, at, rows)
        _send(client, world, "fraud-api", [tiny.X[:30]])
        flush(app)
        cutoff = utcnow() - timedelta(days=30)

        assert delete_folded_before(factory.database, cutoff) == 0  # nothing folded yet
        assert fold_new_predictions(factory.database, deployment, until=utcnow() - timedelta(days=39)) == 2
        # Below the mark (the second log) and past the cutoff: only the first log.
        assert delete_folded_before(factory.database, cutoff) == 1
        assert self._logs(factory, deployment) == 3

        assert fold_new_predictions(factory.database, deployment) == 2
        assert delete_folded_before(factory.database, cutoff, batch=1) == 2
        assert self._logs(factory, deployment) == 1  # the recent request stays
        counts = _counts(factory.database, deployment)
        assert {counts[column] for column in (*FEATURES, PREDICTION_COLUMN)} == {50}
        assert counts[PROBABILITY_PREFIX + "fraud"] == 30  # only the request served now had them
        forty_days_ago = utcnow() - timedelta(days=40)
        with factory.database.session(write=False) as session:
            first_hours = merged_profiles(
                session, deployment, forty_days_ago - timedelta(hours=1), forty_days_ago + timedelta(hours=1)
            )
        _assert_describes(_numeric(first_hours, "amount"), tiny.X[:12, 0])

    @pytest.mark.parametrize("in_server_process", [False, True], ids=["worker", "embedded"])
    def test_maintenance_folds_and_deletes_on_its_schedule(
        self,
        make_settings: Callable[..., Settings],
        tiny: Tiny,
        in_server_process: bool,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A worker embedded in the API server folds in a child process (this one's fold
        is broken to prove it), with the same result as a worker process."""
        app = _app(make_settings(maintenance_interval_minutes=60))
        if in_server_process:
            app.state.queue.in_server_process = True

            def not_here(*_: Any) -> None:
                raise AssertionError("folded in the server's own process")

            monkeypatch.setattr(folding, "fold_and_prune", not_here)
        factory = Factory(app)
        world = World.build(factory)
        with TestClient(app, raise_server_exceptions=False) as own_client:
            deployment = _classifier(own_client, world, tiny, "fraud-api")
            with factory.database.session(write=False) as session:
                version = session.scalar(
                    text("SELECT model_version_id FROM deployments WHERE id = :id"), {"id": deployment}
                )
            now = time.time()
            self._serve_at(app, world, deployment, version, now - 40 * 86_400, tiny.X[:6])
            self._serve_at(app, world, deployment, version, now - 20 * 86_400, tiny.X[6:10])
            _send(own_client, world, "fraud-api", [tiny.X[:30]])
            flush(app)
            queue: JobQueue = app.state.queue
            queue.schedule_maintenance()
            queue.schedule_maintenance()  # the last fold is still waiting: not another
            with factory.database.session(write=False) as session:
                [fold] = session.scalars(select(Job).where(Job.kind == FOLD)).all()
            queue.execute(fold.id)
            with factory.database.session(write=False) as session:
                done = session.get(Job, fold.id)
            assert done is not None and done.status == JobStatus.succeeded, done and done.error
            # The request just served is younger than the settling time: folded next time.
            assert done.result == {"deployments_folded": 1, "logs_folded": 2, "logs_deleted": 1}
            assert self._logs(factory, deployment) == 2
            assert set(_counts(factory.database, deployment).values()) == {10}
            queue.huey.storage.flush_all()

    @staticmethod
    def _logs(factory: Factory, deployment: str) -> int:
        with factory.database.session(write=False) as session:
            return int(
                session.scalar(
                    text("SELECT count(*) FROM prediction_logs WHERE deployment_id = :d"), {"d": deployment}
                )
                or 0
            )


def _app(settings: Settings) -> FastAPI:
    from maestro.app import create_app

    return create_app(settings)


def test_profiles_are_hourly_rows(
    client: TestClient, app: FastAPI, factory: Factory, world: World, tiny: Tiny
) -> None:
    deployment = _classifier(client, world, tiny, "fraud-api")
    _send(client, world, "fraud-api", [tiny.X[:10]])
    flush(app)
    fold_new_predictions(factory.database, deployment)
    with factory.database.session(write=False) as session:
        rows = session.scalars(
            select(MonitoringProfile).where(MonitoringProfile.deployment_id == deployment)
        ).all()
    assert {row.hour.minute for row in rows} == {0}
    assert {row.rows for row in rows} == {10}
