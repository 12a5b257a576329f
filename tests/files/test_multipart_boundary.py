"""The multipart boundary of an upload: one longer than the parser accepts is a clear
415 in the error shape, on every upload route, and nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from maestro.api.multipart import MAX_BOUNDARY_LENGTH
from maestro.files.models import StoredFile
from maestro.storage import ArtifactStore
from tests.factories import Factory, World


def multipart_body(boundary: str, file_field: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="d.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\na,b\n1,2\n\r\n--{boundary}--\r\n"
    ).encode()


@pytest.fixture
def model_id(client: TestClient, world: World) -> str:
    created = client.post(
        f"/api/v1/projects/{world.project}/models",
        json={"name": "Boundaries", "model_type": "classification"},
        headers=world.admin.headers,
    )
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def upload_routes(world: World, model_id: str) -> list[tuple[str, str]]:
    return [
        (f"/api/v1/upload/datasets?project_id={world.project}", "file"),
        (f"/api/v1/upload/models?project_id={world.project}", "file"),
        (f"/api/v1/models/{model_id}/versions", "model_file"),
    ]


def test_an_overlong_boundary_is_refused(
    client: TestClient, factory: Factory, world: World, model_id: str
) -> None:
    boundary = "b" * (MAX_BOUNDARY_LENGTH + 1)
    for url, field in upload_routes(world, model_id):
        response = client.post(
            url,
            content=multipart_body(boundary, field),
            headers={**world.admin.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 415, (url, response.text)
        body = response.json()
        assert body["success"] is False
        assert body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        assert body["error"]["details"] == [
            {"field": "content-type", "message": f"a boundary of at most {MAX_BOUNDARY_LENGTH} characters"}
        ]
    with factory.database.session(write=False) as session:
        assert session.scalar(select(func.count(StoredFile.id))) == 0
    root = Path(ArtifactStore(factory.settings.resolved_storage_url).root)
    assert [path for path in root.rglob("*") if path.is_file()] == []


def test_the_longest_boundary_allowed_works(client: TestClient, world: World, model_id: str) -> None:
    boundary = "b" * MAX_BOUNDARY_LENGTH
    for url, field in upload_routes(world, model_id):
        response = client.post(
            url,
            content=multipart_body(boundary, field),
            headers={**world.admin.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 201, (url, response.text)
