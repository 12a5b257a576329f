"""Managing webhooks: who may, what another organisation sees (nothing: 404 like an
unknown id), secrets shown once and never again (responses, audit log, logs), rotation
with both secrets signing for a day, and the event catalogue."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from maestro.identity.models import AuditLog
from maestro.webhooks import delivery, relay
from maestro.webhooks.catalogue import EVENT_TYPES
from maestro.webhooks.delivery import ManualClock
from maestro.webhooks.models import Webhook
from tests.factories import World
from tests.registry.conftest import new_model
from tests.webhooks.conftest import Receiver, create_webhook

GIVEN_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="


class TestCreate:
    def test_the_spec_body_creates_a_webhook_with_its_secret_shown_once(
        self, client: TestClient, world: World
    ) -> None:
        response = client.post(
            f"/api/v1/organizations/{world.org}/webhooks",
            json={
                "name": "Deployment Notifications",
                "url": "https://example.com/webhooks/mlops",
                "events": ["deployment.created", "deployment.updated", "alert.triggered"],
                "secret": "webhook_secret_123",
            },
            headers=world.admin.headers,
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert data["id"].startswith("hook_")
        assert data["secret"] == "webhook_secret_123"
        assert data["active"] is True
        assert data["events"] == ["deployment.created", "deployment.updated", "alert.triggered"]

    def test_a_secret_is_generated_when_none_is_given(self, client: TestClient, world: World) -> None:
        data = create_webhook(
            client, world.org, world.admin.headers, "https://example.com/h", ["model.created"]
        )
        assert data["secret"].startswith("whsec_")
        StandardWebhook(data["secret"])  # usable by the reference library as it is

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"events": ["model.deleted"]}, "events"),
            ({"events": []}, "events"),
            ({"events": ["webhook.test"]}, "events"),
            ({"secret": "short"}, "secret"),
            ({"secret": "whsec_!!notbase64!!!!!!!!"}, "secret"),
            ({"name": ""}, "name"),
            ({"organization_id": "org_x"}, "organization_id"),
        ],
    )
    def test_invalid_bodies_are_refused_and_change_nothing(
        self, client: TestClient, world: World, body: dict, field: str
    ) -> None:
        full = {"name": "n", "url": "https://example.com/h", "events": ["model.created"], **body}
        response = client.post(
            f"/api/v1/organizations/{world.org}/webhooks", json=full, headers=world.admin.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert any(detail["field"].endswith(field) for detail in response.json()["error"]["details"])
        listed = client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=world.admin.headers).json()
        assert listed["data"] == []


class TestAccess:
    def test_only_admins_manage_webhooks(self, client: TestClient, world: World) -> None:
        hook = create_webhook(
            client, world.org, world.admin.headers, "https://example.com/h", ["model.created"]
        )
        for actor in (world.developer, world.viewer):
            assert (
                client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=actor.headers).status_code
                == 403
            )
            assert (
                client.put(
                    f"/api/v1/webhooks/{hook['id']}", json={"name": "x"}, headers=actor.headers
                ).status_code
                == 403
            )
            assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=actor.headers).status_code == 403
        assert client.get(f"/api/v1/organizations/{world.org}/webhooks").status_code == 401

    def test_another_organisations_webhook_answers_like_an_unknown_id(
        self, client: TestClient, world: World
    ) -> None:
        hook = create_webhook(
            client, world.org, world.admin.headers, "https://example.com/h", ["model.created"]
        )
        outsider = world.outsider.headers
        for method, suffix, body in (
            ("PUT", "", {"name": "mine now"}),
            ("DELETE", "", None),
            ("POST", "/test", None),
            ("POST", "/rotate-secret", {}),
            ("GET", "/deliveries", None),
            ("POST", "/deliveries/dlv_unknown/redeliver", None),
            ("POST", "/recover", {"since": "2020-01-01T00:00:00Z"}),
        ):
            theirs = client.request(
                method, f"/api/v1/webhooks/{hook['id']}{suffix}", json=body, headers=outsider
            )
            unknown = client.request(
                method, f"/api/v1/webhooks/hook_unknown{suffix}", json=body, headers=outsider
            )
            assert theirs.status_code == unknown.status_code == 404, (method, suffix)
            assert theirs.json()["error"] == unknown.json()["error"]
        assert client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=outsider).status_code == 404
        kept = client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=world.admin.headers).json()[
            "data"
        ]
        assert [item["name"] for item in kept] == ["Receiver"]

    def test_an_api_key_needs_the_webhooks_permission(self, client: TestClient, world: World) -> None:
        reader = {"X-API-Key": world.acme.api_key({"webhooks": ["read"]})}
        writer = {"X-API-Key": world.acme.api_key({"webhooks": ["read", "write"]})}
        body = {"name": "k", "url": "https://example.com/h", "events": ["model.created"]}
        assert (
            client.post(f"/api/v1/organizations/{world.org}/webhooks", json=body, headers=reader).status_code
            == 403
        )
        assert (
            client.post(f"/api/v1/organizations/{world.org}/webhooks", json=body, headers=writer).status_code
            == 201
        )
        assert client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=reader).status_code == 200


class TestSecrets:
    def test_secrets_never_appear_after_creation(
        self,
        app: FastAPI,
        client: TestClient,
        world: World,
        receiver: Receiver,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        hook = create_webhook(
            client, world.org, world.admin.headers, receiver.url, ["model.created"], secret=GIVEN_SECRET
        )
        rotated = client.post(
            f"/api/v1/webhooks/{hook['id']}/rotate-secret", json={}, headers=world.admin.headers
        )
        new_secret = rotated.json()["data"]["secret"]
        new_model(client, world.project, world.admin.headers)
        relay.relay_outbox(app.state.database)
        delivery.drain(app.state.database, app.state.settings, hook["id"])
        client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=world.admin.headers)
        client.put(f"/api/v1/webhooks/{hook['id']}", json={"name": "Renamed"}, headers=world.admin.headers)

        answers = [
            client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=world.admin.headers).text,
            client.put(
                f"/api/v1/webhooks/{hook['id']}",
                json={"events": ["model.created"]},
                headers=world.admin.headers,
            ).text,
            client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=world.admin.headers).text,
            client.get(f"/api/v1/organizations/{world.org}/audit-logs", headers=world.admin.headers).text,
        ]
        with app.state.database.session(write=False) as session:
            audit = json.dumps([row.details for row in session.scalars(select(AuditLog))])
            stored = session.get(Webhook, hook["id"])
            assert stored is not None
            sealed = stored.secret_sealed + (stored.previous_secret_sealed or "")
        for secret in (GIVEN_SECRET, new_secret):
            key_text = secret.removeprefix("whsec_")
            for text in (*answers, audit, caplog.text, sealed):
                assert key_text not in text
        assert '"secret":null' in answers[1]

    def test_a_rotated_secret_signs_beside_the_new_one_for_a_day(
        self, app: FastAPI, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        old = hook["secret"]
        rotated = client.put(
            f"/api/v1/webhooks/{hook['id']}", json={"rotate_secret": True}, headers=world.admin.headers
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["data"]["secret"]
        assert new.startswith("whsec_") and new != old
        new_model(client, world.project, world.admin.headers, name="During")
        relay.relay_outbox(app.state.database)
        delivery.drain(app.state.database, app.state.settings, hook["id"])
        [request] = receiver.wait_for(1)
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (old, new):
            StandardWebhook(secret).verify(request.body, request.headers)

        new_model(client, world.project, world.admin.headers, name="After")
        clock = ManualClock(datetime.now(UTC) + timedelta(hours=24, minutes=1))
        relay.relay_outbox(app.state.database, clock.now())
        delivery.drain(app.state.database, app.state.settings, hook["id"], clock=clock)
        later = receiver.wait_for(2)[1]
        assert len(later.headers["webhook-signature"].split(" ")) == 1
        timestamp = datetime.fromtimestamp(int(later.headers["webhook-timestamp"]), UTC)
        assert later.headers["webhook-signature"] == StandardWebhook(new).sign(
            later.headers["webhook-id"], timestamp, later.body
        )

    def test_create_update_delete_and_rotate_are_audited(
        self, app: FastAPI, client: TestClient, world: World
    ) -> None:
        hook = create_webhook(
            client, world.org, world.admin.headers, "https://example.com/p/s3cr3t?t=1", ["model.created"]
        )
        client.put(f"/api/v1/webhooks/{hook['id']}", json={"name": "Renamed"}, headers=world.admin.headers)
        client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", json={}, headers=world.admin.headers)
        assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=world.admin.headers).status_code == 204
        with app.state.database.session(write=False) as session:
            rows = session.scalars(
                select(AuditLog).where(AuditLog.resource_type == "webhooks").order_by(AuditLog.created_at)
            ).all()
        assert [row.action for row in rows] == [
            "webhooks:create_webhook",
            "webhooks:update_webhook",
            "webhooks:rotate_secret",
            "webhooks:delete_webhook",
        ]
        assert all(row.resource_id == hook["id"] for row in rows)
        assert rows[2].details["secret_rotated"] is True
        assert all(
            "s3cr3t" not in json.dumps(row.details) for row in rows
        )  # a URL's path may be a credential
        assert rows[0].details["destination"] == "https://example.com"


class TestPing:
    def test_the_test_endpoint_sends_a_signed_ping(
        self, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        response = client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=world.admin.headers)
        assert response.status_code == 200, response.text
        result = response.json()["data"]
        assert result["delivered"] is True
        assert result["delivery"]["event_type"] == "webhook.test"
        assert result["delivery"]["response_status"] == 200
        [request] = receiver.requests
        payload = StandardWebhook(hook["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "webhook.test" and payload["data"]["webhook_id"] == hook["id"]
        listed = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=world.admin.headers).json()
        assert [item["event_type"] for item in listed["data"]] == ["webhook.test"]

    def test_a_failing_receiver_is_reported_not_raised(
        self, client: TestClient, world: World, receiver: Receiver
    ) -> None:
        from tests.webhooks.conftest import Answer

        receiver.answer(Answer(500, b"x" * 5000))
        hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
        result = client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=world.admin.headers).json()[
            "data"
        ]
        assert result["delivered"] is False
        assert result["delivery"]["status"] == "failed"
        assert len(result["delivery"]["response_body"]) == 1000


def test_event_types_list_every_event_with_its_schema(client: TestClient, world: World) -> None:
    response = client.get("/api/v1/webhooks/event-types", headers=world.viewer.headers)
    assert response.status_code == 200
    listed = {item["type"]: item for item in response.json()["data"]}
    assert set(listed) == set(EVENT_TYPES)
    for expected in (
        "model.created",
        "model.version.created",
        "model.version.stage_changed",
        "deployment.created",
        "deployment.updated",
        "deployment.rolled_back",
        "deployment.deleted",
        "run.finished",
        "run.failed",
        "alert.triggered",
        "alert.resolved",
        "drift.detected",
        "job.completed",
        "job.failed",
        "webhook.test",
    ):
        assert listed[expected]["data_schema"]["type"] == "object"
    assert "version_id" in listed["model.version.created"]["data_schema"]["properties"]


def test_deliveries_are_paginated(app: FastAPI, client: TestClient, world: World, receiver: Receiver) -> None:
    hook = create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created"])
    for number in range(3):
        new_model(client, world.project, world.admin.headers, name=f"M{number}")
    relay.relay_outbox(app.state.database)
    first = client.get(
        f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 2}, headers=world.admin.headers
    ).json()
    assert len(first["data"]) == 2 and first["pagination"]["total"] == 3 and first["pagination"]["has_next"]
    second = client.get(
        f"/api/v1/webhooks/{hook['id']}/deliveries",
        params={"limit": 2, "cursor": first["pagination"]["next_cursor"]},
        headers=world.admin.headers,
    ).json()
    assert len(second["data"]) == 1
    assert {item["status"] for item in first["data"] + second["data"]} == {"pending"}
