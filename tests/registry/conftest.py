"""Helpers for the registry tests (who is who is the suite's ``world``): create models,
and put versions and events in place."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from maestro.events.models import OutboxEvent
from maestro.registry.models import ModelVersion
from tests.factories import Factory


def create_model(
    client: TestClient, project: str, headers: dict[str, str], name: str = "Fraud Detector", **body: Any
) -> Response:
    body.setdefault("model_type", "classification")
    return client.post(f"/api/v1/projects/{project}/models", json={"name": name, **body}, headers=headers)


def new_model(
    client: TestClient, project: str, headers: dict[str, str], name: str = "Fraud Detector", **body: Any
) -> dict:
    response = create_model(client, project, headers, name, **body)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def add_version(
    factory: Factory,
    model: dict,
    organization_id: str,
    version: str,
    *,
    stage: str = "development",
    metrics: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> str:
    """A version row written directly, as the upload endpoint will write it."""
    with factory.database.session() as session:
        row = ModelVersion(
            model_id=model["id"],
            organization_id=organization_id,
            version=version,
            stage=stage,
            performance_metrics=metrics or {},
        )
        if created_at is not None:
            row.created_at = created_at
        session.add(row)
        session.flush()
        return row.id


def outbox(factory: Factory) -> list[OutboxEvent]:
    with factory.database.session(write=False) as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.created_at, OutboxEvent.id)))


def upload(
    client: TestClient,
    model_id: str,
    headers: dict[str, str],
    content: bytes = b"model bytes",
    *,
    filename: str = "model.bin",
    **fields: Any,
) -> Response:
    """POST a version as multipart/form-data; dict fields are sent as JSON strings."""
    data = {name: json.dumps(value) if isinstance(value, dict) else value for name, value in fields.items()}
    return client.post(
        f"/api/v1/models/{model_id}/versions",
        data=data,
        files={"model_file": (filename, content, "application/octet-stream")},
        headers=headers,
    )


def new_version(client: TestClient, model_id: str, headers: dict[str, str], **kwargs: Any) -> dict:
    response = upload(client, model_id, headers, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def stored_files(root: Path) -> list[Path]:
    """Every file under the artifact store's root, temporaries included."""
    return sorted(path for path in root.rglob("*") if path.is_file())
