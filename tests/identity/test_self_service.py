"""What a signed-in person does for themselves, and what a refusal says: changing
one's password (other sessions end, this one goes on), an expired access token's 401
naming the way out, a 403 naming the missing permission, authorisation decided
before the body is validated, and every rate-limited operation documenting 429."""

from __future__ import annotations

from datetime import timedelta

import jwt
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from maestro.api.deps import route_requires_principal
from maestro.db import new_id, utcnow
from maestro.identity import security
from tests.factories import Factory

ME = "/api/v1/auth/me"
PASSWORD = "/api/v1/auth/me/password"
LOGIN = "/api/v1/auth/login"


class TestPasswordChange:
    def test_other_sessions_end_and_this_one_goes_on(self, client: TestClient, factory: Factory) -> None:
        person = factory.user(factory.organization(), "developer")
        other = client.post(LOGIN, json={"email": person.email, "password": person.password}).json()["data"]
        changed = client.put(
            PASSWORD,
            headers=person.headers,
            json={"current_password": person.password, "new_password": "a brand new password"},
        )
        assert changed.status_code == 204, changed.text
        assert client.get(ME, headers=person.headers).status_code == 200
        assert client.get(ME, headers={"Authorization": f"Bearer {other['access_token']}"}).status_code == 401
        refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert refreshed.status_code == 401
        assert (
            client.post("/api/v1/auth/refresh", json={"refresh_token": person.refresh_token}).status_code
            == 200
        )
        old = client.post(LOGIN, json={"email": person.email, "password": person.password})
        assert old.status_code == 401
        new = client.post(LOGIN, json={"email": person.email, "password": "a brand new password"})
        assert new.status_code == 200

    def test_a_wrong_current_password_changes_nothing(self, client: TestClient, factory: Factory) -> None:
        person = factory.user(factory.organization(), "developer")
        other = client.post(LOGIN, json={"email": person.email, "password": person.password}).json()["data"]
        refused = client.put(
            PASSWORD,
            headers=person.headers,
            json={"current_password": "not my password", "new_password": "a brand new password"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["details"][0]["field"] == "current_password"
        assert client.get(ME, headers={"Authorization": f"Bearer {other['access_token']}"}).status_code == 200
        assert (
            client.post(LOGIN, json={"email": person.email, "password": person.password}).status_code == 200
        )

    def test_a_short_new_password_or_an_api_key_is_refused(
        self, client: TestClient, factory: Factory
    ) -> None:
        org = factory.organization()
        person = factory.user(org, "developer")
        short = client.put(
            PASSWORD,
            headers=person.headers,
            json={"current_password": person.password, "new_password": "short"},
        )
        assert short.status_code == 422
        key = factory.api_key(org, {"organizations": ["read"]})
        body = {"current_password": person.password, "new_password": "a brand new password"}
        assert client.put(PASSWORD, headers={"X-API-Key": key}, json=body).status_code == 401


class TestRefusalsSayWhy:
    def test_an_expired_access_token_says_to_refresh(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        person = factory.user(factory.organization(), "developer")
        past = utcnow() - timedelta(minutes=10)
        expired = jwt.encode(
            {
                "iss": security.JWT_ISSUER,
                "sub": person.user_id,
                "sid": "sess_whatever",
                "org": None,
                "typ": security.ACCESS_TOKEN_TYPE,
                "iat": past - timedelta(minutes=15),
                "exp": past,
                "jti": new_id("jti"),
            },
            app.state.settings.signing_key,
            algorithm=security.JWT_ALGORITHM,
        )
        answer = client.get(ME, headers={"Authorization": f"Bearer {expired}"})
        assert answer.status_code == 401
        message = answer.json()["error"]["message"]
        assert "expired" in message and "/api/v1/auth/refresh" in message and "API key" in message
        forged = client.get(ME, headers={"Authorization": "Bearer not.a.token"})
        assert "expired" not in forged.json()["error"]["message"]

    def test_a_403_names_the_missing_permission(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        viewer = factory.user(org, "viewer")
        project = factory.project(org, admin, "organization")
        body = {"name": "Churn", "model_type": "classification"}
        key = factory.api_key(org, {"models": ["read"]})
        by_key = client.post(f"/api/v1/projects/{project}/models", json=body, headers={"X-API-Key": key})
        assert by_key.status_code == 403
        assert by_key.json()["error"]["message"] == "This API key lacks models: write"
        by_role = client.post(f"/api/v1/projects/{project}/models", json=body, headers=viewer.headers)
        assert by_role.status_code == 403
        message = by_role.json()["error"]["message"]
        assert "write models" in message and "developer" in message and "viewer" in message


class TestAuthorisationBeforeValidation:
    def test_a_key_without_the_permission_gets_403_whatever_the_body(
        self, client: TestClient, factory: Factory
    ) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")
        reader = {"X-API-Key": factory.api_key(org, {"models": ["read"], "deployments": ["read"]})}
        writer = {"X-API-Key": factory.api_key(org, {"models": ["write"], "deployments": ["write"]})}
        for path, kind in (
            (f"/api/v1/projects/{project}/models", "models"),
            (f"/api/v1/projects/{project}/deployments", "deployments"),
        ):
            for body in ({}, {"name": 5}, [1, 2]):
                refused = client.post(path, json=body, headers=reader)
                assert refused.status_code == 403, refused.text
                assert refused.json()["error"]["message"] == f"This API key lacks {kind}: write"
                assert client.post(path, json=body, headers=writer).status_code == 422
            malformed = client.post(
                path, content=b"{not json", headers={**reader, "Content-Type": "application/json"}
            )
            assert malformed.status_code == 403
            assert client.post(path, json={}).status_code == 401
            assert client.post(path, json={}, headers={"X-API-Key": "mk_unknown"}).status_code == 401

    def test_a_person_only_route_refuses_keys_before_validation(
        self, client: TestClient, factory: Factory
    ) -> None:
        org = factory.organization()
        key = factory.api_key(org, {"organizations": ["read", "write"]})
        refused = client.post(
            f"/api/v1/organizations/{org}/api-keys", json={"nonsense": 1}, headers={"X-API-Key": key}
        )
        assert refused.status_code == 403

    def test_a_read_only_post_needs_only_read(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin, "organization")
        reader = {"X-API-Key": factory.api_key(org, {"experiments": ["read"]})}
        invalid = client.post(
            f"/api/v1/projects/{project}/runs/search", json={"max_results": "many"}, headers=reader
        )
        assert invalid.status_code == 422, invalid.text


class TestRateLimitsAreDocumented:
    def test_every_authenticated_or_limited_operation_lists_429(self, app: FastAPI) -> None:
        document = app.openapi()
        authenticated = {
            (context.path_format, method.lower())
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, APIRoute)
            and context.path_format is not None
            and route_requires_principal(context.original_route.dependant)
            for method in context.original_route.methods or ()
        }
        limited_in_public = {
            ("/api/v1/auth/login", "post"),
            ("/api/v1/auth/register", "post"),
            ("/api/v1/auth/refresh", "post"),
        }
        documented = {(path, method) for path, item in document["paths"].items() for method in item}
        expected = (authenticated & documented) | limited_in_public
        assert ("/api/v1/jobs/{job_id}", "get") in expected and ("/api/v1/auth/me", "put") in expected
        missing = sorted(
            (path, method)
            for path, method in expected
            if "429" not in document["paths"][path][method]["responses"]
        )
        assert missing == []
