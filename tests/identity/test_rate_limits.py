"""Rate limits: each principal gets its organisation's plan (free 100 requests an
hour, professional 10,000, enterprise unlimited), counted in memory or in Redis;
sign-in is limited per client address and per account. Limited responses carry
X-RateLimit-Limit/-Remaining/-Reset, error responses included, and a 429 adds
Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.identity.api_keys import router as api_keys_router
from tests.factories import Factory

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where the counts live: the embedded default, or Redis (shared by replicas)."""
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
def make_limited_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """A client of an app with rate limits on, and the given settings."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(make_settings(rate_limits_enabled=True, **overrides))
        if "/api/v1/organizations/{org_id}/api-keys" not in app.openapi()["paths"]:
            app.include_router(api_keys_router)
            app.openapi_schema = None
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.rate_limiter.reset()
        client.__exit__(None, None, None)


def factory_of(client: TestClient) -> Factory:
    app = client.app
    assert isinstance(app, FastAPI)
    return Factory(app)


def limit_headers(response: Any) -> tuple[int, int, int]:
    return tuple(int(response.headers[name]) for name in LIMIT_HEADERS)  # type: ignore[return-value]


def assert_rate_limited(response: Any, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert int(response.headers["x-ratelimit-reset"]) >= int(time.time())
    assert int(response.headers["retry-after"]) >= 1


class TestPlanLimits:
    def test_free_plan_allows_100_requests_an_hour(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(**storage)
        factory = factory_of(client)
        user = factory.user(factory.organization(plan="free"), "admin")
        started = int(time.time())
        for expected_remaining in range(99, -1, -1):
            response = client.get(ME, headers=user.headers)
            assert response.status_code == 200, response.text
            limit, remaining, reset = limit_headers(response)
            assert (limit, remaining) == (100, expected_remaining)
            assert started < reset <= int(time.time()) + 3600 + 1
            assert "retry-after" not in response.headers

        over = client.get(ME, headers=user.headers)
        assert_rate_limited(over, 100)
        assert int(over.headers["retry-after"]) <= 3600
        # Refused requests are not counted against the window, and stay refused.
        assert_rate_limited(client.get(ME, headers=user.headers), 100)

    def test_error_responses_carry_the_limit_headers_too(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(**storage)
        factory = factory_of(client)
        organization_id = factory.organization(plan="free")
        developer = factory.user(organization_id, "developer")
        responses = [
            client.get(ME, headers=developer.headers),
            client.get("/api/v1/organizations/org_nosuch/api-keys", headers=developer.headers),
            client.get(f"/api/v1/organizations/{organization_id}/api-keys", headers=developer.headers),
            client.get(ME, headers=developer.headers),
        ]
        assert [r.status_code for r in responses] == [200, 404, 403, 200]
        assert responses[1].json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert [limit_headers(r)[:2] for r in responses] == [(100, 99), (100, 98), (100, 97), (100, 96)]

    def test_each_api_key_is_limited_by_its_organisations_plan(
        self, make_limited_client: Callable[..., TestClient]
    ) -> None:
        client = make_limited_client()
        factory = factory_of(client)
        organization_id = factory.organization(plan="free")
        key = factory.api_key(organization_id, {"models": ["read"]})
        path = f"/api/v1/organizations/{organization_id}/api-keys"
        first = client.get(path, headers={"X-API-Key": key})
        second = client.get(path, headers={"Authorization": f"Bearer {key}"})
        assert first.status_code == second.status_code == 403  # a person-only resource
        assert [limit_headers(r)[:2] for r in (first, second)] == [(100, 99), (100, 98)]

    def test_professional_plan_allows_10000_an_hour(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(**storage)
        factory = factory_of(client)
        user = factory.user(factory.organization(plan="professional"), "admin")
        responses = [client.get(ME, headers=user.headers) for _ in range(3)]
        assert [limit_headers(r)[:2] for r in responses] == [(10000, 9999), (10000, 9998), (10000, 9997)]

    def test_enterprise_plan_is_never_limited(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(**storage)
        factory = factory_of(client)
        user = factory.user(factory.organization(plan="enterprise"), "admin")
        for _ in range(110):
            response = client.get(ME, headers=user.headers)
            assert response.status_code == 200
            assert not any(name in response.headers for name in (*LIMIT_HEADERS, "retry-after"))

    def test_limits_can_be_turned_off(self, make_settings: Callable[..., Settings]) -> None:
        app = create_app(make_settings(rate_limits_enabled=False))
        factory = Factory(app)
        user = factory.user(factory.organization(plan="free"), "admin")
        with TestClient(app) as client:
            for _ in range(105):
                response = client.get(ME, headers=user.headers)
                assert response.status_code == 200
            assert "x-ratelimit-limit" not in response.headers

    def test_anonymous_requests_are_refused_without_counting(
        self, make_limited_client: Callable[..., TestClient]
    ) -> None:
        client = make_limited_client()
        response = client.get(ME)
        assert response.status_code == 401
        assert "x-ratelimit-limit" not in response.headers


class TestLoginLimits:
    def test_attempts_are_limited_per_account(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(
            login_limit_per_account="3/minute", login_limit_per_ip="50/minute", **storage
        )
        factory = factory_of(client)
        victim = factory.user(factory.organization(), "admin")
        bystander = factory.user(factory.organization(), "admin")
        for email in (victim.email, victim.email.upper(), victim.email):
            response = client.post(LOGIN, json={"email": email, "password": "guess guess"})
            assert response.status_code == 401
        # Even the right password is refused now: the account is being guessed at.
        response = client.post(LOGIN, json={"email": victim.email, "password": victim.password})
        assert_rate_limited(response, 3)
        # Other accounts signing in from the same address are unaffected.
        response = client.post(LOGIN, json={"email": bystander.email, "password": bystander.password})
        assert response.status_code == 200, response.text

    def test_padding_the_email_does_not_reset_the_account_limit(
        self, make_limited_client: Callable[..., TestClient]
    ) -> None:
        client = make_limited_client(login_limit_per_account="3/minute", login_limit_per_ip="50/minute")
        factory = factory_of(client)
        victim = factory.user(factory.organization(), "admin")
        for padding in range(3):
            response = client.post(LOGIN, json={"email": victim.email + " " * padding, "password": "guess"})
            assert response.status_code == 401
        response = client.post(LOGIN, json={"email": f" {victim.email} ", "password": victim.password})
        assert_rate_limited(response, 3)

    def test_attempts_are_limited_per_client_address(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(
            login_limit_per_ip="3/minute", login_limit_per_account="50/minute", **storage
        )
        factory = factory_of(client)
        user = factory.user(factory.organization(), "admin")
        for number in range(3):
            response = client.post(LOGIN, json={"email": f"nobody{number}@example.com", "password": "guess"})
            assert response.status_code == 401
        response = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert_rate_limited(response, 3)

    def test_registration_counts_against_the_address(
        self, make_limited_client: Callable[..., TestClient]
    ) -> None:
        client = make_limited_client(login_limit_per_ip="2/minute", login_limit_per_account="50/minute")
        for number in range(2):
            response = client.post(
                "/api/v1/auth/register",
                json={"email": f"new{number}@example.com", "password": "long enough"},
            )
            assert response.status_code == 201, response.text
        response = client.post(
            "/api/v1/auth/register", json={"email": "new9@example.com", "password": "long enough"}
        )
        assert_rate_limited(response, 2)


class TestOrganisationAllowance:
    """A plan is the organisation's allowance: every member and every API key draw on
    one count, so adding keys does not multiply it; a self-hosted install puts new
    organisations on ``unlimited`` unless MAESTRO_DEFAULT_PLAN says otherwise."""

    def test_members_and_keys_share_one_count(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(**storage)
        factory = factory_of(client)
        organization_id = factory.organization(plan="free")
        callers = [
            factory.user(organization_id, "admin").headers,
            factory.user(organization_id, "viewer").headers,
            *({"X-API-Key": factory.api_key(organization_id, {"organizations": ["read"]})} for _ in range(3)),
        ]
        path = f"/api/v1/organizations/{organization_id}"
        for number in range(100):
            answer = client.get(path, headers=callers[number % len(callers)])
            assert answer.status_code == 200
            assert answer.headers["x-ratelimit-remaining"] == str(99 - number)
        for headers in callers:
            assert_rate_limited(client.get(path, headers=headers), 100)
        # Another organisation on the same plan has its own count.
        elsewhere = factory.user(factory.organization(plan="free"), "admin")
        assert client.get(ME, headers=elsewhere.headers).headers["x-ratelimit-remaining"] == "99"

    def test_a_fresh_install_puts_new_organisations_on_unlimited(
        self, make_limited_client: Callable[..., TestClient]
    ) -> None:
        client = make_limited_client()
        registered = client.post(
            "/api/v1/auth/register", json={"email": "first@example.com", "password": "long enough pw"}
        )
        headers = {"Authorization": f"Bearer {registered.json()['data']['access_token']}"}
        organizations = client.get("/api/v1/organizations", headers=headers).json()["data"]
        assert [row["subscription_plan"] for row in organizations] == ["unlimited"]
        for _ in range(150):
            answer = client.get(ME, headers=headers)
            assert answer.status_code == 200
            assert "x-ratelimit-limit" not in answer.headers

    def test_with_default_plan_free_the_101st_request_is_a_clean_429(
        self, make_limited_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_limited_client(default_plan="free", **storage)
        registered = client.post(
            "/api/v1/auth/register", json={"email": "first@example.com", "password": "long enough pw"}
        )
        assert registered.status_code == 201
        headers = {"Authorization": f"Bearer {registered.json()['data']['access_token']}"}
        for _ in range(100):
            assert client.get(ME, headers=headers).status_code == 200
        over = client.get(ME, headers=headers)
        assert_rate_limited(over, 100)
        assert set(over.json()) >= {"success", "error"}
        assert over.json()["success"] is False
        assert set(over.json()["error"]) == {"code", "message", "details"}
        assert "100 per hour" in over.json()["error"]["message"]
