"""Real ``maestro worker`` processes deliver webhooks: one killed between two attempts
of a delivery loses nothing, and the delivery arrives once, under the same webhook-id,
from the worker started after it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.app import create_app
from maestro.config import Settings
from maestro.webhooks.models import WebhookDelivery
from tests.conftest import RunningProcess, wait_until
from tests.factories import Factory, World
from tests.registry.conftest import new_model
from tests.webhooks.conftest import LOOPBACK_ONLY, Answer, Receiver, create_webhook


@pytest.fixture(params=["queue_sqlite", "queue_redis"])
def worker_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    redis = request.getfixturevalue("redis_url") if request.param == "queue_redis" else None
    return make_settings(
        redis_url=redis,
        webhook_allowed_networks=LOOPBACK_ONLY,
        webhook_allow_http=True,
        webhook_timeout_seconds=2,
        webhook_relay_interval_seconds=0.2,
        worker_threads=1,
    )


@pytest.mark.timeout(240)
def test_a_worker_killed_between_attempts_loses_no_delivery(
    worker_settings: Settings, spawn: Callable[..., RunningProcess], receiver: Receiver
) -> None:
    app = create_app(worker_settings)
    world = World.build(Factory(app))
    receiver.answer(Answer(500, b"not yet"), Answer(200, b"thanks"))
    with TestClient(app) as client:
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        first = spawn(["worker"], worker_settings)
        new_model(client, world.project, world.admin.headers, name="Survivor")

        def attempts() -> int:
            with app.state.database.session(write=False) as session:
                row = session.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook["id"])
                ).first()
                return row.attempts if row is not None else 0

        wait_until(lambda: attempts() == 1, timeout=120)
        first.kill()  # between the failed first attempt and the retry due five seconds later
        assert len(receiver.requests) == 1

        spawn(["worker"], worker_settings)
        receiver.wait_for(2, timeout=120)

        def delivered() -> bool:
            with app.state.database.session(write=False) as session:
                row = session.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook["id"])
                ).one()
                return row.status == "succeeded"

        wait_until(delivered, timeout=60)
        listed = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=world.admin.headers).json()[
            "data"
        ]
    [row] = listed
    assert (row["status"], row["attempts"], row["response_status"]) == ("succeeded", 2, 200)
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert ids == [row["event_id"], row["event_id"]]  # one event, retried, answered 2xx once
    app.state.database.dispose()
