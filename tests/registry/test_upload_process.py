"""A server killed in the middle of an upload leaves no partial file visible and no
row pointing at a missing file."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
from sqlalchemy import func, select

from maestro.app import create_app
from maestro.config import Settings
from maestro.registry.models import ModelVersion
from maestro.storage import TEMP_DIR, ArtifactStore
from tests.conftest import RunningProcess, wait_until
from tests.factories import Factory


def test_killing_the_server_mid_upload_leaves_no_trace(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    settings = make_settings()
    app = create_app(settings)
    factory = Factory(app)
    org = factory.organization()
    admin = factory.user(org, "admin")
    project = factory.project(org, admin, "organization")
    server = serve(settings)
    created = httpx.post(
        f"{server.base_url}/api/v1/projects/{project}/models",
        json={"name": "Killed mid-upload", "model_type": "classification"},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["data"]["id"]
    root = Path(ArtifactStore(settings.resolved_storage_url).root)
    temporaries = root / TEMP_DIR

    url = urlparse(server.base_url)
    prologue = b'--bnd\r\nContent-Disposition: form-data; name="model_file"; filename="m.bin"\r\n\r\n'
    declared = len(prologue) + 10 * 1024 * 1024 + len(b"\r\n--bnd--\r\n")
    with socket.create_connection((url.hostname, url.port)) as connection:
        head = (
            f"POST /api/v1/models/{model_id}/versions HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n"
            f"Authorization: {admin.headers['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=bnd\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        connection.sendall(head + prologue)
        for _ in range(32):  # 2 MiB of the promised 10
            connection.sendall(b"z" * 65536)
        wait_until(lambda: any(path.stat().st_size > 0 for path in temporaries.glob("*.part")))
        server.kill()

    visible = [path for path in root.rglob("*") if path.is_file() and TEMP_DIR not in path.parts]
    assert visible == []
    with app.state.database.session(write=False) as session:
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
    # what is left is a temporary that maintenance removes
    assert ArtifactStore(settings.resolved_storage_url).remove_stale_temporaries(0) >= 1
    assert list(temporaries.glob("*.part")) == []
