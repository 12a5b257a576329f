"""Events reach a real receiver through the outbox, the relay and the job system,
signed so that the Standard Webhooks library verifies them, once each."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from maestro.jobs.models import Job
from maestro.webhooks import relay
from maestro.webhooks.models import WebhookDelivery
from tests.factories import World
from tests.registry.conftest import new_model, new_version
from tests.webhooks.conftest import Receiver, create_webhook


def run_relay(app: FastAPI) -> list[str]:
    """One tick of the relay, then every delivery job it submitted, run by the job system."""
    queue = app.state.queue
    relay.tick(queue)
    with app.state.database.session(write=False) as session:
        job_ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.kind == relay.DELIVER, Job.status == "queued")
                .order_by(Job.created_at)
            )
        )
    for job_id in job_ids:
        queue.execute(job_id)
    return job_ids


def test_a_new_version_reaches_the_receiver_once_verified(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.version.created"])
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    model = new_model(client, world.project, world.admin.headers)
    version = new_version(client, model["id"], world.admin.headers, version="1.0.0")

    assert run_relay(app)
    [request] = receiver.wait_for(1)
    payload = StandardWebhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "model.version.created"
    assert payload["organization_id"] == world.org
    assert payload["data"] == {
        "model_id": model["id"],
        "version_id": version["id"],
        "version": "1.0.0",
        "stage": "development",
    }
    assert request.headers["webhook-id"] == payload["id"]
    assert request.headers["content-type"] == "application/json"
    assert request.path == "/hooks/maestro"

    # Nothing more to send: another tick submits nothing and the receiver hears nothing more.
    assert run_relay(app) == []
    assert len(receiver.requests) == 1
    listed = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=world.admin.headers).json()
    [delivery] = listed["data"]
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"] == 1
    assert delivery["response_status"] == 200
    assert delivery["response_body"] == "ok"
    assert delivery["latency_ms"] >= 0
    assert delivery["event_id"] == payload["id"]
    assert listed["pagination"]["total"] == 1


def test_only_subscribed_events_of_the_own_organisation_are_sent(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    new_model(client, world.project, world.admin.headers, name="First")
    new_model(client, world.project, world.admin.headers, name="Second")
    new_model(client, world.other_project, world.outsider.headers, name="Elsewhere")
    run_relay(app)
    bodies = [json.loads(request.body) for request in receiver.wait_for(2)]
    assert [body["data"]["name"] for body in bodies] == ["First", "Second"]  # in the order of the events
    assert all(body["type"] == "model.created" for body in bodies)
    assert len(receiver.requests) == 2


def test_every_event_is_relayed_once_even_by_concurrent_relays(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    for number in range(5):
        new_model(client, world.project, world.admin.headers, name=f"Model {number}")
    assert relay.relay_outbox(app.state.database, batch=2) == 2
    assert relay.relay_outbox(app.state.database) == 3
    assert relay.relay_outbox(app.state.database) == 0
    with app.state.database.session(write=False) as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook["id"])).all()
    assert len({row.event_id for row in rows}) == len(rows) == 5


def test_one_sender_at_a_time_per_webhook(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    """While one process holds a webhook's sending lease (a dispatched job), another
    drain sends nothing of it; once the holder is done, the next one may."""
    from maestro.webhooks import delivery

    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    new_model(client, world.project, world.admin.headers)
    relay.relay_outbox(app.state.database)
    assert relay.dispatch(app.state.queue) == 1  # holds the lease for the job it submitted
    assert relay.dispatch(app.state.queue) == 0  # not twice
    assert delivery.drain(app.state.database, app.state.settings, hook["id"]) == []
    assert receiver.requests == []
    with app.state.database.session(write=False) as session:
        [job] = session.scalars(select(Job).where(Job.kind == relay.DELIVER)).all()
    app.state.queue.execute(job.id)
    assert len(receiver.wait_for(1)) == 1
    assert delivery.drain(app.state.database, app.state.settings, hook["id"]) == []
    assert len(receiver.requests) == 1
