"""A failing receiver gets its retries on the Standard Webhooks schedule (the clock is
moved, never slept), ends in the dead letter, and is redelivered; Retry-After is
honoured; 410 Gone and five days of failure disable the webhook."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from maestro.db import utcnow
from maestro.events.models import OutboxEvent
from maestro.identity.models import AuditLog
from maestro.jobs.maintenance import CLEANUP
from maestro.jobs.models import Job, JobStatus
from maestro.webhooks import delivery, relay
from maestro.webhooks.delivery import JITTER, SCHEDULE, ManualClock
from maestro.webhooks.models import Webhook, WebhookDelivery
from tests.factories import World
from tests.registry.conftest import new_model
from tests.webhooks.conftest import Answer, Receiver, create_webhook

FAILING = Answer(500, b"receiver broken")


def delivery_row(app: FastAPI, webhook_id: str) -> WebhookDelivery:
    with app.state.database.session(write=False) as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.created_at)
        ).all()
    return rows[-1]


def webhook_row(app: FastAPI, webhook_id: str) -> Webhook:
    with app.state.database.session(write=False) as session:
        found = session.get(Webhook, webhook_id)
        assert found is not None
        return found


def signed_with(secret: str, request_headers: dict[str, str], body: bytes) -> bool:
    """Byte-equality with the reference library's signature for the sent id and timestamp
    (the moved clock puts timestamps outside ``verify``'s five-minute tolerance)."""
    timestamp = datetime.fromtimestamp(int(request_headers["webhook-timestamp"]), UTC)
    expected = StandardWebhook(secret).sign(request_headers["webhook-id"], timestamp, body)
    return expected in request_headers["webhook-signature"].split(" ")


class TestSchedule:
    def test_retries_follow_the_schedule_then_the_dead_letter_then_a_redelivery(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        receiver.answer(FAILING)
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        new_model(client, world.project, world.admin.headers)
        clock = ManualClock()
        relay.relay_outbox(app.state.database, clock.now())
        database, settings = app.state.database, app.state.settings

        for attempt, wait in enumerate(SCHEDULE, start=1):
            if wait:
                row = delivery_row(app, hook["id"])
                assert row.status == "pending"
                due_in = (row.next_attempt_at - clock.now()).total_seconds()
                assert wait * (1 - JITTER) <= due_in <= wait * (1 + JITTER) + 1e-6
                clock.advance(due_in - 1)
                assert delivery.drain(database, settings, hook["id"], clock=clock) == []  # not yet due
                clock.advance(1)
            [outcome] = delivery.drain(database, settings, hook["id"], clock=clock)
            assert outcome.response_status == 500
            assert len(receiver.requests) == attempt

        row = delivery_row(app, hook["id"])
        assert (row.status, row.attempts, row.next_attempt_at) == ("failed", len(SCHEDULE), None)
        assert row.response_body == "receiver broken"
        clock.advance(7 * 86400)
        assert delivery.drain(database, settings, hook["id"], clock=clock) == []  # the dead letter stays
        ids = {request.headers["webhook-id"] for request in receiver.requests}
        bodies = {request.body for request in receiver.requests}
        assert len(ids) == len(bodies) == 1  # the same event, the same bytes, every time
        assert all(signed_with(hook["secret"], r.headers, r.body) for r in receiver.requests)

        dead = client.get(
            f"/api/v1/webhooks/{hook['id']}/deliveries",
            params={"status": "failed"},
            headers=world.admin.headers,
        ).json()["data"]
        assert [item["id"] for item in dead] == [row.id]

        receiver.answer(Answer(204, b""))
        redelivered = client.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{row.id}/redeliver", headers=world.admin.headers
        )
        assert redelivered.status_code == 202, redelivered.text
        assert redelivered.json()["data"]["status"] == "pending"
        clock = ManualClock()  # the redelivery is due at the real now
        [outcome] = delivery.drain(database, settings, hook["id"], clock=clock)
        assert outcome.status == "succeeded"
        last = receiver.requests[-1]
        assert last.headers["webhook-id"] in ids
        assert delivery_row(app, hook["id"]).status == "succeeded"

    def test_retry_after_is_honoured(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        receiver.answer(Answer(503, b"busy", {"Retry-After": "3600"}), Answer())
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        new_model(client, world.project, world.admin.headers)
        clock = ManualClock()
        relay.relay_outbox(app.state.database, clock.now())
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        row = delivery_row(app, hook["id"])
        assert row.next_attempt_at is not None
        assert row.next_attempt_at - clock.now() >= timedelta(seconds=3600)
        clock.advance(60)
        assert delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock) == []
        clock.advance(3600)
        [outcome] = delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        assert outcome.status == "succeeded"

    def test_a_redirect_is_a_failure_and_never_followed(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        receiver.answer(Answer(302, b"", {"Location": receiver.url + "/elsewhere"}))
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        new_model(client, world.project, world.admin.headers)
        clock = ManualClock()
        relay.relay_outbox(app.state.database, clock.now())
        [outcome] = delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        assert (outcome.status, outcome.response_status) == ("pending", 302)
        assert [request.path for request in receiver.requests] == ["/hooks/maestro"]


class TestDisabling:
    def test_410_gone_disables_the_webhook_at_once(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        receiver.answer(Answer(410, b"gone"))
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        new_model(client, world.project, world.admin.headers, name="One")
        new_model(client, world.project, world.admin.headers, name="Two")
        clock = ManualClock()
        relay.relay_outbox(app.state.database, clock.now())
        outcomes = delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        assert [(o.status, o.response_status) for o in outcomes] == [("failed", 410)]  # the second waits
        found = webhook_row(app, hook["id"])
        assert not found.active
        assert found.disabled_reason == "the receiver answered 410 Gone"
        self.assert_disabling_recorded(app, hook["id"])
        shown = client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=world.admin.headers).json()
        assert shown["data"][0]["active"] is False

        receiver.answer(Answer())
        enabled = client.put(
            f"/api/v1/webhooks/{hook['id']}", json={"active": True}, headers=world.admin.headers
        )
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["data"]["disabled_reason"] is None
        [outcome] = delivery.drain(app.state.database, app.state.settings, hook["id"], clock=ManualClock())
        assert outcome.status == "succeeded"
        assert json.loads(receiver.requests[-1].body)["data"]["name"] == "Two"

    def test_five_days_of_failures_disable_the_webhook(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        receiver.answer(FAILING)
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        new_model(client, world.project, world.admin.headers, name="Monday")
        clock = ManualClock()
        relay.relay_outbox(app.state.database, clock.now())
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        clock.advance(4 * 86400)
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        assert webhook_row(app, hook["id"]).active  # four days: still trying
        new_model(client, world.project, world.admin.headers, name="Saturday")
        clock.advance(86400)
        relay.relay_outbox(app.state.database, clock.now())
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        found = webhook_row(app, hook["id"])
        assert not found.active
        assert found.disabled_reason == "every delivery failed for five days"
        self.assert_disabling_recorded(app, hook["id"])

        recovered = client.post(
            f"/api/v1/webhooks/{hook['id']}/recover",
            json={"since": "2000-01-01T00:00:00Z"},
            headers=world.admin.headers,
        )
        assert recovered.status_code == 202, recovered.text

    @staticmethod
    def assert_disabling_recorded(app: FastAPI, webhook_id: str) -> None:
        with app.state.database.session(write=False) as session:
            disabled = session.scalars(
                select(OutboxEvent).where(OutboxEvent.type == "webhook.disabled")
            ).all()
            audit = session.scalars(
                select(AuditLog).where(
                    AuditLog.action == "webhooks:disable_webhook", AuditLog.resource_id == webhook_id
                )
            ).all()
        assert [event.payload["webhook_id"] for event in disabled] == [webhook_id]
        assert len(audit) == 1 and audit[0].actor_type == "system"


def test_recover_sends_again_what_failed_since_a_time(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    receiver.answer(FAILING)
    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    new_model(client, world.project, world.admin.headers)
    clock = ManualClock()
    relay.relay_outbox(app.state.database, clock.now())
    for wait in SCHEDULE:
        clock.advance(wait * (1 + JITTER) + 1)
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
    assert delivery_row(app, hook["id"]).status == "failed"

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    none = client.post(
        f"/api/v1/webhooks/{hook['id']}/recover", json={"since": later}, headers=world.admin.headers
    )
    assert none.json()["data"] == {"requeued": 0}
    earlier = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    some = client.post(
        f"/api/v1/webhooks/{hook['id']}/recover", json={"since": earlier}, headers=world.admin.headers
    )
    assert some.status_code == 202 and some.json()["data"] == {"requeued": 1}

    receiver.answer(Answer())
    [outcome] = delivery.drain(app.state.database, app.state.settings, hook["id"], clock=ManualClock())
    assert outcome.status == "succeeded"


def test_the_cleanup_job_deletes_old_finished_deliveries_and_relayed_events(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the retention period, relayed events and finished deliveries go; a delivery
    still waiting for its next attempt stays, whatever its age."""
    receiver.answer(FAILING)
    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    new_model(client, world.project, world.admin.headers)
    clock = ManualClock()
    relay.relay_outbox(app.state.database, clock.now())
    database, settings, queue = app.state.database, app.state.settings, app.state.queue
    [outcome] = delivery.drain(database, settings, hook["id"], clock=clock)
    assert outcome.status == "pending"
    event_id = delivery_row(app, hook["id"]).event_id

    def cleanup(days_later: int) -> dict[str, Any]:
        later = utcnow() + timedelta(days=days_later)
        monkeypatch.setattr(relay, "utcnow", lambda: later)
        with database.session() as session:
            job_id = queue.submit(session, CLEANUP).id
        queue.execute(job_id)
        with database.session(write=False) as session:
            job = session.get(Job, job_id)
            assert job is not None and job.status == JobStatus.succeeded, job and job.error
            return dict(job.result or {})

    def outbox_ids() -> set[str]:
        with database.session(write=False) as session:
            return set(session.scalars(select(OutboxEvent.id)))

    relayed = len(outbox_ids())
    assert cleanup(settings.webhook_delivery_retention_days - 1)["webhook_records_removed"] == 0
    assert cleanup(settings.webhook_delivery_retention_days + 1)["webhook_records_removed"] == relayed
    assert event_id not in outbox_ids()
    assert delivery_row(app, hook["id"]).status == "pending"  # still to be sent: kept

    receiver.answer(Answer(204, b""))
    clock.advance(3600)
    [outcome] = delivery.drain(database, settings, hook["id"], clock=clock)
    assert outcome.status == "succeeded"
    assert cleanup(settings.webhook_delivery_retention_days + 1)["webhook_records_removed"] == 1
    with database.session(write=False) as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
