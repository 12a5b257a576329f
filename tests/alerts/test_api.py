"""The alerts API: rules refuse unknown quantities with the valid ones listed; another
organisation's channel, rule, alert and silence ids answer 404 exactly like unknown ones;
a channel's secret (a webhook's signing secret, Slack's URL, nothing of email) is shown
once at creation and never again, nor in the audit log or the logs; channels send through
the outbound guard."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.identity.models import AuditLog
from tests.alerts.conftest import BASE, Mailbox, create_channel, create_rule, deliver, evaluate, record
from tests.deployments.platform import Tiny
from tests.factories import World
from tests.monitoring.drifting import deploy_classifier, rows
from tests.webhooks.conftest import Receiver

SLACK_URL = "http://127.0.0.1:9/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"


def _error(response: object) -> dict:
    body = response.json()  # type: ignore[attr-defined]
    assert body["success"] is False
    return dict(body["error"])


class TestRules:
    def test_crud_with_defaults(self, client: TestClient, world: World, tiny: Tiny) -> None:
        live = deploy_classifier(client, world, tiny)
        rule = create_rule(
            client,
            world,
            live["id"],
            alert_type="performance_degradation",
            metric_name="accuracy",
            threshold=0.9,
            operator="less_than",
            severity="high",
        )
        assert rule["id"].startswith("rule_")
        assert (rule["window"], rule["for"], rule["repeat_interval"]) == (3600, 300, 14400)
        assert (rule["enabled"], rule["min_samples"], rule["no_data_fires"]) == (True, 10, False)
        listed = client.get(
            f"/api/v1/deployments/{live['id']}/monitoring/alerts", headers=world.viewer.headers
        ).json()
        assert [item["id"] for item in listed["data"]] == [rule["id"]]
        changed = client.put(
            f"/api/v1/alert-rules/{rule['id']}",
            json={"threshold": 0.8, "for": 0, "metric_name": "drift.amount"},
            headers=world.developer.headers,
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["data"]["threshold"], changed.json()["data"]["for"]) == (0.8, 0)
        viewer = client.put(
            f"/api/v1/alert-rules/{rule['id']}", json={"threshold": 0.1}, headers=world.viewer.headers
        )
        assert viewer.status_code == 403
        deleted = client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=world.developer.headers)
        assert deleted.status_code == 204
        assert (
            client.get(f"/api/v1/alert-rules/{rule['id']}", headers=world.viewer.headers).status_code == 404
        )

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"metric_name": "accuracyy"}, "metric_name"),
            ({"operator": "below"}, "operator"),
            ({"threshold": "NaN"}, "threshold"),
            ({"window": 5}, "window"),
            ({"notification_channels": ["chan_unknown"]}, "notification_channels"),
            ({"unexpected": 1}, "unexpected"),
        ],
    )
    def test_hostile_bodies_are_refused_and_change_nothing(
        self, client: TestClient, world: World, tiny: Tiny, body: dict, field: str
    ) -> None:
        live = deploy_classifier(client, world, tiny)
        base = {"metric_name": "accuracy", "threshold": 0.9, "operator": "less_than"}
        response = client.post(
            f"/api/v1/deployments/{live['id']}/monitoring/alerts",
            json={**base, **body},
            headers=world.developer.headers,
        )
        assert response.status_code == 422, response.text
        error = _error(response)
        assert error["code"] == "VALIDATION_ERROR"
        assert any(field in str(detail["field"]) for detail in error["details"]), error
        if field == "metric_name":
            for known in ("accuracy", "error_rate", "latency_p95", "throughput_rps", "dataset_drift_share"):
                assert known in error["message"]
        listed = client.get(
            f"/api/v1/deployments/{live['id']}/monitoring/alerts", headers=world.viewer.headers
        ).json()
        assert listed["data"] == []


class TestTenancy:
    def test_another_organisations_ids_answer_like_unknown_ones(
        self, app: FastAPI, client: TestClient, world: World, tiny: Tiny, receiver: Receiver
    ) -> None:
        live = deploy_classifier(client, world, tiny)
        channel = create_channel(client, world, kind="webhook", url=receiver.url)
        rule = create_rule(
            client,
            world,
            live["id"],
            metric_name="request_count",
            threshold=0,
            operator="greater_than",
            window=60,
            min_samples=0,
            notification_channels=[channel["id"]],
            **{"for": 0},
        )
        record(app, world, live, BASE, rows(1, seed=1))
        evaluate(app, BASE + timedelta(minutes=1))
        [alert] = client.get(f"/api/v1/organizations/{world.org}/alerts", headers=world.admin.headers).json()[
            "data"
        ]
        silence = client.post(
            f"/api/v1/organizations/{world.org}/alert-silences",
            json={
                "deployment_id": live["id"],
                "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            },
            headers=world.admin.headers,
        ).json()["data"]
        outsider = world.outsider.headers
        calls = [
            ("GET", "/api/v1/alert-rules/{}", rule["id"], "rule_00000000000000000000000000", None),
            (
                "PUT",
                "/api/v1/alert-rules/{}",
                rule["id"],
                "rule_00000000000000000000000000",
                {"threshold": 1},
            ),
            ("DELETE", "/api/v1/alert-rules/{}", rule["id"], "rule_00000000000000000000000000", None),
            ("GET", "/api/v1/alerts/{}", alert["id"], "alert_00000000000000000000000000", None),
            ("PUT", "/api/v1/alerts/{}/acknowledge", alert["id"], "alert_00000000000000000000000000", None),
            ("PUT", "/api/v1/alerts/{}/resolve", alert["id"], "alert_00000000000000000000000000", None),
            (
                "PUT",
                "/api/v1/notification-channels/{}",
                channel["id"],
                "chan_00000000000000000000000000",
                {"name": "x"},
            ),
            (
                "DELETE",
                "/api/v1/notification-channels/{}",
                channel["id"],
                "chan_00000000000000000000000000",
                None,
            ),
            (
                "POST",
                "/api/v1/notification-channels/{}/test",
                channel["id"],
                "chan_00000000000000000000000000",
                None,
            ),
            (
                "GET",
                "/api/v1/deployments/{}/monitoring/alerts",
                live["id"],
                "deploy_00000000000000000000000000",
                None,
            ),
        ]
        for method, path, real, unknown, body in calls:
            theirs = client.request(method, path.format(real), json=body, headers=outsider)
            missing = client.request(method, path.format(unknown), json=body, headers=outsider)
            assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
            assert _error(theirs)["message"] == _error(missing)["message"]
        for what in ("alerts", "alert-silences", "notification-channels"):
            assert (
                client.get(f"/api/v1/organizations/{world.org}/{what}", headers=outsider).status_code == 404
            )
        gone = client.delete(
            f"/api/v1/organizations/{world.other_org}/alert-silences/{silence['id']}", headers=outsider
        )
        assert gone.status_code == 404
        # Nothing changed.
        assert (
            client.get(f"/api/v1/alert-rules/{rule['id']}", headers=world.viewer.headers).status_code == 200
        )
        shown = client.get(f"/api/v1/alerts/{alert['id']}", headers=world.viewer.headers).json()["data"]
        assert (shown["status"], shown["acknowledged"]) == ("firing", False)
        assert receiver.requests == []


class TestChannels:
    def test_secrets_are_shown_once_and_never_again(
        self,
        app: FastAPI,
        client: TestClient,
        world: World,
        receiver: Receiver,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        hook = create_channel(
            client, world, kind="webhook", url=receiver.url, secret="a-secret-of-my-own-123"
        )
        assert hook["secret"] == "a-secret-of-my-own-123"
        slack = create_channel(client, world, name="Slack", kind="slack", url=SLACK_URL)
        assert slack["secret"] is None and slack["destination"] == "hooks.slack.com"
        rotated = client.put(
            f"/api/v1/notification-channels/{hook['id']}",
            json={"rotate_secret": True},
            headers=world.admin.headers,
        ).json()["data"]
        assert rotated["secret"].startswith("whsec_")
        listed = client.get(
            f"/api/v1/organizations/{world.org}/notification-channels", headers=world.admin.headers
        )
        assert listed.status_code == 200
        assert {item["id"] for item in listed.json()["data"]} == {hook["id"], slack["id"]}
        with app.state.database.session(write=False) as session:
            audit = json.dumps([row.details for row in session.scalars(select(AuditLog))], default=str)
        for secret in ("a-secret-of-my-own-123", rotated["secret"], "XXXXXXXXXXXXXXXXXXXXXXXX", "/services/"):
            assert secret not in listed.text
            assert secret not in audit
            assert secret not in caplog.text
        # Members other than admins see no channels.
        assert (
            client.get(
                f"/api/v1/organizations/{world.org}/notification-channels", headers=world.developer.headers
            ).status_code
            == 403
        )

    @pytest.mark.parametrize(
        "body",
        [
            {"kind": "webhook", "url": "http://169.254.169.254/latest/meta-data"},
            {"kind": "webhook", "url": "http://10.0.0.1/hook"},
            {"kind": "slack", "url": "ftp://hooks.slack.com/services/x"},
            {"kind": "email", "recipients": ["not an address"]},
            {"kind": "email"},
            {"kind": "webhook"},
            {"kind": "webhook", "url": "https://93.184.215.14/hook", "secret": "whsec_not-base64!"},
            {"kind": "slack", "url": "https://93.184.215.14/hook", "secret": "a-secret-of-my-own-123"},
        ],
    )
    def test_bad_destinations_are_refused(self, client: TestClient, world: World, body: dict) -> None:
        response = client.post(
            f"/api/v1/organizations/{world.org}/notification-channels",
            json={"name": "Bad", **body},
            headers=world.admin.headers,
        )
        assert response.status_code == 422, response.text
        assert _error(response)["code"] == "VALIDATION_ERROR"
        listed = client.get(
            f"/api/v1/organizations/{world.org}/notification-channels", headers=world.admin.headers
        )
        assert listed.json()["data"] == []

    def test_test_sends_to_each_kind(
        self, client: TestClient, world: World, receiver: Receiver, mailbox: Mailbox
    ) -> None:
        hook = create_channel(client, world, kind="webhook", url=receiver.url)
        slack = create_channel(client, world, name="Slack", kind="slack", url=receiver.url)
        email = create_channel(client, world, name="Mail", kind="email", recipients=["a@example.com"])
        for channel in (hook, slack, email):
            response = client.post(
                f"/api/v1/notification-channels/{channel['id']}/test", headers=world.admin.headers
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"]["delivered"] is True, response.text
        signed, posted = receiver.wait_for(2)
        assert json.loads(signed.body)["type"] == "alert.test"
        message = json.loads(posted.body)
        assert set(message) == {"text", "blocks"} and "TEST" in message["text"]
        assert "TEST" in mailbox.wait_for(1)[0]["Subject"]

    def test_a_failed_send_is_retried_by_a_later_job(
        self, app: FastAPI, client: TestClient, world: World, tiny: Tiny, receiver: Receiver
    ) -> None:
        from tests.webhooks.conftest import Answer

        receiver.answer(Answer(status=503), Answer(status=200))
        live = deploy_classifier(client, world, tiny)
        channel = create_channel(client, world, kind="webhook", url=receiver.url)
        create_rule(
            client,
            world,
            live["id"],
            metric_name="request_count",
            threshold=0,
            operator="greater_than",
            window=60,
            min_samples=0,
            notification_channels=[channel["id"]],
            **{"for": 0},
        )
        record(app, world, live, BASE, rows(1, seed=1))
        evaluate(app, BASE + timedelta(minutes=1))
        assert deliver(app) == 1
        assert deliver(app) == 0  # the retry waits for its time
        from maestro.alerts import notifications

        notifications.submit_due(app.state.queue, datetime.now(UTC) + timedelta(minutes=1))
        from maestro.jobs.models import Job, JobStatus

        with app.state.database.session(write=False) as session:
            [job_id] = session.scalars(
                select(Job.id).where(Job.kind == notifications.NOTIFY, Job.status == JobStatus.queued)
            )
        app.state.queue.execute(job_id)
        first, second = receiver.wait_for(2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the receiver's idempotency key


def test_a_private_projects_alerts_are_for_its_members(
    app: FastAPI, client: TestClient, world: World
) -> None:
    from maestro.alerts.models import Alert

    with app.state.database.session() as session:
        alert = Alert(
            organization_id=world.org,
            project_id=world.private,
            deployment_id="deploy_private",
            rule_name="Private",
            metric_name="accuracy",
            operator="less_than",
            threshold=0.9,
            severity="low",
            value=0.5,
            timeline=[],
        )
        session.add(alert)
        session.flush()
        alert_id = alert.id
    path = f"/api/v1/organizations/{world.org}/alerts"
    assert client.get(path, headers=world.viewer.headers).json()["data"] == []
    assert [item["id"] for item in client.get(path, headers=world.admin.headers).json()["data"]] == [alert_id]
    hidden = client.get(f"/api/v1/alerts/{alert_id}", headers=world.developer.headers)
    unknown = client.get("/api/v1/alerts/alert_00000000000000000000000000", headers=world.developer.headers)
    assert hidden.status_code == unknown.status_code == 404
    assert _error(hidden)["message"] == _error(unknown)["message"]
    refused = client.put(f"/api/v1/alerts/{alert_id}/acknowledge", headers=world.developer.headers)
    assert refused.status_code == 404
    assert client.get(f"/api/v1/alerts/{alert_id}", headers=world.admin.headers).status_code == 200
