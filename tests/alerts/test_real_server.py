"""An alert's life against a real ``maestro serve`` with its own job consumer: a
classifier answers traffic, labels contradicting it arrive, explicit evaluations at
chosen times take the rule to pending and, after ``for``, to firing; the server's jobs
send exactly one signed notification to a loopback webhook receiver and one email to a
loopback SMTP server; the alert is acknowledged, right labels for more traffic clear the
condition, and one resolved notification follows on each channel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from maestro.alerts import evaluator
from maestro.alerts.models import AlertNotification
from maestro.config import Settings
from tests.alerts.conftest import Mailbox, minute
from tests.conftest import RunningProcess, wait_until
from tests.deployments.platform import Tiny
from tests.factories import World
from tests.monitoring.drifting import data_of, deploy_classifier, rows, send_over_http
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.slow

ROWS_PER_REQUEST = 20
FLIP = {"fraud": "legit", "legit": "fraud"}


def _label(
    http: httpx.Client, world: World, deployment_id: str, served: list[tuple[str, list[str]]], *, right: bool
) -> None:
    """Labels for every served row, sent again until the server has logged every prediction."""
    items = [
        {"prediction_id": prediction_id, "row": row, "actual": value if right else FLIP[value]}
        for prediction_id, predicted in served
        for row, value in enumerate(predicted)
    ]

    def matched() -> bool:
        answer = data_of(
            http.post(
                f"/api/v1/deployments/{deployment_id}/monitoring/ground-truth",
                json={"items": items},
                headers=world.developer.headers,
            )
        )
        return bool(answer["matched"] == len(items))

    wait_until(matched, timeout=60, interval=0.3)


def test_an_alerts_life_on_a_real_server(
    app: FastAPI,
    client: TestClient,
    world: World,
    tiny: Tiny,
    settings: Settings,
    serve: Callable[..., RunningProcess],
    receiver: Receiver,
    mailbox: Mailbox,
) -> None:
    live = deploy_classifier(client, world, tiny)
    server_settings = settings.model_copy(
        update={"run_worker_in_process": True, "prediction_log_flush_seconds": 0.3}
    )
    server = serve(server_settings)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            hook = data_of(
                http.post(
                    f"/api/v1/organizations/{world.org}/notification-channels",
                    json={"name": "Receiver", "kind": "webhook", "url": receiver.url},
                    headers=world.admin.headers,
                ),
                201,
            )
            email = data_of(
                http.post(
                    f"/api/v1/organizations/{world.org}/notification-channels",
                    json={"name": "Mail", "kind": "email", "recipients": ["oncall@example.com"]},
                    headers=world.admin.headers,
                ),
                201,
            )
            rule = data_of(
                http.post(
                    f"/api/v1/deployments/{live['id']}/monitoring/alerts",
                    json={
                        "alert_type": "performance_degradation",
                        "metric_name": "accuracy",
                        "threshold": 0.7,
                        "operator": "less_than",
                        "severity": "critical",
                        "notification_channels": [hook["id"], email["id"]],
                        "window": 3600,
                        "for": 300,
                        "min_samples": 20,
                    },
                    headers=world.developer.headers,
                ),
                201,
            )

            def state() -> dict[str, Any]:
                return dict(
                    data_of(http.get(f"/api/v1/alert-rules/{rule['id']}", headers=world.viewer.headers))
                )

            def evaluate(at: datetime) -> None:
                assert evaluator.evaluate_all(app.state.database, server_settings, at) == 1

            wrong = send_over_http(http, world.key_headers, rows(40, seed=1), ROWS_PER_REQUEST)
            _label(http, world, live["id"], wrong, right=False)
            # Evaluations as of minutes to come: windows closed after the traffic.
            now = minute(datetime.now(UTC)) + timedelta(minutes=2)
            evaluate(now)
            assert state()["state"] == "pending"
            evaluate(now + timedelta(minutes=3))
            assert state()["state"] == "pending"
            evaluate(now + timedelta(minutes=5))
            firing = state()
            assert (firing["state"], firing["last_value"]) == ("firing", 0.0)
            alert_id = firing["current_alert_id"]

            [signed] = receiver.wait_for(1)
            data = StandardWebhook(hook["secret"]).verify(signed.body, signed.headers)
            assert (data["type"], data["data"]["alert_id"]) == ("alert.triggered", alert_id)
            [mail] = mailbox.wait_for(1)
            assert "FIRING" in mail["Subject"] and "CRITICAL" in mail["Subject"]

            data_of(http.put(f"/api/v1/alerts/{alert_id}/acknowledge", headers=world.developer.headers))
            evaluate(now + timedelta(minutes=6))  # still firing, acknowledged: nothing sent

            right = send_over_http(http, world.key_headers, rows(200, seed=2), ROWS_PER_REQUEST)
            _label(http, world, live["id"], right, right=True)
            evaluate(now + timedelta(minutes=7))
            assert state()["state"] == "normal"

            resolved = receiver.wait_for(2)[1]
            assert StandardWebhook(hook["secret"]).verify(resolved.body, resolved.headers)["type"] == (
                "alert.resolved"
            )
            assert "RESOLVED" in mailbox.wait_for(2)[1]["Subject"]

            def all_sent() -> bool:
                with app.state.database.session(write=False) as session:
                    statuses = list(session.scalars(select(AlertNotification.status)))
                return statuses == ["sent"] * 4

            wait_until(all_sent, timeout=60, interval=0.2)
            assert len(receiver.requests) == 2
            assert len(mailbox.messages) == 2
            detail = data_of(http.get(f"/api/v1/alerts/{alert_id}", headers=world.viewer.headers))
            assert detail["status"] == "resolved" and detail["acknowledged"] is True
    finally:
        server.stop()
