"""The short memory of checked credentials: a repeated credential costs no lookup, every
change to what a principal is built from applies at once in the process that made it,
and another process sees it within the TTL."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from maestro.app import create_app
from maestro.db import utcnow
from maestro.identity.credential_cache import ShortMemory
from maestro.identity.models import ApiKey
from tests.conftest import held_reads, wait_until
from tests.factories import Factory


def statements_during(app: FastAPI, call: Any) -> list[str]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(app.state.database.engine, "before_cursor_execute", note)
    try:
        call()
    finally:
        event.remove(app.state.database.engine, "before_cursor_execute", note)
    return seen


def test_a_repeated_credential_is_not_looked_up_again(app: FastAPI, factory: Factory) -> None:
    org = factory.organization()
    key = factory.api_key(org, {"organizations": ["read"]})
    client = TestClient(app)  # no lifespan, so no background statements
    headers = {"X-API-Key": key}
    assert client.get(f"/api/v1/organizations/{org}", headers=headers).status_code == 200
    again = statements_during(app, lambda: client.get(f"/api/v1/organizations/{org}", headers=headers))
    assert not any("api_keys" in statement for statement in again)


def test_a_role_change_applies_at_once(client: TestClient, factory: Factory) -> None:
    org = factory.organization()
    admin = factory.user(org, "admin")
    member = factory.user(org, "developer")
    project = factory.project(org, admin, "organization")
    body = {"name": "Churn", "model_type": "classification"}
    assert (
        client.post(f"/api/v1/projects/{project}/models", json=body, headers=member.headers).status_code
        == 201
    )
    demoted = client.put(
        f"/api/v1/organizations/{org}/users/{member.user_id}/role",
        json={"role": "viewer"},
        headers=admin.headers,
    )
    assert demoted.status_code == 200, demoted.text
    body["name"] = "Churn 2"
    assert (
        client.post(f"/api/v1/projects/{project}/models", json=body, headers=member.headers).status_code
        == 403
    )


def test_a_change_made_directly_in_the_database_applies_at_once(client: TestClient, factory: Factory) -> None:
    org = factory.organization()
    key = factory.api_key(org, {"organizations": ["read"]})
    assert client.get(f"/api/v1/organizations/{org}", headers={"X-API-Key": key}).status_code == 200
    with factory.database.session() as session:
        session.execute(update(ApiKey).where(ApiKey.organization_id == org).values(expires_at=utcnow()))
    assert client.get(f"/api/v1/organizations/{org}", headers={"X-API-Key": key}).status_code == 401


def test_another_process_sees_a_revocation_within_the_ttl(make_settings: Any) -> None:
    here = create_app(make_settings(auth_cache_seconds=0.2))
    elsewhere = create_app(make_settings(auth_cache_seconds=0.2))
    factory = Factory(here)
    org = factory.organization()
    admin = factory.user(org, "admin")
    viewer = factory.user(org, "viewer")
    with TestClient(here) as first, TestClient(elsewhere) as second:
        path = f"/api/v1/organizations/{org}"
        assert second.get(path, headers=viewer.headers).status_code == 200
        removed = first.delete(f"/api/v1/organizations/{org}/users/{viewer.user_id}", headers=admin.headers)
        assert removed.status_code == 204
        assert first.get(path, headers=viewer.headers).status_code == 404
        wait_until(lambda: second.get(path, headers=viewer.headers).status_code == 404, timeout=5)


def test_a_ttl_of_zero_checks_every_request(make_settings: Any) -> None:
    app = create_app(make_settings(auth_cache_seconds=0))
    factory = Factory(app)
    org = factory.organization()
    viewer = factory.user(org, "viewer")
    client = TestClient(app)
    path = f"/api/v1/organizations/{org}"
    assert client.get(path, headers=viewer.headers).status_code == 200
    again = statements_during(app, lambda: client.get(path, headers=viewer.headers))
    assert any("auth_sessions" in statement for statement in again)
    assert len(app.state.credential_cache) == 0


class MovableClock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_one_caller_checks_a_due_entry_again_while_the_others_keep_it() -> None:
    clock = MovableClock()
    memory = ShortMemory(1.0, clock=clock)
    memory.put("key", "principal")
    clock.seconds += 0.7
    assert memory.get("key") == "principal"
    clock.seconds += 0.1  # past three quarters of the TTL
    assert memory.peek("key") is None  # the fast path leaves the re-check to the next get
    assert memory.get("key") is None  # this caller checks again...
    assert memory.get("key") == memory.peek("key") == "principal"  # ...the others keep it
    memory.put("key", "checked again")
    clock.seconds += 0.7  # past the first entry's deadline, within the renewed one's
    assert memory.get("key") == "checked again"


def test_an_entry_whose_recheck_never_came_back_still_ends_at_its_deadline() -> None:
    clock = MovableClock()
    memory = ShortMemory(1.0, clock=clock)
    memory.put("key", "principal")
    clock.seconds += 0.8
    assert memory.get("key") is None  # claimed, then the caller failed to put anything
    clock.seconds += 0.2
    assert memory.get("key") is None
    assert len(memory) == 0


def remembered_key(app: FastAPI, factory: Factory) -> tuple[TestClient, str, dict[str, str], MovableClock]:
    """A key used once, so remembered, on a memory whose clock the test moves."""
    org = factory.organization()
    headers = {"X-API-Key": factory.api_key(org, {"organizations": ["read"]})}
    path = f"/api/v1/organizations/{org}"
    clock = MovableClock()
    app.state.credential_cache.clock = clock
    client = TestClient(app)
    assert client.get(path, headers=headers).status_code == 200
    return client, path, headers, clock


def test_requests_go_on_from_memory_while_one_of_them_checks_the_credential_again(
    app: FastAPI, factory: Factory
) -> None:
    client, path, headers, clock = remembered_key(app, factory)
    clock.seconds += 0.8  # due for its re-check

    release = threading.Event()
    lookups, entered = held_reads(app, "api_keys", hold=release)
    answers: list[int] = []
    checking = threading.Thread(target=lambda: answers.append(client.get(path, headers=headers).status_code))
    checking.start()
    try:
        assert entered.wait(30)  # one request is re-checking the key, held in its lookup
        for _ in range(3):  # the others are answered meanwhile, from memory
            assert client.get(path, headers=headers).status_code == 200
        assert len(lookups) == 1
    finally:
        release.set()
        checking.join(30)
    assert answers == [200]
    assert client.get(path, headers=headers).status_code == 200
    assert len(lookups) == 1  # renewed: no more lookups


def test_a_recheck_that_finds_the_key_revoked_ends_it_for_every_request(
    app: FastAPI, factory: Factory
) -> None:
    client, path, headers, clock = remembered_key(app, factory)
    # Revoked by another process: a plain statement, which this process's memory does not see.
    with app.state.database.engine.begin() as connection:
        connection.execute(update(ApiKey).values(expires_at=utcnow()))
    assert client.get(path, headers=headers).status_code == 200  # remembered, within the TTL
    clock.seconds += 0.8
    assert client.get(path, headers=headers).status_code == 401  # the re-check finds it revoked
    assert client.get(path, headers=headers).status_code == 401  # and nobody is served the old entry
