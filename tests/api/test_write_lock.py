"""No tenant can hold the database's write lock for others: authenticating and reading
a request body take no write lock, a client that stops sending its body is answered
408 and disconnected with nothing of it kept, POSTs that only read run on readers,
and a write that cannot get the lock in time answers 503 with Retry-After, never 500."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from maestro.app import create_app
from maestro.config import Settings
from maestro.files.models import StoredFile
from maestro.identity.models import AuditLog
from maestro.registry.models import ModelVersion
from maestro.storage import TEMP_DIR, ArtifactStore
from tests.conftest import RunningProcess, wait_until
from tests.factories import Actor, Factory, Org


@dataclass
class Tenants:
    victim: Actor
    victim_project: str
    attacker: Actor
    attacker_project: str
    foreign_jobs_key: str  # an API key of a third organisation that may only read jobs


def tenants(factory: Factory) -> Tenants:
    victim, attacker, bystander = (Org.new(factory, name) for name in ("Victim", "Attacker", "Bystander"))
    return Tenants(
        victim=victim.admin,
        victim_project=victim.project("private"),
        attacker=attacker.admin,
        attacker_project=attacker.project("private"),
        foreign_jobs_key=bystander.api_key({"jobs": ["read"]}),
    )


def new_model(client: Any, project: str, headers: dict[str, str], name: str) -> str:
    created = client.post(
        f"/api/v1/projects/{project}/models",
        json={"name": name, "model_type": "classification"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["success"] is False
    return body["error"]


# --- stalled request bodies against a real server ---------------------------------------------
def open_stalled_request(
    base_url: str,
    path: str,
    headers: dict[str, str],
    content_type: str,
    first_bytes: bytes,
    method: str = "POST",
) -> socket.socket:
    """Send a request's headers and the first bytes of a body promised to be much
    longer, and keep the connection open without sending the rest."""
    url = urlparse(base_url)
    connection = socket.create_connection((url.hostname, url.port))
    head = "".join(
        [
            f"{method} {path} HTTP/1.1\r\n",
            f"Host: {url.netloc}\r\n",
            *(f"{name}: {value}\r\n" for name, value in headers.items()),
            f"Content-Type: {content_type}\r\n",
            f"Content-Length: {len(first_bytes) + 100_000}\r\n\r\n",
        ]
    )
    connection.sendall(head.encode() + first_bytes)
    return connection


def unanswered(connection: socket.socket) -> bool:
    """The server has neither answered nor closed the connection (yet)."""
    connection.setblocking(False)
    try:
        connection.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        connection.setblocking(True)
    return False


def final_answer(connection: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Everything the server sends until it closes the connection: status, headers, body."""
    connection.settimeout(60)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, orjson.loads(body)


def store_files(settings: Settings) -> list[Path]:
    root = Path(ArtifactStore(settings.resolved_storage_url).root)
    return sorted(path for path in root.rglob("*") if path.is_file())


def partial_files(settings: Settings) -> list[Path]:
    root = Path(ArtifactStore(settings.resolved_storage_url).root)
    return sorted((root / TEMP_DIR).glob("*.part"))


@pytest.mark.slow
def test_stalled_bodies_hold_no_lock_and_leave_nothing_behind(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    """Four clients stop sending mid-body, with the attacker's token and with a
    jobs-only API key of another organisation; one stalls in the middle of the file.
    Meanwhile another tenant signs in, writes and uploads, although a write waiting
    for the lock would fail after one second. Then each stalled client is answered 408
    and disconnected, and no file or row of its upload remains."""
    settings = make_settings(sqlite_busy_timeout_ms=1000, request_body_timeout_seconds=8)
    app = create_app(settings)
    factory = Factory(app)
    world = tenants(factory)
    server = serve(settings)
    base = server.base_url
    with httpx.Client(base_url=base) as client:
        victim_model = new_model(client, world.victim_project, world.victim.headers, "Churn")
        attacker_model = new_model(client, world.attacker_project, world.attacker.headers, "Bait")

    multipart = "multipart/form-data; boundary=XX"
    file_part = b'--XX\r\nContent-Disposition: form-data; name="model_file"; filename="m.bin"\r\n\r\nbytes'
    stalls = [
        open_stalled_request(
            base,
            f"/api/v1/upload/datasets?project_id={world.attacker_project}",
            world.attacker.headers,
            multipart,
            b"--XX\r\n",
        ),
        open_stalled_request(
            base, "/api/v1/upload/models", {"X-API-Key": world.foreign_jobs_key}, multipart, b"--XX\r\n"
        ),
        open_stalled_request(
            base, f"/api/v1/models/{attacker_model}/versions", world.attacker.headers, multipart, file_part
        ),
        open_stalled_request(
            base,
            f"/api/v1/models/{attacker_model}/tags/stalled",
            world.attacker.headers,
            "application/json",
            b'{"value": "',
            method="PUT",
        ),
    ]
    try:
        # The version upload was authorised and its file is arriving: the part file exists.
        wait_until(lambda: partial_files(settings))

        signed_in = httpx.post(
            f"{base}/api/v1/auth/login",
            json={"email": world.victim.email, "password": world.victim.password},
        )
        assert signed_in.status_code == 200, signed_in.text
        token = {"Authorization": f"Bearer {signed_in.json()['data']['access_token']}"}
        tagged = httpx.put(
            f"{base}/api/v1/models/{victim_model}/tags/ping", json={"value": "pong"}, headers=token
        )
        assert tagged.status_code == 200, tagged.text
        uploaded = httpx.post(
            f"{base}/api/v1/upload/datasets",
            params={"project_id": world.victim_project},
            files={"file": ("d.csv", b"a,b\n1,2\n", "text/csv")},
            headers=token,
        )
        assert uploaded.status_code == 201, uploaded.text
        assert all(unanswered(stall) for stall in stalls), "a stall ended before the other tenant was done"

        for stall in stalls:
            status, headers, body = final_answer(stall)  # returns once the server has closed it
            assert status == 408
            assert headers["connection"] == "close"
            assert headers["x-request-id"]
            assert body["success"] is False and body["error"]["code"] == "REQUEST_TIMEOUT"
    finally:
        for stall in stalls:
            stall.close()

    assert partial_files(settings) == []
    victim_file = uploaded.json()["data"]
    with app.state.database.session(write=False) as session:
        files = session.scalars(select(StoredFile)).all()
        assert [row.id for row in files] == [victim_file["id"]]
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
        assert [path.name for path in store_files(settings)] == [Path(files[0].storage_key).name]
    attacker_tags = httpx.get(f"{base}/api/v1/models/{attacker_model}/tags", headers=world.attacker.headers)
    assert attacker_tags.json()["data"] == []


# --- a write that cannot get the lock ---------------------------------------------------------
@contextmanager
def write_lock_held(settings: Settings) -> Iterator[None]:
    """Another party holds the lock a write needs: SQLite's one write lock, or on
    PostgreSQL the audit log (every write adds a row to it)."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = create_engine(url)
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE audit_logs IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            holder.rollback()
    engine.dispose()


@pytest.fixture
def locked_app(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Factory, Settings]]:
    # A write waits 50 ms for SQLite's lock; a PostgreSQL statement may run 2 s.
    settings = make_settings(sqlite_busy_timeout_ms=50, statement_timeout_ms=2000)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, Factory(app), settings


def test_a_write_that_cannot_get_the_lock_answers_503(
    locked_app: tuple[TestClient, Factory, Settings],
) -> None:
    client, factory, settings = locked_app
    world = tenants(factory)
    model = new_model(client, world.victim_project, world.victim.headers, "Churn")
    tag_url = f"/api/v1/models/{model}/tags/ping"

    with write_lock_held(settings):
        refused = client.put(tag_url, json={"value": "pong"}, headers=world.victim.headers)
        assert refused.status_code == 503, refused.text
        assert error_of(refused)["code"] == "SERVICE_UNAVAILABLE"
        assert int(refused.headers["retry-after"]) >= 1
        read = client.get(f"/api/v1/models/{model}", headers=world.victim.headers)
        assert read.status_code == 200  # reads never wait for the lock

    assert client.get(f"/api/v1/models/{model}/tags", headers=world.victim.headers).json()["data"] == []
    retried = client.put(tag_url, json={"value": "pong"}, headers=world.victim.headers)
    assert retried.status_code == 200, retried.text


# --- POSTs that only read ---------------------------------------------------------------------
def audit_rows(factory: Factory, organization_id: str) -> list[AuditLog]:
    with factory.database.session(write=False) as session:
        return list(session.scalars(select(AuditLog).where(AuditLog.organization_id == organization_id)))


def test_read_only_posts_need_no_lock_and_leave_no_audit_row(
    locked_app: tuple[TestClient, Factory, Settings],
) -> None:
    """Run searches and card validation and rendering answer while another party holds
    the write lock, and an outsider reading a public project's card adds nothing to the
    owner's audit log."""
    client, factory, settings = locked_app
    owner_org = factory.organization("Owner")
    owner = factory.user(owner_org, "admin")
    public = factory.project(owner_org, owner, "public")
    outsider = factory.user(factory.organization("Outsider"), "admin")
    model = new_model(client, public, owner.headers, "Open model")
    version = client.post(
        f"/api/v1/models/{model}/versions",
        files={"model_file": ("m.bin", b"\x08\x08" + b"\xff" * 20, "application/octet-stream")},
        headers=owner.headers,
    )
    assert version.status_code == 201, version.text
    card = f"/api/v1/models/{model}/versions/{version.json()['data']['version']}/card"
    experiment = client.post(
        f"/api/v1/projects/{public}/experiments", json={"name": "Open"}, headers=owner.headers
    ).json()["data"]["id"]
    before = len(audit_rows(factory, owner_org))

    with write_lock_held(settings):
        for headers in (owner.headers, outsider.headers):
            searched = client.post(
                f"/api/v1/experiments/{experiment}/runs/search",
                json={"filter": "tags.team = 'a'"},
                headers=headers,
            )
            assert searched.status_code == 200, searched.text
            across = client.post(f"/api/v1/projects/{public}/runs/search", json={}, headers=headers)
            assert across.status_code == 200, across.text
            validated = client.post(f"{card}/validate", json={}, headers=headers)
            assert validated.status_code == 200, validated.text
            rendered = client.post(f"{card}/generate", json={}, headers=headers)
            assert rendered.status_code == 200, rendered.text
            assert rendered.content.startswith(b"%PDF")

    assert len(audit_rows(factory, owner_org)) == before
