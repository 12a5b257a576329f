"""An alert's life, evaluated at times the test chooses: accuracy falls under the
threshold once labels arrive, the rule goes pending, fires after ``for``, exactly one
notification reaches a signed webhook and one an email inbox (real loopback servers), it
is acknowledged, the condition clears and one resolved notification follows; the outbox
holds ``alert.triggered`` and ``alert.resolved``."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from maestro.events.models import OutboxEvent
from tests.alerts.conftest import (
    BASE,
    Mailbox,
    create_channel,
    create_rule,
    deliver,
    evaluate,
    record,
    send_labels,
)
from tests.deployments.platform import Tiny
from tests.factories import World
from tests.monitoring.drifting import deploy_classifier, rows
from tests.webhooks.conftest import Receiver


def _rule(client: TestClient, world: World, rule_id: str) -> dict:
    response = client.get(f"/api/v1/alert-rules/{rule_id}", headers=world.viewer.headers)
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def test_accuracy_alert_fires_after_for_notifies_once_and_resolves(
    app: FastAPI,
    client: TestClient,
    world: World,
    tiny: Tiny,
    receiver: Receiver,
    mailbox: Mailbox,
) -> None:
    live = deploy_classifier(client, world, tiny)
    hook = create_channel(client, world, kind="webhook", url=receiver.url)
    email = create_channel(client, world, name="Team mail", kind="email", recipients=["oncall@example.com"])
    rule = create_rule(
        client,
        world,
        live["id"],
        alert_type="performance_degradation",
        metric_name="accuracy",
        threshold=0.7,
        operator="less_than",
        severity="high",
        notification_channels=[hook["id"], email["id"]],
        window=3600,
        **{"for": 300},
        repeat_interval=3600,
        min_samples=20,
    )
    assert (rule["state"], rule["for"], rule["window"]) == ("normal", 300, 3600)

    # No labels yet: too few samples is no data, and nothing fires.
    wrong = record(app, world, live, BASE, rows(40, seed=1))
    now = BASE + timedelta(minutes=5)
    assert evaluate(app, now) == 1
    assert _rule(client, world, rule["id"])["state"] == "no_data"

    # Labels arrive, every one of them contradicting the model: accuracy 0.
    send_labels(client, world, live["id"], *wrong, right=False)
    now += timedelta(minutes=1)
    evaluate(app, now)
    shown = _rule(client, world, rule["id"])
    assert (shown["state"], shown["last_value"]) == ("pending", 0.0)
    now += timedelta(minutes=4)
    evaluate(app, now)
    assert _rule(client, world, rule["id"])["state"] == "pending"  # 4 of the 5 minutes of `for`
    assert evaluate(app, now) == 0  # evaluated once per interval, however often asked
    now += timedelta(minutes=1)
    evaluate(app, now)
    shown = _rule(client, world, rule["id"])
    assert shown["state"] == "firing"
    alert_id = shown["current_alert_id"]

    assert deliver(app) == 2
    [sent] = receiver.wait_for(1)
    data = StandardWebhook(hook["secret"]).verify(sent.body, sent.headers)
    assert data["type"] == "alert.triggered"
    assert (data["id"], data["organization_id"]) == (sent.headers["webhook-id"], world.org)
    assert data["data"]["alert_id"] == alert_id
    assert data["data"]["value"] == 0.0
    [mail] = mailbox.wait_for(1)
    assert mail["To"] == "oncall@example.com"
    assert "FIRING" in mail["Subject"] and "HIGH" in mail["Subject"] and "accuracy" in mail["Subject"]
    assert f"https://maestro.example.com/api/v1/alerts/{alert_id}" in mail.get_payload(decode=True).decode()

    # Still firing: no reminder before repeat_interval.
    now += timedelta(minutes=1)
    evaluate(app, now)
    assert deliver(app) == 0

    acknowledged = client.put(f"/api/v1/alerts/{alert_id}/acknowledge", headers=world.developer.headers)
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["data"]["acknowledged"] is True

    # Right labels for a larger batch: accuracy 200/240, over the threshold.
    right = record(app, world, live, BASE + timedelta(minutes=1), rows(200, seed=2))
    send_labels(client, world, live["id"], *right, right=True)
    now += timedelta(minutes=1)
    evaluate(app, now)
    shown = _rule(client, world, rule["id"])
    assert (shown["state"], shown["current_alert_id"]) == ("normal", None)
    assert shown["last_value"] == 200 / 240

    assert deliver(app) == 2
    resolved = receiver.wait_for(2)[1]
    assert StandardWebhook(hook["secret"]).verify(resolved.body, resolved.headers)["type"] == "alert.resolved"
    assert "RESOLVED" in mailbox.wait_for(2)[1]["Subject"]
    assert deliver(app) == 0

    detail = client.get(f"/api/v1/alerts/{alert_id}", headers=world.viewer.headers).json()["data"]
    assert detail["status"] == "resolved"
    events = [entry["event"] for entry in detail["timeline"]]
    assert events[:1] == ["triggered"]
    assert events.count("notified") == 4
    assert "acknowledged" in events and "resolved" in events

    with app.state.database.session(write=False) as session:
        types = list(
            session.scalars(
                select(OutboxEvent.type)
                .where(OutboxEvent.type.like("alert.%"))
                .order_by(OutboxEvent.created_at)
            )
        )
    assert types == ["alert.triggered", "alert.resolved"]

    listed = client.get(
        f"/api/v1/organizations/{world.org}/alerts",
        params={"status": "resolved", "severity": "high"},
        headers=world.viewer.headers,
    ).json()
    assert [item["id"] for item in listed["data"]] == [alert_id]
    assert listed["pagination"]["total"] == 1
