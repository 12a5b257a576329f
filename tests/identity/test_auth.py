"""Sign-up, sign-in, token rotation and sign-out, and the hostile tokens of
notes/security.md: each must answer 401 in the platform's shape and change nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.app import create_app
from maestro.config import Settings
from maestro.db import utcnow
from maestro.identity.models import AuditLog, AuthSession, User
from tests.factories import Actor, Factory

ME = "/api/v1/auth/me"


def register(client: TestClient, email: str = "ada@example.com", **extra: object) -> dict:
    body = {
        "email": email,
        "password": "analytical engine",
        "first_name": "Ada",
        "last_name": "Lovelace",
        **extra,
    }
    return client.post("/api/v1/auth/register", json=body).json()


def assert_unauthenticated(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"


class TestRegister:
    def test_first_user_becomes_admin_of_a_new_organisation(self, client: TestClient) -> None:
        response = client.post(
            "/api/v1/auth/register",
            json={
                "email": "Ada@Example.com",
                "password": "analytical engine",
                "first_name": "Ada",
                "organization_name": "Engines Ltd",
            },
        )
        assert response.status_code == 201
        data = response.json()["data"]
        assert data["token_type"] == "bearer"
        assert data["expires_in"] == 900
        assert data["user"]["email"] == "ada@example.com"
        assert data["user"]["current_organization"]["name"] == "Engines Ltd"
        assert data["user"]["current_organization"]["role"] == "admin"
        me = client.get(ME, headers={"Authorization": f"Bearer {data['access_token']}"})
        assert me.json()["data"]["id"] == data["user"]["id"]

    def test_duplicate_email_is_409(self, client: TestClient) -> None:
        register(client)
        response = client.post(
            "/api/v1/auth/register", json={"email": "ADA@example.com", "password": "x" * 12}
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "CONFLICT"

    @pytest.mark.parametrize(
        "body",
        [
            {"email": "a" * 10_000 + "@example.com", "password": "long enough"},
            {"email": "not-an-email", "password": "long enough"},
            {"email": "ok@example.com", "password": "short"},
            {"email": "ok@example.com", "password": "long enough", "role": "admin"},
            {"email": "ok@example.com", "password": "long enough", "organization_id": "org_x"},
            {"email": "ok@example.com", "password": "long enough", "is_admin": True},
        ],
    )
    def test_bad_or_smuggled_fields_are_422(self, client: TestClient, body: dict, app) -> None:  # type: ignore[no-untyped-def]
        response = client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 422
        with app.state.database.session(write=False) as session:
            assert session.scalar(select(User.id)) is None

    def test_registration_can_be_closed(self, make_settings: Callable[..., Settings]) -> None:
        with TestClient(create_app(make_settings(allow_registration=False))) as client:
            response = client.post(
                "/api/v1/auth/register", json={"email": "a@example.com", "password": "long enough"}
            )
        assert response.status_code == 403


class TestLogin:
    def test_login_returns_the_spec_shape(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization(name="Acme Corp")
        actor = factory.user(org, role="developer")
        response = client.post("/api/v1/auth/login", json={"email": actor.email, "password": actor.password})
        assert response.status_code == 200
        data = response.json()["data"]
        assert set(data) >= {"access_token", "refresh_token", "expires_in", "user"}
        assert data["user"]["current_organization"] == {"id": org, "name": "Acme Corp", "role": "developer"}
        assert data["user"]["last_login_at"] is not None

    @pytest.mark.parametrize("email", ["user-that-exists", "nobody@example.com"])
    def test_wrong_credentials_say_the_same_thing(
        self, client: TestClient, factory: Factory, email: str
    ) -> None:
        actor = factory.user()
        response = client.post(
            "/api/v1/auth/login",
            json={
                "email": actor.email if email == "user-that-exists" else email,
                "password": "wrong password",
            },
        )
        assert_unauthenticated(response)
        assert response.json()["error"]["message"] == "Wrong email or password"

    def test_disabled_user_cannot_sign_in(self, client: TestClient, factory: Factory, app) -> None:  # type: ignore[no-untyped-def]
        actor = factory.user()
        with app.state.database.session() as session:
            session.get(User, actor.user_id).is_active = False
        assert_unauthenticated(
            client.post("/api/v1/auth/login", json={"email": actor.email, "password": actor.password})
        )
        assert_unauthenticated(client.get(ME, headers=actor.headers))


def forge(claims: dict, key: str, algorithm: str = "HS256", headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def unsigned(claims: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class TestHostileTokens:
    @pytest.fixture
    def actor(self, factory: Factory) -> Actor:
        return factory.user(factory.organization())

    def claims(self, actor: Actor, **changes: object) -> dict:
        decoded = jwt.decode(actor.access_token, options={"verify_signature": False})
        decoded.update(changes)
        return {key: value for key, value in decoded.items() if value is not None}

    def test_a_genuine_token_works(self, client: TestClient, actor: Actor) -> None:
        assert client.get(ME, headers=actor.headers).status_code == 200

    def test_alg_none(self, client: TestClient, actor: Actor) -> None:
        token = unsigned(self.claims(actor))
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    def test_signed_with_another_key(self, client: TestClient, actor: Actor) -> None:
        token = forge(self.claims(actor), "a-different-secret-key-of-enough-length")
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    def test_expired(self, client: TestClient, actor: Actor, settings: Settings) -> None:
        past = utcnow() - timedelta(hours=2)
        token = forge(
            self.claims(actor, iat=past, nbf=past, exp=past + timedelta(minutes=15)), settings.signing_key
        )
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    @pytest.mark.parametrize("claim", ["exp", "sub", "sid", "jti", "iat", "typ"])
    def test_missing_claim(self, client: TestClient, actor: Actor, settings: Settings, claim: str) -> None:
        token = forge(self.claims(actor, **{claim: None}), settings.signing_key)
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    def test_other_algorithm_with_our_key(self, client: TestClient, actor: Actor, settings: Settings) -> None:
        token = forge(self.claims(actor), settings.signing_key, algorithm="HS512")
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    def test_key_url_header_tricks(self, client: TestClient, actor: Actor, settings: Settings) -> None:
        token = forge(
            self.claims(actor), settings.signing_key, headers={"jku": "http://169.254.169.254/keys"}
        )
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    def test_refresh_token_is_not_an_access_token(self, client: TestClient, actor: Actor) -> None:
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {actor.refresh_token}"}))

    def test_wrong_token_type(self, client: TestClient, actor: Actor, settings: Settings) -> None:
        token = forge(self.claims(actor, typ="refresh"), settings.signing_key)
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {token}"}))

    @pytest.mark.parametrize(
        "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "bearer garbage.x.y"]
    )
    def test_malformed_authorization_headers(self, client: TestClient, header: str) -> None:
        assert_unauthenticated(client.get(ME, headers={"Authorization": header}))

    def test_token_in_query_string_is_refused(self, client: TestClient, actor: Actor) -> None:
        assert_unauthenticated(client.get(f"{ME}?access_token={actor.access_token}"))
        assert_unauthenticated(client.get(f"{ME}?token=x", headers=actor.headers))

    def test_no_credentials(self, client: TestClient) -> None:
        response = client.get(ME)
        assert_unauthenticated(response)
        assert response.headers["www-authenticate"] == "Bearer"


class TestRefresh:
    @pytest.fixture
    def settings(self, make_settings: Callable[..., Settings]) -> Settings:
        """No grace: presenting a spent token again is reuse at once (the grace has
        tests of its own in test_refresh_hardening.py)."""
        return make_settings(refresh_reuse_grace_seconds=0)

    def refresh(self, client: TestClient, token: str):  # type: ignore[no-untyped-def]
        return client.post("/api/v1/auth/refresh", json={"refresh_token": token})

    def test_rotation_issues_a_new_pair(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        response = self.refresh(client, actor.refresh_token)
        assert response.status_code == 200
        data = response.json()["data"]
        assert data["refresh_token"] != actor.refresh_token
        assert client.get(ME, headers={"Authorization": f"Bearer {data['access_token']}"}).status_code == 200

    def test_reuse_revokes_the_whole_family(self, client: TestClient, factory: Factory, app) -> None:  # type: ignore[no-untyped-def]
        actor = factory.user(factory.organization())
        rotated = self.refresh(client, actor.refresh_token).json()["data"]
        reused = self.refresh(client, actor.refresh_token)
        assert_unauthenticated(reused)
        assert "reused" in reused.json()["error"]["message"]
        # Everything issued in that session is dead: the new refresh token and both access tokens.
        assert_unauthenticated(self.refresh(client, rotated["refresh_token"]))
        assert_unauthenticated(client.get(ME, headers={"Authorization": f"Bearer {rotated['access_token']}"}))
        assert_unauthenticated(client.get(ME, headers=actor.headers))
        with app.state.database.session(write=False) as session:
            assert session.scalar(select(AuthSession.revoked_reason)) == "refresh token reused"
            # The organisation's admins see the reuse in their audit log, as a failure.
            row = session.scalar(
                select(AuditLog).where(AuditLog.outcome == "failure", AuditLog.actor_id == actor.user_id)
            )
            assert row is not None
            assert (row.organization_id, row.status_code, row.actor_id) == (
                actor.organization_id,
                401,
                actor.user_id,
            )

    def test_other_sessions_survive_a_revoked_family(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        other = client.post(
            "/api/v1/auth/login", json={"email": actor.email, "password": actor.password}
        ).json()
        self.refresh(client, actor.refresh_token)
        self.refresh(client, actor.refresh_token)
        headers = {"Authorization": f"Bearer {other['data']['access_token']}"}
        assert client.get(ME, headers=headers).status_code == 200

    @pytest.mark.parametrize("token", ["mr_unknown", "", "x" * 199])
    def test_unknown_refresh_token(self, client: TestClient, token: str) -> None:
        assert_unauthenticated(self.refresh(client, token))

    def test_access_token_is_not_a_refresh_token(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        response = self.refresh(client, actor.access_token)  # longer than any refresh token
        assert response.status_code == 422, response.text


class TestLogout:
    def test_both_tokens_stop_working_at_once(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        assert client.post("/api/v1/auth/logout", headers=actor.headers).status_code == 204
        assert_unauthenticated(client.get(ME, headers=actor.headers))
        assert_unauthenticated(
            client.post("/api/v1/auth/refresh", json={"refresh_token": actor.refresh_token})
        )

    def test_anonymous_logout_is_401(self, client: TestClient) -> None:
        assert_unauthenticated(client.post("/api/v1/auth/logout"))


class TestCurrentOrganisation:
    def test_switch_with_header_or_setting(self, client: TestClient, factory: Factory) -> None:
        first, second = factory.organization(name="First"), factory.organization(name="Second")
        actor = factory.user(first, role="viewer")
        with factory.database.session() as session:
            from maestro.organizations.models import Membership

            session.add(Membership(organization_id=second, user_id=actor.user_id, role="developer"))
        assert (
            client.get(ME, headers=actor.headers).json()["data"]["current_organization"]["role"] == "viewer"
        )
        switched = client.get(ME, headers={**actor.headers, "X-Organization-ID": second})
        assert switched.json()["data"]["current_organization"] == {
            "id": second,
            "name": "Second",
            "role": "developer",
        }
        updated = client.put(ME, headers=actor.headers, json={"current_organization": second})
        assert updated.json()["data"]["current_organization"]["id"] == second
        assert client.get(ME, headers=actor.headers).json()["data"]["current_organization"]["id"] == second

    def test_another_tenants_organisation_is_404(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        foreign = factory.organization()
        assert client.get(ME, headers={**actor.headers, "X-Organization-ID": foreign}).status_code == 404
        assert (
            client.put(ME, headers=actor.headers, json={"current_organization": foreign}).status_code == 404
        )

    def test_profile_update_refuses_smuggled_fields(self, client: TestClient, factory: Factory) -> None:
        actor = factory.user(factory.organization())
        for body in ({"email": "new@example.com"}, {"is_active": False}, {"role": "admin"}):
            assert client.put(ME, headers=actor.headers, json=body).status_code == 422
        assert (
            client.put(ME, headers=actor.headers, json={"first_name": "Grace"}).json()["data"]["first_name"]
            == "Grace"
        )

    def test_api_keys_have_no_me(self, client: TestClient, factory: Factory) -> None:
        key = factory.api_key(factory.organization(), {"projects": ["read"]})
        assert_unauthenticated(client.get(ME, headers={"X-API-Key": key}))
