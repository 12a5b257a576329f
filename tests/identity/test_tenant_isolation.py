"""Another tenant's id must be indistinguishable from an id that does not exist:
same status, same code, same message."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.jobs.maintenance import PROBE
from tests.factories import Factory


@pytest.mark.parametrize(
    ("method", "template", "make"),
    [
        ("GET", "/api/v1/organizations/{}", "organization"),
        ("GET", "/api/v1/organizations/{}/users", "organization"),
        ("GET", "/api/v1/organizations/{}/audit-logs", "organization"),
        ("GET", "/api/v1/projects/{}", "project"),
        ("DELETE", "/api/v1/projects/{}", "project"),
        ("GET", "/api/v1/jobs/{}", "job"),
        ("DELETE", "/api/v1/api-keys/{}", "api_key"),
        ("GET", "/api/v1/models/{}", "model"),
        ("GET", "/api/v1/projects/{}/models", "project"),
    ],
)
def test_foreign_ids_answer_like_missing_ones(
    client: TestClient, app: FastAPI, factory: Factory, method: str, template: str, make: str
) -> None:
    prober = factory.user(factory.organization(), role="admin")
    victim_org = factory.organization()
    victim = factory.user(victim_org, role="admin")
    if make == "organization":
        foreign, missing = victim_org, "org_00000000000000000000000000"
    elif make == "project":
        foreign, missing = factory.project(victim_org, victim), "proj_00000000000000000000000000"
    elif make == "job":
        with app.state.database.session() as session:
            foreign = app.state.queue.submit(session, PROBE, {}, organization_id=victim_org).id
        missing = "job_00000000000000000000000000"
    elif make == "model":
        from maestro.registry.models import RegisteredModel

        project = factory.project(victim_org, victim)
        with app.state.database.session() as session:
            model = RegisteredModel(
                organization_id=victim_org, project_id=project, name="secret", model_type="other"
            )
            session.add(model)
        foreign, missing = model.id, "model_00000000000000000000000000"
    else:
        factory.api_key(victim_org, {})
        from sqlalchemy import select

        from maestro.identity.models import ApiKey

        with app.state.database.session(write=False) as session:
            foreign = session.scalar(select(ApiKey.id).where(ApiKey.organization_id == victim_org))
        missing = "key_00000000000000000000000000"

    answers = [
        client.request(method, template.format(identifier), headers=prober.headers)
        for identifier in (foreign, missing)
    ]
    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0].json()["error"] == answers[1].json()["error"]
