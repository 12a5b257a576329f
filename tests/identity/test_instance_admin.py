"""Instance administration: an administrator lists organisations and accounts, changes
a plan (applied to the very next request, on memory and on Redis, with the count kept),
deactivates and reactivates accounts (their tokens and the API keys they created stop
at once, and in another process within the credential-cache window), and reads failed
sign-ins; nobody else may call any of it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from maestro.app import create_app
from maestro.config import Settings
from maestro.identity.authn import CredentialCache
from maestro.identity.models import User
from tests.factories import Actor, Factory
from tests.test_cli import maestro

ADMIN = "/api/v1/admin"
ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"


def make_instance_admin(factory: Factory, organization_id: str | None = None) -> Actor:
    actor = factory.user(organization_id or factory.organization(), "admin")
    with factory.database.session() as session:
        session.execute(update(User).where(User.id == actor.user_id).values(is_instance_admin=True))
    return actor


def key_created_by(
    factory: Factory, organization_id: str, creator: Actor, grants: dict[str, list[str]]
) -> str:
    return factory.api_key(organization_id, grants, created_by_id=creator.user_id)


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.rate_limiter.reset()
        client.__exit__(None, None, None)


def factory_of(client: TestClient) -> Factory:
    assert isinstance(client.app, FastAPI)
    return Factory(client.app)


class TestOnlyAdministrators:
    def test_every_admin_route_refuses_everyone_else(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization()
        org_admin = factory.user(org, "admin")
        key = factory.api_key(
            org, {kind: ["read", "write", "delete"] for kind in ("organizations", "projects")}
        )
        operations = [
            (method.upper(), path.format(org_id=org, user_id=org_admin.user_id))
            for path, item in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
            if path.startswith(ADMIN)
            for method in item
        ]
        assert len(operations) == 6
        for method, path in operations:
            body = {"plan": "free"} if path.endswith("/plan") else None
            for headers in (org_admin.headers, {"X-API-Key": key}):
                answer = client.request(method, path, headers=headers, json=body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json()["error"]["message"] == "Only an instance administrator may do this"
            assert client.request(method, path, json=body).status_code == 401
        with factory.database.session(write=False) as session:
            assert session.get(User, org_admin.user_id).is_active  # type: ignore[union-attr]


class TestOrganisationsAndPlans:
    def test_list_with_plan_and_member_count(self, client: TestClient, factory: Factory) -> None:
        admin = make_instance_admin(factory)
        free = factory.organization("Small", plan="free")
        factory.user(free, "admin")
        factory.user(free, "viewer")
        listed = client.get(f"{ADMIN}/organizations", headers=admin.headers, params={"limit": 1})
        assert listed.status_code == 200, listed.text
        assert listed.json()["pagination"]["total"] == 2
        everything = client.get(f"{ADMIN}/organizations", headers=admin.headers).json()["data"]
        small = next(row for row in everything if row["id"] == free)
        assert (small["subscription_plan"], small["member_count"], small["name"]) == ("free", 2, "Small")
        only_free = client.get(f"{ADMIN}/organizations", headers=admin.headers, params={"plan": "free"})
        assert [row["id"] for row in only_free.json()["data"]] == [free]

    def test_a_plan_change_applies_to_the_next_request(
        self, make_client: Callable[..., TestClient], storage: dict[str, Any]
    ) -> None:
        client = make_client(rate_limits_enabled=True, **storage)
        factory = factory_of(client)
        admin = make_instance_admin(factory, factory.organization(plan="enterprise"))
        org = factory.organization(plan="free")
        member = factory.user(org, "developer")
        for _ in range(100):
            assert client.get(ME, headers=member.headers).status_code == 200
        assert client.get(ME, headers=member.headers).status_code == 429

        raised = client.put(
            f"{ADMIN}/organizations/{org}/plan", headers=admin.headers, json={"plan": "professional"}
        )
        assert raised.status_code == 200, raised.text
        assert raised.json()["data"]["subscription_plan"] == "professional"
        after = client.get(ME, headers=member.headers)
        assert after.status_code == 200
        # The requests already made count against the new limit.
        assert (after.headers["x-ratelimit-limit"], after.headers["x-ratelimit-remaining"]) == (
            "10000",
            "9899",
        )

        lowered = client.put(
            f"{ADMIN}/organizations/{org}/plan", headers=admin.headers, json={"plan": "free"}
        )
        assert lowered.status_code == 200
        refused = client.get(ME, headers=member.headers)
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-limit"] == "100"

        client.put(f"{ADMIN}/organizations/{org}/plan", headers=admin.headers, json={"plan": "unlimited"})
        free_again = client.get(ME, headers=member.headers)
        assert free_again.status_code == 200
        assert "x-ratelimit-limit" not in free_again.headers

    def test_replicas_sharing_redis_share_the_count_and_see_the_plan(
        self, make_client: Callable[..., TestClient], redis_url: str
    ) -> None:
        shared = {
            "rate_limits_enabled": True,
            "redis_url": redis_url,
            "queue_name": f"replicas-{uuid.uuid4().hex}",
        }
        first, second = make_client(**shared), make_client(**shared)
        factory = factory_of(first)
        admin = make_instance_admin(factory, factory.organization(plan="enterprise"))
        org = factory.organization(plan="free")
        member = factory.user(org, "developer")
        key = factory.api_key(org, {"organizations": ["read"]})
        for number in range(100):
            replica, headers = (first, member.headers) if number % 2 else (second, {"X-API-Key": key})
            assert replica.get(f"/api/v1/organizations/{org}", headers=headers).status_code == 200
        assert second.get(ME, headers=member.headers).status_code == 429
        assert (
            first.put(
                f"{ADMIN}/organizations/{org}/plan", headers=admin.headers, json={"plan": "professional"}
            ).status_code
            == 200
        )
        answer = second.get(ME, headers=member.headers)
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-remaining"] == "9899"

    def test_unknown_plan_or_organisation(self, client: TestClient, factory: Factory) -> None:
        admin = make_instance_admin(factory)
        org = factory.organization(plan="free")
        bad = client.put(f"{ADMIN}/organizations/{org}/plan", headers=admin.headers, json={"plan": "gold"})
        assert bad.status_code == 422
        missing = client.put(
            f"{ADMIN}/organizations/org_nosuch/plan", headers=admin.headers, json={"plan": "free"}
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "RESOURCE_NOT_FOUND"


class TestAccounts:
    def test_list_users(self, client: TestClient, factory: Factory) -> None:
        admin = make_instance_admin(factory)
        other = factory.user(factory.organization(), "viewer")
        listed = client.get(f"{ADMIN}/users", headers=admin.headers)
        assert listed.status_code == 200
        by_id = {row["id"]: row for row in listed.json()["data"]}
        assert by_id[admin.user_id]["is_instance_admin"] is True
        assert by_id[other.user_id]["is_active"] is True
        assert "password_hash" not in by_id[other.user_id]

    def test_deactivation_stops_tokens_sessions_and_keys_at_once(
        self, client: TestClient, factory: Factory
    ) -> None:
        admin = make_instance_admin(factory)
        org = factory.organization()
        person = factory.user(org, "admin")
        key = key_created_by(factory, org, person, {"organizations": ["read"]})
        others_key = factory.api_key(org, {"organizations": ["read"]})
        path = f"/api/v1/organizations/{org}"
        assert client.get(path, headers={"X-API-Key": key}).status_code == 200
        assert client.get(ME, headers=person.headers).status_code == 200

        off = client.post(f"{ADMIN}/users/{person.user_id}/deactivate", headers=admin.headers)
        assert off.status_code == 200, off.text
        assert off.json()["data"]["is_active"] is False
        assert client.get(ME, headers=person.headers).status_code == 401
        assert client.get(path, headers={"X-API-Key": key}).status_code == 401
        assert client.get(path, headers={"X-API-Key": others_key}).status_code == 200
        refresh = client.post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token})
        assert refresh.status_code == 401
        login = client.post(LOGIN, json={"email": person.email, "password": person.password})
        assert login.status_code == 401

        on = client.post(f"{ADMIN}/users/{person.user_id}/reactivate", headers=admin.headers)
        assert on.status_code == 200
        assert client.get(path, headers={"X-API-Key": key}).status_code == 200
        assert client.get(ME, headers=person.headers).status_code == 401  # its sessions stay ended
        assert (
            client.post(LOGIN, json={"email": person.email, "password": person.password}).status_code == 200
        )

    def test_an_administrator_cannot_deactivate_themselves(
        self, client: TestClient, factory: Factory
    ) -> None:
        admin = make_instance_admin(factory)
        refused = client.post(f"{ADMIN}/users/{admin.user_id}/deactivate", headers=admin.headers)
        assert refused.status_code == 409
        assert client.post(f"{ADMIN}/users/user_nosuch/deactivate", headers=admin.headers).status_code == 404

    def test_another_process_deactivating_applies_within_the_cache_window(
        self, make_settings: Callable[..., Settings]
    ) -> None:
        settings = make_settings(auth_cache_seconds=30)
        app = create_app(settings)
        now = [0.0]
        app.state.credential_cache = CredentialCache(30, clock=lambda: now[0])
        factory = Factory(app)
        org = factory.organization()
        person = factory.user(org, "admin")
        key = key_created_by(factory, org, person, {"organizations": ["read"]})
        path = f"/api/v1/organizations/{org}"
        with TestClient(app) as client:
            assert client.get(path, headers={"X-API-Key": key}).status_code == 200
            assert client.get(ME, headers=person.headers).status_code == 200
            done = maestro("admin", "deactivate", person.email, settings=settings)
            assert done.returncode == 0, done.stderr
            # Remembered by this process for the window, then checked again.
            assert client.get(ME, headers=person.headers).status_code == 200
            now[0] += 31
            assert client.get(ME, headers=person.headers).status_code == 401
            assert client.get(path, headers={"X-API-Key": key}).status_code == 401


class TestFailedSignIns:
    def test_every_refused_sign_in_is_recorded(self, make_client: Callable[..., TestClient]) -> None:
        client = make_client()
        factory = factory_of(client)
        admin = make_instance_admin(factory)
        person = factory.user(factory.organization(), "viewer")
        disabled = factory.user(factory.organization(), "viewer")
        with factory.database.session() as session:
            session.execute(update(User).where(User.id == disabled.user_id).values(is_active=False))
        attempts = [
            ("Nobody@Example.com", "whatever"),
            (person.email, "wrong password"),
            (disabled.email, disabled.password),
            ("x" * 300 + "\x07@example.com", "a bell"),
        ]
        for email, password in attempts:
            assert client.post(LOGIN, json={"email": email, "password": password}).status_code == 401
        assert (
            client.post(LOGIN, json={"email": person.email, "password": person.password}).status_code == 200
        )

        page = client.get(f"{ADMIN}/failed-sign-ins", headers=admin.headers, params={"limit": 3})
        assert page.status_code == 200, page.text
        assert page.json()["pagination"]["total"] == 4
        first = page.json()["data"]
        rest = client.get(
            f"{ADMIN}/failed-sign-ins",
            headers=admin.headers,
            params={"limit": 3, "cursor": page.json()["pagination"]["next_cursor"]},
        ).json()["data"]
        rows = first + rest
        assert [row["reason"] for row in rows] == [
            "unknown_email",
            "account_disabled",
            "wrong_password",
            "unknown_email",
        ]
        assert rows[-1]["email"] == "Nobody@Example.com"  # as typed
        assert rows[0]["email"] == "x" * 300 + "\ufffd@example.com"
        assert all(row["ip"] == "testclient" for row in rows)
        assert not any(password in str(rows) for _, password in attempts)


class TestFirstUserIsAdmin:
    def test_the_first_registered_account_administers_the_installation(
        self, make_client: Callable[..., TestClient]
    ) -> None:
        client = make_client(first_user_is_admin=True)
        first = client.post(
            "/api/v1/auth/register", json={"email": "first@example.com", "password": "long enough pw"}
        )
        second = client.post(
            "/api/v1/auth/register", json={"email": "second@example.com", "password": "long enough pw"}
        )
        tokens = [answer.json()["data"]["access_token"] for answer in (first, second)]
        answers = [
            client.get(f"{ADMIN}/users", headers={"Authorization": f"Bearer {token}"}).status_code
            for token in tokens
        ]
        assert answers == [200, 403]

    def test_off_by_default(self, client: TestClient) -> None:
        first = client.post(
            "/api/v1/auth/register", json={"email": "first@example.com", "password": "long enough pw"}
        )
        token = first.json()["data"]["access_token"]
        assert client.get(f"{ADMIN}/users", headers={"Authorization": f"Bearer {token}"}).status_code == 403
