"""Events the platform writes beside the registry's and deployments': jobs of an
organisation ending, and runs ending under the names subscribers see."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.events import service as events
from maestro.events.models import OutboxEvent
from maestro.jobs.maintenance import PROBE
from maestro.jobs.models import Job
from maestro.webhooks import relay
from maestro.webhooks.models import WebhookDelivery
from tests.factories import World
from tests.webhooks.conftest import Receiver, create_webhook


def outbox_types(app: FastAPI) -> list[str]:
    with app.state.database.session(write=False) as session:
        return list(
            session.scalars(select(OutboxEvent.type).order_by(OutboxEvent.created_at, OutboxEvent.id))
        )


def test_an_organisations_jobs_write_job_events(app: FastAPI, world: World) -> None:
    queue = app.state.queue
    with app.state.database.session() as session:
        done = queue.submit(session, PROBE, {"steps": 1}, organization_id=world.org).id
        broken = queue.submit(session, PROBE, {"steps": 1, "fail": True}, organization_id=world.org).id
        system = queue.submit(session, PROBE, {"steps": 1}).id
    for job_id in (done, broken, system):
        queue.execute(job_id)
    with app.state.database.session(write=False) as session:
        rows = session.scalars(select(OutboxEvent).where(OutboxEvent.type.like("job.%"))).all()
    found = {row.payload["job_id"]: (row.type, row.organization_id) for row in rows}
    assert found == {done: ("job.completed", world.org), broken: ("job.failed", world.org)}


def test_delivery_jobs_write_no_job_events(
    app: FastAPI, client: TestClient, world: World, receiver: Receiver
) -> None:
    create_webhook(client, world.org, world.admin.headers, receiver.url, ["model.created", "job.completed"])
    with app.state.database.session() as session:
        events.record(session, world.org, "model.created", {"model_id": "m", "name": "n", "project_id": "p"})
    relay.tick(app.state.queue)
    with app.state.database.session(write=False) as session:
        [job] = session.scalars(select(Job).where(Job.kind == relay.DELIVER)).all()
    app.state.queue.execute(job.id)
    assert len(receiver.wait_for(1)) == 1
    assert outbox_types(app) == ["model.created"]


def test_a_completed_run_is_delivered_as_run_finished(app: FastAPI, client: TestClient, world: World) -> None:
    hook = create_webhook(
        client, world.org, world.admin.headers, "https://93.184.215.14/hook", ["run.finished"]
    )
    with app.state.database.session() as session:
        events.record(session, world.org, "run.completed", {"run_id": "run_1"})
    relay.relay_outbox(app.state.database)
    with app.state.database.session(write=False) as session:
        [row] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook["id"])).all()
    assert row.event_type == "run.finished"
    assert '"type":"run.finished"' in row.body
