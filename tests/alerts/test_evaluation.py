"""The evaluator's guarantees: each rule once per interval however many processes ask at
once, the scheduler submits the evaluation job, and no data either waits or fires."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.alerts import evaluator
from maestro.alerts.models import Alert
from maestro.config import Settings
from maestro.jobs.maintenance import ALERT_EVALUATION
from maestro.jobs.models import Job
from tests.alerts.conftest import BASE, create_rule, evaluate, record
from tests.deployments.platform import Tiny
from tests.factories import World
from tests.monitoring.drifting import deploy_classifier, rows


def _traffic_rule(client: TestClient, world: World, deployment_id: str, **body: object) -> dict:
    return create_rule(
        client,
        world,
        deployment_id,
        metric_name="request_count",
        threshold=0,
        operator="greater_than",
        window=60,
        min_samples=0,
        **{"for": 0, **body},
    )


def test_concurrent_evaluations_evaluate_each_rule_once(
    app: FastAPI, client: TestClient, world: World, tiny: Tiny
) -> None:
    live = deploy_classifier(client, world, tiny)
    for _ in range(3):
        _traffic_rule(client, world, live["id"])
    record(app, world, live, BASE, rows(1, seed=1))
    now = BASE + timedelta(minutes=1)
    counts: list[int] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        counts.append(evaluate(app, now))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 3
    with app.state.database.session(write=False) as session:
        assert len(list(session.scalars(select(Alert.id)))) == 3  # one alert per rule, not per process


def test_the_scheduler_submits_the_evaluation_job(
    make_settings: Callable[..., Settings], client: TestClient, world: World, tiny: Tiny, app: FastAPI
) -> None:
    from maestro.app import create_app

    live = deploy_classifier(client, world, tiny)
    _traffic_rule(client, world, live["id"])
    scheduled = create_app(
        make_settings(maintenance_interval_minutes=1, alert_evaluation_interval_seconds=60)
    )
    scheduled.state.queue.schedule_maintenance()
    scheduled.state.queue.schedule_maintenance()  # not again while the first waits
    with scheduled.state.database.session(write=False) as session:
        jobs = list(session.scalars(select(Job.id).where(Job.kind == ALERT_EVALUATION)))
    assert len(jobs) == 1
    scheduled.state.queue.execute(jobs[0])
    with scheduled.state.database.session(write=False) as session:
        job = session.get(Job, jobs[0])
        assert job is not None
        assert (job.status, job.result) == ("succeeded", {"evaluated": 1})


def test_no_data_waits_unless_it_fires(app: FastAPI, client: TestClient, world: World, tiny: Tiny) -> None:
    live = deploy_classifier(client, world, tiny)
    quiet = create_rule(
        client, world, live["id"], metric_name="accuracy", threshold=0.9, operator="less_than", **{"for": 0}
    )
    stopped = create_rule(
        client,
        world,
        live["id"],
        metric_name="accuracy",
        threshold=0.9,
        operator="less_than",
        no_data_fires=True,
        **{"for": 0},
    )
    evaluate(app, BASE)
    states = {
        rule["id"]: client.get(f"/api/v1/alert-rules/{rule['id']}", headers=world.viewer.headers).json()[
            "data"
        ]
        for rule in (quiet, stopped)
    }
    assert states[quiet["id"]]["state"] == "no_data"
    assert states[stopped["id"]]["state"] == "firing"
    assert evaluator.samples_quantity("accuracy") == "label_count"
    assert evaluator.samples_quantity("drift.amount") == "prediction_count"
    assert evaluator.samples_quantity("latency_p95") == "request_count"
