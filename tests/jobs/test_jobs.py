from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from maestro.app import create_app
from maestro.config import Settings
from maestro.db import utcnow
from maestro.errors import ValidationFailed
from maestro.jobs import service
from maestro.jobs.maintenance import CLEANUP, PROBE
from maestro.jobs.models import Job, JobStatus
from maestro.jobs.queue import JobQueue
from tests.conftest import wait_until
from tests.factories import Actor, Factory


def submit(app: FastAPI, kind: str, organization_id: str | None = None, **params: object) -> str:
    with app.state.database.session() as session:
        return app.state.queue.submit(session, kind, params, organization_id=organization_id).id


def job_body(client: TestClient, job_id: str, actor: Actor) -> dict:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=actor.headers)
    assert response.status_code == 200
    return response.json()["data"]


def finished(client: TestClient, job_id: str, actor: Actor) -> dict | None:
    body = job_body(client, job_id, actor)
    return body if body["status"] in ("succeeded", "failed") else None


class TestInProcessConsumer:
    """`maestro serve` runs jobs in its own process when no worker is deployed."""

    @pytest.fixture
    def running(self, queue_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Actor]]:
        app = create_app(
            queue_settings(run_worker_in_process=True, job_heartbeat_interval=0.2, job_heartbeat_timeout=5)
        )
        factory = Factory(app)
        actor = factory.user(factory.organization(), role="viewer")
        with TestClient(app) as client:
            yield client, actor
        app.state.queue.huey.storage.flush_all()

    def test_probe_runs_and_reports_progress(self, running: tuple[TestClient, Actor]) -> None:
        client, actor = running
        job_id = submit(client.app, PROBE, actor.organization_id, duration_seconds=0.3, steps=3)  # type: ignore[arg-type]
        body = wait_until(lambda: finished(client, job_id, actor))
        assert body["status"] == "succeeded"
        assert body["progress"] == 1.0
        assert body["message"] == "step 3 of 3"
        assert body["result"]["steps"] == 3
        assert body["attempts"] == 1
        assert body["started_at"] <= body["finished_at"]

    def test_failure_is_recorded_with_its_reason(self, running: tuple[TestClient, Actor]) -> None:
        client, actor = running
        job_id = submit(client.app, PROBE, actor.organization_id, fail=True)  # type: ignore[arg-type]
        body = wait_until(lambda: finished(client, job_id, actor))
        assert body["status"] == "failed"
        assert body["error"] == "RuntimeError: the probe was asked to fail"
        assert body["result"] is None


class TestJobsApi:
    @pytest.fixture
    def actor(self, factory: Factory) -> Actor:
        return factory.user(factory.organization(), role="viewer")

    def test_unknown_job_is_404(self, client: TestClient, actor: Actor) -> None:
        response = client.get("/api/v1/jobs/job_00000000000000000000000000", headers=actor.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"

    @pytest.mark.parametrize(
        ("hostile", "status"),
        [("..%2f..%2fetc%2fpasswd", 404), ("%252e%252e%252f", 404), ("job_' OR '1'='1", 422)],
    )
    def test_path_tricks_are_refused(
        self, client: TestClient, actor: Actor, hostile: str, status: int
    ) -> None:
        """Malformed ids never reach a query: 422 naming the parameter, or 404 when the
        trick changes which route matches."""
        response = client.get(f"/api/v1/jobs/{hostile}", headers=actor.headers)
        assert response.status_code == status
        assert response.json()["success"] is False

    def test_overlong_id_is_rejected(self, client: TestClient, actor: Actor) -> None:
        assert client.get(f"/api/v1/jobs/job_{'x' * 200}", headers=actor.headers).status_code == 422

    def test_anonymous_is_401(self, client: TestClient, actor: Actor) -> None:
        job_id = submit(client.app, PROBE, actor.organization_id)  # type: ignore[arg-type]
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 401

    def test_queued_job_is_visible_before_any_worker_runs(self, client: TestClient, actor: Actor) -> None:
        job_id = submit(client.app, PROBE, actor.organization_id)  # type: ignore[arg-type]
        body = job_body(client, job_id, actor)
        assert body["status"] == "queued"
        assert body["progress"] == 0
        assert body["kind"] == PROBE
        assert body["organization_id"] == actor.organization_id

    def test_another_organisations_job_is_404(
        self, client: TestClient, factory: Factory, actor: Actor
    ) -> None:
        foreign = submit(client.app, PROBE, factory.organization())  # type: ignore[arg-type]
        assert client.get(f"/api/v1/jobs/{foreign}", headers=actor.headers).status_code == 404

    def test_system_jobs_are_not_served_to_tenants(self, client: TestClient, actor: Actor) -> None:
        system_job = submit(client.app, CLEANUP)  # type: ignore[arg-type]
        assert client.get(f"/api/v1/jobs/{system_job}", headers=actor.headers).status_code == 404

    def test_api_keys_need_the_jobs_scope(self, client: TestClient, factory: Factory, actor: Actor) -> None:
        job_id = submit(client.app, PROBE, actor.organization_id)  # type: ignore[arg-type]
        allowed = factory.api_key(actor.organization_id, {"jobs": ["read"]})  # type: ignore[arg-type]
        refused = factory.api_key(actor.organization_id, {"models": ["read"]})  # type: ignore[arg-type]
        assert client.get(f"/api/v1/jobs/{job_id}", headers={"X-API-Key": allowed}).status_code == 200
        assert client.get(f"/api/v1/jobs/{job_id}", headers={"X-API-Key": refused}).status_code == 403


@pytest.fixture
def queue(queue_settings: Callable[..., Settings]) -> Iterator[JobQueue]:
    """A queue with no consumer: tests drive execution and reaping themselves."""
    app = create_app(queue_settings(job_heartbeat_interval=0.1, job_heartbeat_timeout=1, job_max_attempts=2))
    yield app.state.queue
    app.state.queue.huey.storage.flush_all()
    app.state.database.dispose()


def status_of(queue: JobQueue, job_id: str) -> Job:
    with queue.database.session(write=False) as session:
        return service.get_job(session, job_id)


class TestSubmission:
    def test_unknown_kind_is_refused(self, queue: JobQueue) -> None:
        with pytest.raises(ValidationFailed), queue.database.session() as session:
            queue.submit(session, "rm -rf /")

    def test_nothing_is_enqueued_when_the_transaction_rolls_back(self, queue: JobQueue) -> None:
        with pytest.raises(RuntimeError), queue.database.session() as session:
            queue.submit(session, PROBE)
            raise RuntimeError("the request failed after submitting")
        assert queue.pending() == 0

    def test_enqueued_once_committed(self, queue: JobQueue) -> None:
        with queue.database.session() as session:
            queue.submit(session, PROBE)
            assert queue.pending() == 0  # not before the commit
        assert queue.pending() == 1

    def test_duplicate_delivery_runs_the_job_once(self, queue: JobQueue) -> None:
        with queue.database.session() as session:
            job_id = queue.submit(session, PROBE).id
        queue.execute(job_id)
        queue.execute(job_id)
        job = status_of(queue, job_id)
        assert job.status == JobStatus.succeeded
        assert job.attempts == 1


def expire_heartbeat(queue: JobQueue, job_id: str) -> None:
    with queue.database.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )


class TestReaper:
    def claimed(self, queue: JobQueue) -> service.ClaimedJob:
        with queue.database.session() as session:
            job_id = queue.submit(session, PROBE).id
        claim = service.claim(queue.database, job_id, "worker-that-dies")
        assert claim is not None
        return claim

    def test_live_jobs_are_left_alone(self, queue: JobQueue) -> None:
        claim = self.claimed(queue)
        report = queue.reap()
        assert report.requeued == report.failed == []
        assert status_of(queue, claim.id).status == JobStatus.running

    def test_lost_job_is_requeued_then_completed_by_another_worker(self, queue: JobQueue) -> None:
        claim = self.claimed(queue)
        expire_heartbeat(queue, claim.id)
        assert queue.reap().requeued == [claim.id]
        job = status_of(queue, claim.id)
        assert job.status == JobStatus.queued
        assert "worker lost during attempt 1" in (job.message or "")
        queue.execute(claim.id)
        job = status_of(queue, claim.id)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 2)

    def test_late_finish_of_a_replaced_attempt_is_dropped(self, queue: JobQueue) -> None:
        claim = self.claimed(queue)
        expire_heartbeat(queue, claim.id)
        queue.reap()
        second = service.claim(queue.database, claim.id, "replacement")
        assert second is not None and second.attempt == 2
        assert service.finish(queue.database, claim, result={"stale": True}) is False
        assert service.heartbeat(queue.database, claim) is False
        job = status_of(queue, claim.id)
        assert (job.status, job.worker) == (JobStatus.running, "replacement")

    def test_last_attempt_lost_fails_the_job(self, queue: JobQueue) -> None:
        claim = self.claimed(queue)
        for _ in range(queue.settings.job_max_attempts - 1):
            expire_heartbeat(queue, claim.id)
            queue.reap()
            claim = service.claim(queue.database, claim.id, "worker-that-dies")
            assert claim is not None
        expire_heartbeat(queue, claim.id)
        assert queue.reap().failed == [claim.id]
        job = status_of(queue, claim.id)
        assert job.status == JobStatus.failed
        assert job.error is not None and job.error.startswith("worker lost")
        assert job.finished_at is not None

    def test_long_waiting_job_is_delivered_again(self, queue: JobQueue) -> None:
        with queue.database.session() as session:
            job_id = queue.submit(session, PROBE).id
        queue.huey.storage.flush_queue()  # the message is lost
        with queue.database.session() as session:
            session.execute(update(Job).values(enqueued_at=utcnow() - timedelta(hours=1)))
        assert queue.reap().redelivered == [job_id]
        assert queue.pending() == 1


class TestMaintenance:
    def test_cleanup_removes_old_jobs_and_stale_uploads(self, queue: JobQueue) -> None:
        with queue.database.session() as session:
            old = queue.submit(session, PROBE).id
            recent = queue.submit(session, PROBE).id
        queue.execute(old)
        queue.execute(recent)
        with queue.database.session() as session:
            session.execute(
                update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=365))
            )

        writer = queue.store.writer("uploads")
        writer.write(b"half an upload")
        writer._file.close()  # the process died here: the temporary stays behind
        stale_age = time.time() - (queue.settings.stale_upload_hours + 1) * 3600
        os.utime(writer._write_path, (stale_age, stale_age))

        with queue.database.session() as session:
            cleanup_id = queue.submit(session, CLEANUP).id
        queue.execute(cleanup_id)
        job = status_of(queue, cleanup_id)
        assert job.status == JobStatus.succeeded
        assert job.result == {"temporary_files_removed": 1, "jobs_removed": 1, "webhook_records_removed": 0}
        assert not os.path.exists(writer._write_path)
        with pytest.raises(Exception, match="No such job"), queue.database.session() as session:
            service.get_job(session, old)
        assert status_of(queue, recent).status == JobStatus.succeeded

    def test_schedule_submits_one_cleanup_per_interval(self, queue_settings: Callable[..., Settings]) -> None:
        app = create_app(queue_settings(maintenance_interval_minutes=60))
        queue: JobQueue = app.state.queue
        queue.schedule_maintenance()
        queue.schedule_maintenance()
        with queue.database.session(write=False) as session:
            last = service.last_submitted(session, CLEANUP)
            assert last is not None
            count = session.query(Job).filter(Job.kind == CLEANUP).count()
        assert count == 1
        queue.huey.storage.flush_all()
        app.state.database.dispose()
