"""Alert tests: a real SMTP server on loopback (aiosmtpd), the webhook tests' loopback
receiver, traffic with chosen labels at chosen times, and the evaluator and notification
jobs run in the test's thread at times the test chooses."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any

import numpy as np
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.alerts import evaluator, notifications
from maestro.config import Settings
from maestro.db import new_id
from maestro.deployments.predictions import Served
from maestro.jobs.models import Job, JobStatus
from tests.conftest import free_port
from tests.deployments.platform import FEATURES, flush
from tests.factories import World
from tests.monitoring.drifting import labels
from tests.webhooks.conftest import LOOPBACK_ONLY, Receiver


class Mailbox:
    """What a loopback SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self.arrived:
            self.messages.append(message_from_bytes(envelope.content))
            self.arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Message]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} emails arrived, {count} expected")
            return list(self.messages)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture
def smtp_port(smtp: tuple[Mailbox, int]) -> int:
    return smtp[1]


@pytest.fixture
def mailbox(smtp: tuple[Mailbox, int]) -> Mailbox:
    return smtp[0]


@pytest.fixture
def settings(make_settings: Callable[..., Settings], smtp_port: int) -> Settings:
    """Channels may reach 127.0.0.1 over http (the receivers) and mail through the loopback SMTP server."""
    return make_settings(
        webhook_allowed_networks=LOOPBACK_ONLY,
        webhook_allow_http=True,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_starttls=False,
        public_url="https://maestro.example.com",
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


BASE = minute(datetime.now(UTC)) - timedelta(minutes=30)


def record(
    app: FastAPI, world: World, live: dict[str, Any], at: datetime, matrix: np.ndarray
) -> tuple[str, list[str]]:
    """One answered request at ``at`` with the rows of ``matrix``: (prediction id, predictions)."""
    prediction_id = new_id("pred")
    predicted = labels(matrix)
    app.state.serving.recorder.record(
        Served(
            deployment_id=live["id"],
            organization_id=world.org,
            version_id=live["model_version"]["id"],
            request_id=new_id("req"),
            prediction_id=prediction_id,
            status_code=200,
            latency_ms=2.0,
            rows=len(matrix),
            names=FEATURES,
            matrix=matrix,
            values=predicted,
            at=at.timestamp(),
        ),
        log=True,
    )
    flush(app)
    return prediction_id, predicted


def send_labels(
    client: TestClient,
    world: World,
    deployment_id: str,
    prediction_id: str,
    predicted: list[str],
    *,
    right: bool,
) -> None:
    flip = {"fraud": "legit", "legit": "fraud"}
    items = [
        {"prediction_id": prediction_id, "row": row, "actual": value if right else flip[value]}
        for row, value in enumerate(predicted)
    ]
    response = client.post(
        f"/api/v1/deployments/{deployment_id}/monitoring/ground-truth",
        json={"items": items},
        headers=world.developer.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["matched"] == len(items)


def evaluate(app: FastAPI, now: datetime) -> int:
    return evaluator.evaluate_all(app.state.database, app.state.settings, now)


def deliver(app: FastAPI) -> int:
    """Hand due notifications to jobs and run them here; how many jobs ran."""
    notifications.submit_due(app.state.queue)
    with app.state.database.session(write=False) as session:
        job_ids = list(
            session.scalars(
                select(Job.id).where(Job.kind == notifications.NOTIFY, Job.status == JobStatus.queued)
            )
        )
    for job_id in job_ids:
        app.state.queue.execute(job_id)
    return len(job_ids)


def create_channel(client: TestClient, world: World, **body: Any) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/organizations/{world.org}/notification-channels",
        json={"name": "On-call", **body},
        headers=world.admin.headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])


def create_rule(client: TestClient, world: World, deployment_id: str, **body: Any) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/deployments/{deployment_id}/monitoring/alerts", json=body, headers=world.developer.headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])
