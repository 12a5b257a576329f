"""The outbound guard: internal destinations, in every spelling, are refused when a
webhook is saved and again when it sends, with a clear error in the platform's shape,
and no connection ever reaches a listening socket behind them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.config import Settings
from maestro.webhooks import delivery, outbound, relay, signing
from maestro.webhooks.delivery import ManualClock
from maestro.webhooks.models import Webhook, WebhookDelivery
from tests.factories import World
from tests.registry.conftest import new_model
from tests.webhooks.conftest import LOOPBACK_ONLY, Answer, Listener, Receiver


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """http allowed (so that addresses, not the scheme, are what is refused), and no
    internal network open."""
    return make_settings(webhook_allow_http=True)


@pytest.fixture
def listener6() -> Iterator[Listener | None]:
    try:
        running = Listener("::1", socket.AF_INET6)
    except OSError:
        yield None
        return
    yield running
    running.close()


def hostile_urls(port: int) -> list[str]:
    return [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        f"http://[::1]:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://2130706433:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://[64:ff9b::7f00:1]:{port}/",
        f"http://127.1:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://localhost:{port}/",  # a name that resolves to loopback
        f"http://127.0.0.1:{port}/",
        "http://[fd00:ec2::254]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
    ]


def assert_refused(response: httpx.Response, field: str = "url") -> None:
    status = response.status_code
    body = response.json()
    assert status == 422, body
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["message"] == outbound.NOT_ALLOWED
    assert body["error"]["details"] == [{"field": field, "message": outbound.NOT_ALLOWED}]


def test_internal_destinations_are_refused_at_creation(
    client: TestClient, world: World, listener: Listener, listener6: Listener | None
) -> None:
    for url in hostile_urls(listener.port) + ([f"http://[::1]:{listener6.port}/"] if listener6 else []):
        response = client.post(
            f"/api/v1/organizations/{world.org}/webhooks",
            json={"name": "probe", "url": url, "events": ["model.created"]},
            headers=world.admin.headers,
        )
        assert_refused(response)
    listed = client.get(f"/api/v1/organizations/{world.org}/webhooks", headers=world.admin.headers).json()
    assert listed["data"] == []
    assert listener.accepted == 0
    assert listener6 is None or listener6.accepted == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "The URL must use https"),
        ("gopher://example.com/", "The URL must use https"),
        ("https://user:pw@example.com/", "The URL may not carry a user name or password"),
        ("https:///nohost", "The URL names no host"),
        ("https://exa mple.com/", "Not a valid URL"),
    ],
)
def test_malformed_urls_are_refused_with_a_reason(
    client: TestClient, world: World, url: str, message: str
) -> None:
    response = client.post(
        f"/api/v1/organizations/{world.org}/webhooks",
        json={"name": "bad", "url": url, "events": ["model.created"]},
        headers=world.admin.headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"field": "url", "message": message}]


def test_http_needs_the_operators_permission(make_settings: Callable[..., Settings]) -> None:
    strict = make_settings()
    with pytest.raises(outbound.DestinationRefused, match="Only https"):
        outbound.check_url("http://93.184.215.14/", strict)
    assert outbound.check_url("https://93.184.215.14/", strict) is not None


def add_webhook_row(app: FastAPI, org: str, url: str) -> str:
    """A webhook saved while its destination was allowed (or before a name changed)."""
    with app.state.database.session() as session:
        webhook = Webhook(
            organization_id=org,
            name="saved earlier",
            url=url,
            events=["model.created"],
            secret_sealed=signing.seal(app.state.settings, signing.generate_secret()),
        )
        session.add(webhook)
        session.flush()
        return webhook.id


def test_the_test_endpoint_answers_only_that_a_destination_is_not_allowed(
    app: FastAPI, client: TestClient, world: World, listener: Listener
) -> None:
    webhook_id = add_webhook_row(app, world.org, f"http://127.0.0.1:{listener.port}/")
    response = client.post(f"/api/v1/webhooks/{webhook_id}/test", headers=world.admin.headers)
    assert_refused(response)
    assert listener.accepted == 0
    with app.state.database.session(write=False) as session:
        assert session.scalars(select(WebhookDelivery)).all() == []


def test_a_destination_refused_at_send_time_is_never_contacted(
    app: FastAPI, client: TestClient, world: World, listener: Listener
) -> None:
    """Saved when allowed, refused once the operator closed the network: the attempt
    fails with the guard's reason and nothing connects."""
    webhook_id = add_webhook_row(app, world.org, f"http://127.0.0.1:{listener.port}/")
    new_model(client, world.project, world.admin.headers)
    clock = ManualClock()
    relay.relay_outbox(app.state.database, clock.now())
    [outcome] = delivery.drain(app.state.database, app.state.settings, webhook_id, clock=clock)
    assert outcome.status == "pending" and outcome.response_status is None
    listed = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=world.admin.headers).json()[
        "data"
    ]
    assert listed[0]["error"] == outbound.NOT_ALLOWED
    assert listener.accepted == 0


def test_dns_rebinding_is_caught_at_send_time(
    app: FastAPI, client: TestClient, world: World, listener: Listener
) -> None:
    """A name that resolved to a public address when saved and to loopback when sending
    (the resolver is the test's): refused, and the loopback socket never hears of it."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])

    def rebinding(host: str, port: int) -> list[str]:
        assert host == "hooks.rebind.test"
        return next(answers)

    url = f"http://hooks.rebind.test:{listener.port}/"
    assert outbound.check_url(url, app.state.settings, resolver=rebinding) is not None
    webhook_id = add_webhook_row(app, world.org, url)
    new_model(client, world.project, world.admin.headers)
    relay.relay_outbox(app.state.database)
    [outcome] = delivery.drain(app.state.database, app.state.settings, webhook_id, resolver=rebinding)
    assert outcome.response_status is None
    assert listener.accepted == 0


def test_a_name_resolving_to_public_and_private_addresses_is_refused(app: FastAPI) -> None:
    def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(outbound.DestinationRefused):
        outbound.check_url("https://mixed.test/", app.state.settings, resolver=mixed)


def test_the_send_connects_to_the_checked_address_only(app: FastAPI, receiver: Receiver) -> None:
    """The name is resolved once; the connection goes to that address, with the name kept
    in the Host header."""
    settings = app.state.settings.model_copy(update={"webhook_allowed_networks": LOOPBACK_ONLY})
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    result = outbound.send(
        f"http://receiver.pinned.test:{receiver.port}/x", b"{}", {}, settings, resolver=resolver
    )
    assert result.status_code == 200
    assert calls == ["receiver.pinned.test"]
    assert receiver.requests[0].headers["host"] == f"receiver.pinned.test:{receiver.port}"


def test_a_redirect_to_an_internal_address_is_not_followed(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    """A receiver the operator allowed answers 302 to 127.0.0.2 (not allowed): the answer
    is a failed attempt, and nothing connects to the redirect's target."""
    internal = Listener("127.0.0.2")
    try:
        settings = make_settings(webhook_allow_http=True, webhook_allowed_networks=LOOPBACK_ONLY)
        for target in (f"http://127.0.0.2:{internal.port}/", "http://169.254.169.254/latest/meta-data/"):
            receiver.answer(Answer(302, b"", {"Location": target}))
            result = outbound.send(receiver.url, b"{}", {}, settings)
            assert result.status_code == 302 and not result.succeeded
        assert internal.accepted == 0
        assert len(receiver.requests) == 2
    finally:
        internal.close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.1.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 - an address refused, not bound
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "ff02::1",
        "2001:db8::1",
        "198.18.0.1",
    ],
)
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not outbound.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_public(address: str) -> None:
    assert outbound.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
    ],
)
def test_legacy_ipv4_forms_are_read_as_their_address(host: str, address: str) -> None:
    assert str(outbound.literal_address(host)) == address


def test_the_signed_send_other_domains_reuse(app: FastAPI, receiver: Receiver) -> None:
    """``service.send_signed_json``: what alert channels will call; guarded and signed."""
    from standardwebhooks import Webhook as StandardWebhook

    from maestro.webhooks import service

    secret = signing.generate_secret()
    allowed = app.state.settings.model_copy(update={"webhook_allowed_networks": LOOPBACK_ONLY})
    result = service.send_signed_json(
        allowed, receiver.url, {"alert": "fired"}, message_id="msg_1", secrets=[secret]
    )
    assert result.succeeded
    [request] = receiver.requests
    assert StandardWebhook(secret).verify(request.body, request.headers) == {"alert": "fired"}
    with pytest.raises(outbound.DestinationRefused):
        service.send_signed_json(app.state.settings, receiver.url, {}, message_id="msg_2", secrets=[secret])
    with pytest.raises(outbound.DestinationRefused):
        service.check_destination("https://169.254.169.254/", app.state.settings)
    assert len(receiver.requests) == 1
