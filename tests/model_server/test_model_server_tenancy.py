"""Tenants of one model server: served names are per organisation, so no organisation
can take a name from another, answer another's callers or unload another's model; the
operator's names (preloads, operator keys) are every caller's and no platform user's to
take; listings, status and metrics show each caller only what it may see; checked
credentials are trusted no longer than they live; and a prediction call that raises
anything at all still gets an answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from maestro.config import Settings
from maestro.db import utcnow
from maestro.identity.authn import CredentialCache
from maestro.identity.rbac import Principal
from maestro.model_server.app import create_model_server
from maestro.model_server.server import ModelServer, guarded
from maestro.organizations.models import Membership
from maestro.runtimes.errors import ServingError
from tests.conftest import RunningProcess
from tests.deployments.platform import FEATURES, SCHEMA, Tiny, records, skops_file
from tests.factories import Actor, Factory, Org, api_key_headers
from tests.model_server.test_model_server_hostile import server_settings

OPERATOR_KEY = "operator-key-for-the-tenancy-tests"
OPERATOR = {"X-API-Key": OPERATOR_KEY}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The platform's (and an in-process model server's): access tokens live 60 s, and
    the model server would trust a checked credential for 300 s."""
    return make_settings(
        access_token_ttl_seconds=60, model_server_auth_cache_seconds=300, model_server_api_keys=[OPERATOR_KEY]
    )


# --- helpers -----------------------------------------------------------------------------------
@dataclass
class Tenant:
    org: str
    admin: Actor
    project: str
    model_id: str
    inference_key: dict[str, str]


def tenant(
    client: TestClient, factory: Factory, name: str, visibility: str, model: Any, version: str
) -> Tenant:
    """An organisation with an admin and a project holding a registry model "Fraud"."""
    org = Org.new(factory, name)
    admin = org.admin
    project = org.project(visibility, name=f"{name} fraud")
    created = client.post(
        f"/api/v1/projects/{project}/models",
        json={"name": "Fraud", "model_type": "classification"},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["data"]["id"]
    uploaded = client.post(
        f"/api/v1/models/{model_id}/versions",
        data={"model_schema": json.dumps(SCHEMA), "version": version},
        files={"model_file": ("fraud.skops", skops_file(model), "application/octet-stream")},
        headers=admin.headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    key = api_key_headers(org.api_key({"inference": ["read"]}))
    return Tenant(org.id, admin, project, model_id, key)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    return body["error"]


# --- the squat --------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_name_in_two_organisations_is_two_models(
    client: TestClient,
    factory: Factory,
    make_settings: Callable[..., Settings],
    model_server: Callable[..., RunningProcess],
    tiny: Tiny,
    tmp_path: Path,
) -> None:
    alice = tenant(client, factory, "Acme", "organization", tiny.first, "1.0.0")
    bob = tenant(client, factory, "Evil", "public", tiny.second, "6.6.6")  # any signed-in user reads it
    models = tmp_path / "models"
    models.mkdir()
    (models / "shared.skops").write_bytes(skops_file(tiny.first))
    server = model_server(
        make_settings(
            model_server_api_keys=[OPERATOR_KEY],
            model_server_models_dir=models,
            model_server_preload=["shared=file:shared.skops"],
        )
    )
    rows = records(tiny.X[:6])
    theirs = tiny.second.predict(tiny.X[:6]).tolist()
    ours = tiny.first.predict(tiny.X[:6]).tolist()
    assert ours != theirs

    with httpx.Client(base_url=server.base_url, timeout=30) as http:

        def predictions(name: str, headers: dict[str, str]) -> tuple[list[Any], str]:
            answer = ok(
                http.post(
                    "/api/v1/batch-predict", json={"features": rows, "model_name": name}, headers=headers
                )
            )
            return [p["prediction"] for p in answer["predictions"]], answer["model_version"]

        # Bob takes "fraud" first, from his public project; Alice still gets "fraud" for hers.
        squatted = ok(
            http.post(
                "/api/v1/models/load",
                json={"model_id": bob.model_id, "model_name": "fraud"},
                headers=bob.admin.headers,
            )
        )
        assert squatted["namespace"] == bob.org
        loaded = ok(
            http.post(
                "/api/v1/models/load",
                json={"model_id": alice.model_id, "model_name": "fraud"},
                headers=alice.admin.headers,
            )
        )
        assert loaded["namespace"] == alice.org
        assert loaded["replaced_version"] is None

        # Each organisation's callers get their own organisation's model under the name.
        assert predictions("fraud", alice.admin.headers) == (ours, "1.0.0")
        assert predictions("fraud", alice.inference_key) == (ours, "1.0.0")
        assert predictions("fraud", bob.admin.headers) == (theirs, "6.6.6")
        one = ok(http.post("/api/v1/predict/fraud", json={"features": rows[0]}, headers=alice.inference_key))
        assert (one["prediction"], one["model_version"]) == (ours[0], "1.0.0")
        tensor = {
            "name": "input",
            "shape": [6, len(FEATURES)],
            "datatype": "FP64",
            "data": tiny.X[:6].ravel().tolist(),
        }
        oip = ok(http.post("/v2/models/fraud/infer", json={"inputs": [tensor]}, headers=alice.inference_key))
        assert oip["model_version"] == "1.0.0"
        assert oip["outputs"][0]["data"] == ours
        info = ok(http.get("/api/v1/models/fraud/info", headers=alice.inference_key))
        assert (info["organization_id"], info["namespace"]) == (alice.org, alice.org)

        # Listings, status and metrics name no other organisation's models.
        for who, other in ((alice, bob), (bob, alice)):
            listed = http.get("/api/v1/models", headers=who.admin.headers)
            assert {(m["name"], m["namespace"]) for m in ok(listed)["models"]} == {
                ("shared", None),
                ("fraud", who.org),
            }
            assert ok(listed)["default_model"] == "shared"
            assert other.org not in listed.text
            status = http.get("/api/v1/status", headers=who.admin.headers)
            assert {(m["name"], m["namespace"]) for m in ok(status)["models"]} == {
                ("shared", None),
                ("fraud", who.org),
            }
            assert ok(status)["cache"] is None
            assert other.org not in status.text
            metrics = http.get("/api/v1/metrics", headers=who.admin.headers)
            assert metrics.status_code == 200
            assert f'model="fraud",organization="{who.org}"' in metrics.text
            assert other.org not in metrics.text
            assert "process_resident_memory_bytes" not in metrics.text
            assert "maestro_model_server_models_loaded" not in metrics.text
        assert "6.6.6" not in http.get("/api/v1/metrics", headers=alice.admin.headers).text
        health = ok(http.get("/api/v1/health"))  # anonymous: counts only the server's own models
        assert health["checks"]["models"]["loaded"] == 1
        everything = ok(http.get("/api/v1/models", headers=OPERATOR))
        assert {(m["name"], m["namespace"]) for m in everything["models"]} == {
            ("shared", None),
            ("fraud", alice.org),
            ("fraud", bob.org),
        }
        scraped = http.get("/api/v1/metrics", headers={"Authorization": f"Bearer {OPERATOR_KEY}"}).text
        assert alice.org in scraped
        assert bob.org in scraped

        # The operator's names and the default are no platform user's to take or unload.
        taken = http.post(
            "/api/v1/models/load",
            json={"model_id": bob.model_id, "model_name": "shared"},
            headers=bob.admin.headers,
        )
        error(taken, 409, "CONFLICT")
        error(
            http.delete("/api/v1/models/shared", headers=bob.admin.headers), 403, "INSUFFICIENT_PERMISSIONS"
        )
        scored = ok(
            http.post("/invocations", json={"instances": tiny.X[:6].tolist()}, headers=bob.admin.headers)
        )
        assert scored["predictions"] == ours  # the operator's default, never bob's model
        default = ok(
            http.post("/api/v1/predict", json={"features": tiny.X[0].tolist()}, headers=bob.admin.headers)
        )
        assert default["model_name"] == "shared"

        # Alice unloads her "fraud"; the name then finds nothing for her, never Bob's model.
        gone = ok(http.delete("/api/v1/models/fraud", headers=alice.admin.headers))
        assert gone["namespace"] == alice.org
        error(http.delete("/api/v1/models/fraud", headers=alice.admin.headers), 404, "RESOURCE_NOT_FOUND")
        error(
            http.post("/api/v1/predict/fraud", json={"features": rows[0]}, headers=alice.admin.headers),
            404,
            "RESOURCE_NOT_FOUND",
        )
        assert predictions("fraud", bob.admin.headers) == (theirs, "6.6.6")

        # The operator reaches an organisation's names with X-Organization-ID.
        removed = ok(http.delete("/api/v1/models/fraud", headers={**OPERATOR, "X-Organization-ID": bob.org}))
        assert removed["namespace"] == bob.org
        assert ok(http.get("/api/v1/models", headers=OPERATOR))["count"] == 1


def test_a_platform_user_loads_only_into_the_organisation_it_acts_in(
    client: TestClient, factory: Factory, settings: Settings, tiny: Tiny
) -> None:
    alice = tenant(client, factory, "Acme", "organization", tiny.first, "1.0.0")
    labs = factory.organization("Acme labs")
    with factory.database.session() as session:
        session.add(Membership(organization_id=labs, user_id=alice.admin.user_id, role="admin"))
    load = {"model_id": alice.model_id, "model_name": "fraud"}
    with TestClient(create_model_server(settings), raise_server_exceptions=False) as http:
        # Acting in her other organisation, Alice may not put Acme's model among its names.
        elsewhere = http.post(
            "/api/v1/models/load", json=load, headers={**alice.admin.headers, "X-Organization-ID": labs}
        )
        assert "another organisation" in error(elsewhere, 403, "INSUFFICIENT_PERMISSIONS")["message"]
        # An inference key may predict, not load.
        error(
            http.post("/api/v1/models/load", json=load, headers=alice.inference_key),
            403,
            "INSUFFICIENT_PERMISSIONS",
        )
        assert ok(http.get("/api/v1/models", headers=OPERATOR))["count"] == 0
        loaded = ok(http.post("/api/v1/models/load", json=load, headers=alice.admin.headers))
        assert loaded["namespace"] == alice.org
        assert (
            ok(http.get("/api/v1/models", headers={**alice.admin.headers, "X-Organization-ID": labs}))[
                "count"
            ]
            == 0
        )


# --- credentials are trusted no longer than they live --------------------------------------------
class Clocks:
    """A monotonic and a wall clock that move only when told."""

    def __init__(self) -> None:
        self.seconds = 1000.0
        self.wall = utcnow()

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.wall += timedelta(seconds=seconds)


def test_a_remembered_credential_ends_at_its_expiry_exactly() -> None:
    clocks = Clocks()
    memory = CredentialCache(1.0, clock=clocks.monotonic, now=clocks.now)
    principal = Principal(kind="api_key", id="key_x", organization_id="org_x")

    memory.remember("mk_expiring", None, principal, clocks.now() + timedelta(seconds=0.25))
    memory.remember("mk_lasting", None, principal, None)
    memory.remember("mk_expired", None, principal, clocks.now() - timedelta(seconds=1))
    memory.remember("mk_long", None, principal, clocks.now() + timedelta(days=1))
    assert memory.get(memory.key("mk_expired", None)) is None  # never remembered

    clocks.advance(0.125)
    assert memory.get(memory.key("mk_expiring", None)) is principal
    clocks.advance(0.125)  # exactly at its expiry: no overshoot
    assert memory.get(memory.key("mk_expiring", None)) is None
    assert memory.get(memory.key("mk_lasting", None)) is principal

    clocks.advance(0.625)  # past three quarters of the TTL: one caller checks again
    assert memory.get(memory.key("mk_long", None)) is None
    assert memory.get(memory.key("mk_long", None)) is principal  # the others keep it meanwhile
    clocks.advance(0.125)  # one second in all: the TTL caps the rest
    assert memory.get(memory.key("mk_lasting", None)) is None
    assert memory.get(memory.key("mk_long", None)) is None


def test_the_default_window_is_the_platforms() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.model_server_auth_cache_seconds == defaults.auth_cache_seconds == 1.0


def _request(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


def test_the_model_server_caps_what_it_remembers_at_the_credentials_expiry(
    client: TestClient, factory: Factory, settings: Settings
) -> None:
    """The model server trusts credentials for 300 s here, longer than either lives."""
    org = factory.organization("Acme")
    user = factory.user(org, "admin")  # its access token lives 60 s
    key_expiry = utcnow() + timedelta(seconds=30)
    key = {"X-API-Key": factory.api_key(org, {"inference": ["read"]}, expires_at=key_expiry)}
    token_expiry = datetime.fromtimestamp(json.loads(_jwt_payload(user.access_token))["exp"], tz=UTC)
    with TestClient(create_model_server(settings), raise_server_exceptions=False) as server_client:
        auth = server_client.app.state.model_server.auth  # type: ignore[attr-defined]
        clocks = Clocks()
        auth.callers.clock, auth.callers.now = clocks.monotonic, clocks.now
        for headers in (key, user.headers):
            assert server_client.get("/api/v1/models", headers=headers).status_code == 200
            assert auth.cached(_request(headers)) is not None

        clocks.advance((key_expiry - clocks.wall).total_seconds() - 0.001)
        assert auth.cached(_request(key)) is not None  # a moment before the key expires
        clocks.advance(0.002)
        assert auth.cached(_request(key)) is None  # past it: the platform must be asked again
        assert auth.cached(_request(user.headers)) is not None
        clocks.advance((token_expiry - clocks.wall).total_seconds() - 0.001)
        assert auth.cached(_request(user.headers)) is not None
        clocks.advance(0.002)
        assert auth.cached(_request(user.headers)) is None  # the token's exp ends it too


def _jwt_payload(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


# --- every call gets an answer --------------------------------------------------------------------
def _stops() -> None:
    raise StopIteration  # what a stray next() on an exhausted iterator raises


def test_a_stop_iteration_becomes_a_500_in_the_error_shape() -> None:
    with pytest.raises(ServingError) as raised:
        guarded(_stops)
    assert raised.value.status_code == 500
    assert raised.value.code == "INTERNAL_SERVER_ERROR"
    assert "StopIteration" in raised.value.message


def test_the_prediction_threads_answer_whatever_the_call_raises(tmp_path: Path) -> None:
    """A StopIteration cannot be set on an asyncio future: raised in an executor it used
    to leave the awaiting request waiting forever. ``ModelServer.run`` answers it."""
    server = ModelServer(server_settings(tmp_path))

    async def call() -> None:
        # The timeout only keeps a regression from hanging the suite.
        await asyncio.wait_for(server.run(_stops), timeout=60)

    try:
        with pytest.raises(ServingError) as raised:
            asyncio.run(call())
        assert raised.value.status_code == 500
        with pytest.raises(ServingError):  # any other exception: the same answer
            asyncio.run(asyncio.wait_for(server.run(lambda: 1 / 0), timeout=60))
    finally:
        server.close()
