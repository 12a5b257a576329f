"""No notification storm: a quantity over and under its threshold at every evaluation
fires and resolves each time (each firing is a new alert), but notifies at most once per
``repeat_interval``; reminders come after it, never while acknowledged or silenced."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.alerts.conftest import BASE, create_channel, create_rule, deliver, evaluate, record
from tests.deployments.platform import Tiny
from tests.factories import World
from tests.monitoring.drifting import deploy_classifier, rows
from tests.webhooks.conftest import Receiver


def _traffic_rule(client: TestClient, world: World, deployment_id: str, channel: str, **body: object) -> dict:
    """Fires when the last closed minute answered any request."""
    return create_rule(
        client,
        world,
        deployment_id,
        alert_type="traffic",
        metric_name="request_count",
        threshold=0,
        operator="greater_than",
        notification_channels=[channel],
        window=60,
        **{"for": 0},
        min_samples=0,
        **body,
    )


def _alerts(client: TestClient, world: World) -> list[dict]:
    response = client.get(
        f"/api/v1/organizations/{world.org}/alerts", params={"limit": 100}, headers=world.viewer.headers
    )
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_a_flapping_quantity_sends_no_storm(
    app: FastAPI, client: TestClient, world: World, tiny: Tiny, receiver: Receiver
) -> None:
    live = deploy_classifier(client, world, tiny)
    channel = create_channel(client, world, kind="webhook", url=receiver.url)
    _traffic_rule(client, world, live["id"], channel["id"], repeat_interval=3600)
    for step in range(0, 20, 2):  # traffic in every other minute
        record(app, world, live, BASE + timedelta(minutes=step), rows(1, seed=step))
    for step in range(1, 21):  # each evaluation sees the minute just closed
        evaluate(app, BASE + timedelta(minutes=step))
        deliver(app)
    alerts = _alerts(client, world)
    assert len(alerts) == 10  # fired and resolved ten times
    assert {alert["status"] for alert in alerts} == {"resolved"}
    kinds = [request.headers.get("webhook-id") for request in receiver.requests]
    assert len(kinds) == 2  # the first firing and its resolution, nothing else within the hour
    assert len(set(kinds)) == 2


def test_reminders_after_repeat_interval_none_when_acknowledged_or_silenced(
    app: FastAPI, client: TestClient, world: World, tiny: Tiny, receiver: Receiver
) -> None:
    live = deploy_classifier(client, world, tiny)
    channel = create_channel(client, world, kind="webhook", url=receiver.url)
    rule = _traffic_rule(client, world, live["id"], channel["id"], repeat_interval=600)
    for step in range(0, 60):
        record(app, world, live, BASE - timedelta(minutes=60) + timedelta(minutes=step), rows(1, seed=step))
    start = BASE - timedelta(minutes=59)
    evaluate(app, start)
    deliver(app)
    assert len(receiver.requests) == 1  # fired
    evaluate(app, start + timedelta(minutes=5))
    deliver(app)
    assert len(receiver.requests) == 1  # within repeat_interval
    evaluate(app, start + timedelta(minutes=11))
    deliver(app)
    assert len(receiver.requests) == 2  # one reminder

    silence = client.post(
        f"/api/v1/organizations/{world.org}/alert-silences",
        json={
            "rule_id": rule["id"],
            "ends_at": (BASE + timedelta(days=1)).isoformat(),
            "reason": "maintenance",
        },
        headers=world.developer.headers,
    )
    assert silence.status_code == 201, silence.text
    evaluate(app, start + timedelta(minutes=22))
    deliver(app)
    assert len(receiver.requests) == 2  # silenced
    removed = client.delete(
        f"/api/v1/organizations/{world.org}/alert-silences/{silence.json()['data']['id']}",
        headers=world.developer.headers,
    )
    assert removed.status_code == 204, removed.text

    [alert] = _alerts(client, world)
    acknowledged = client.put(f"/api/v1/alerts/{alert['id']}/acknowledge", headers=world.developer.headers)
    assert acknowledged.status_code == 200, acknowledged.text
    evaluate(app, start + timedelta(minutes=40))
    deliver(app)
    assert len(receiver.requests) == 2  # acknowledged: no reminder

    resolved = client.put(f"/api/v1/alerts/{alert['id']}/resolve", headers=world.developer.headers)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["data"]["status"] == "resolved"
    shown = client.get(f"/api/v1/alert-rules/{rule['id']}", headers=world.viewer.headers).json()["data"]
    assert (shown["state"], shown["current_alert_id"]) == ("normal", None)


def test_deleting_a_rule_closes_its_open_alert(
    app: FastAPI, client: TestClient, world: World, tiny: Tiny, receiver: Receiver
) -> None:
    live = deploy_classifier(client, world, tiny)
    channel = create_channel(client, world, kind="webhook", url=receiver.url)
    rule = _traffic_rule(client, world, live["id"], channel["id"])
    record(app, world, live, BASE, rows(1, seed=1))
    evaluate(app, BASE + timedelta(minutes=1))
    [alert] = _alerts(client, world)
    assert alert["status"] == "firing"
    deleted = client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=world.developer.headers)
    assert deleted.status_code == 204, deleted.text
    shown = client.get(f"/api/v1/alerts/{alert['id']}", headers=world.viewer.headers).json()["data"]
    assert (shown["status"], shown["rule_id"]) == ("resolved", None)
    assert evaluate(app, BASE + timedelta(minutes=2)) == 0
