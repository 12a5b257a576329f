"""An organisation with one user per role and a project the whole organisation can see,
another organisation with its own experiment and run, and helpers that create
experiments and runs and log to them through the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from maestro.events.models import OutboxEvent
from maestro.identity.models import AuditLog
from tests.factories import Actor, Factory


@dataclass
class World:
    org: str
    admin: Actor
    developer: Actor
    viewer: Actor
    other_org: str
    outsider: Actor  # admin of the other organisation
    project: str  # visibility "organization"
    private: str  # a private project with no members but its creator
    other_project: str
    other_experiment: str  # an experiment of the other organisation
    other_run: str  # a run in it


def experiments_url(project: str) -> str:
    return f"/api/v1/projects/{project}/experiments"


def run_url(experiment: str, run: str) -> str:
    return f"/api/v1/experiments/{experiment}/runs/{run}"


def ok(response: Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def new_experiment(
    client: TestClient, project: str, headers: dict[str, str], name: str = "Tuning", **body: Any
) -> dict:
    return ok(client.post(experiments_url(project), json={"name": name, **body}, headers=headers), 201)


def new_run(client: TestClient, experiment: str, headers: dict[str, str], **body: Any) -> dict:
    return ok(client.post(f"/api/v1/experiments/{experiment}/runs", json=body, headers=headers), 201)


def log_metrics(
    client: TestClient, experiment: str, run: str, headers: dict[str, str], points: list[dict[str, Any]]
) -> Response:
    return client.post(f"{run_url(experiment, run)}/metrics", json={"metrics": points}, headers=headers)


def set_status(
    client: TestClient, experiment: str, run: str, headers: dict[str, str], status: str
) -> Response:
    return client.put(f"{run_url(experiment, run)}/status", json={"status": status}, headers=headers)


def error_of(response: Response) -> dict:
    body = response.json()
    assert body["success"] is False
    return body["error"]


def outbox(factory: Factory) -> list[OutboxEvent]:
    with factory.database.session(write=False) as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.created_at, OutboxEvent.id)))


def audit_rows(factory: Factory, organization_id: str, action: str) -> list[AuditLog]:
    with factory.database.session(write=False) as session:
        return list(
            session.scalars(
                select(AuditLog).where(AuditLog.organization_id == organization_id, AuditLog.action == action)
            )
        )


@pytest.fixture
def world(client: TestClient, factory: Factory) -> World:
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    other_org = factory.organization("Globex")
    outsider = factory.user(other_org, "admin")
    other_project = factory.project(other_org, outsider, "organization", name="Globex research")
    other_experiment = new_experiment(client, other_project, outsider.headers, "Globex tuning")["id"]
    other_run = new_run(client, other_experiment, outsider.headers)["id"]
    return World(
        org=org,
        admin=admin,
        developer=factory.user(org, "developer"),
        viewer=factory.user(org, "viewer"),
        other_org=other_org,
        outsider=outsider,
        project=factory.project(org, admin, "organization", name="Fraud"),
        private=factory.project(org, admin, "private", name="Secret"),
        other_project=other_project,
        other_experiment=other_experiment,
        other_run=other_run,
    )
