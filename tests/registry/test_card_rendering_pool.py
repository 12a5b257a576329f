"""Model card PDFs render in the shared pool for CPU-heavy work: one organisation
asking for many at once gets ``429`` beyond its share, while another organisation's
cards are still rendered; with every turn taken, a request answers ``503``. The first
PDF is held mid-flight by the pool's admission hook until the test lets it go."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from maestro.api.heavy import HeavyWork
from maestro.config import Settings
from tests.conftest import RunningProcess, wait_until
from tests.factories import World
from tests.registry.conftest import new_model, new_version


@pytest.fixture(
    params=[pytest.param(True, marks=pytest.mark.slow, id="processes"), pytest.param(False, id="threads")]
)
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        heavy_workers=2,
        heavy_per_owner=1,
        heavy_queue_per_owner=0,
        heavy_queue=0,
        heavy_processes=request.param,
    )


class Gate:
    """Holds every admitted piece of work of one organisation until opened."""

    def __init__(self, organization_id: str) -> None:
        self.owner = f"organization:{organization_id}"
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, owners: tuple[str, ...]) -> None:
        if self.owner in owners:
            self.entered.set()
            assert self.opened.wait(60)


@pytest.fixture
def gate(app: FastAPI, world: World) -> Iterator[Gate]:
    gate = Gate(world.org)
    app.state.heavy.on_admitted = gate
    yield gate
    gate.opened.set()


def generate_url(client: TestClient, world: World, project: str, headers: dict[str, str]) -> str:
    model = new_model(client, project, headers)
    new_version(client, model["id"], headers)
    return f"/api/v1/models/{model['id']}/versions/1.0.0/card/generate"


def in_background(call: Callable[[], Response]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("response", call()), daemon=True)
    thread.start()
    return thread, result


def is_pdf(response: Response) -> bool:
    return (
        response.status_code == 200
        and response.headers["content-type"] == "application/pdf"
        and response.content.startswith(b"%PDF-")
    )


def test_one_organisation_beyond_its_share_while_another_is_served(
    app: FastAPI, client: TestClient, world: World, gate: Gate
) -> None:
    mine = generate_url(client, world, world.project, world.developer.headers)
    theirs = generate_url(client, world, world.other_project, world.outsider.headers)
    first, result = in_background(lambda: client.post(mine, headers=world.developer.headers))
    assert gate.entered.wait(60)  # the first PDF holds the organisation's one turn
    for headers in (world.developer.headers, world.viewer.headers):  # the caller, and a colleague
        refused = client.post(mine, headers=headers)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["success"] is False and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert is_pdf(client.post(theirs, headers=world.outsider.headers))
    gate.opened.set()
    first.join(60)
    assert is_pdf(result["response"])
    assert app.state.heavy.stats() == {"running": 0, "waiting": 0}
    assert is_pdf(client.post(mine, headers=world.viewer.headers))  # the turn was given back


def test_with_every_turn_taken_another_organisation_gets_503(
    app: FastAPI, client: TestClient, world: World, settings: Settings
) -> None:
    gate = Gate(world.org)
    app.state.heavy = HeavyWork(
        workers=1, per_owner=1, owner_queue=0, queue=0, processes=settings.heavy_processes, on_admitted=gate
    )
    mine = generate_url(client, world, world.project, world.developer.headers)
    theirs = generate_url(client, world, world.other_project, world.outsider.headers)
    first, result = in_background(lambda: client.post(mine, headers=world.developer.headers))
    try:
        assert gate.entered.wait(60)
        busy = client.post(theirs, headers=world.outsider.headers)
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    finally:
        gate.opened.set()
        first.join(60)
    assert is_pdf(result["response"])
    assert is_pdf(client.post(theirs, headers=world.outsider.headers))


def children_running(parent: int, marker: str) -> list[int]:
    """Processes whose parent is ``parent`` and whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and marker in command:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_real_server_renders_in_worker_processes_and_stops_with_them(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    server = serve(make_settings(heavy_workers=1))
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        signup = client.post(
            "/api/v1/auth/register",
            json={
                "email": "cards@example.com",
                "password": "correct horse battery",
                "organization_name": "C",
            },
        )
        assert signup.status_code == 201, signup.text
        client.headers["Authorization"] = f"Bearer {signup.json()['data']['access_token']}"
        organization = signup.json()["data"]["user"]["current_organization"]["id"]
        project = client.post(f"/api/v1/organizations/{organization}/projects", json={"name": "p"}).json()
        model = client.post(
            f"/api/v1/projects/{project['data']['id']}/models", json={"name": "m", "model_type": "other"}
        ).json()["data"]
        version = client.post(
            f"/api/v1/models/{model['id']}/versions",
            files={"model_file": ("model.bin", b"model bytes", "application/octet-stream")},
        )
        assert version.status_code == 201, version.text
        assert is_pdf(client.post(f"/api/v1/models/{model['id']}/versions/1.0.0/card/generate"))
    workers = children_running(server.process.pid, "multiprocessing.spawn")
    assert len(workers) == 1
    server.stop()
    assert server.process.returncode is not None
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
