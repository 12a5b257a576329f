"""Real `maestro worker` processes: a worker killed with SIGKILL mid-job loses
nothing — the job is run again by another worker, or failed after its last attempt,
and never left `running`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maestro.app import create_app
from maestro.config import Settings
from maestro.jobs import service
from maestro.jobs.maintenance import PROBE
from maestro.jobs.models import Job, JobStatus
from tests.conftest import RunningProcess, wait_until
from tests.factories import Factory

pytestmark = pytest.mark.slow


def fast_failure_detection(make: Callable[..., Settings], **overrides: object) -> Settings:
    return make(
        job_heartbeat_interval=0.2,
        job_heartbeat_timeout=1.5,
        job_reaper_interval=0.3,
        worker_threads=1,
        **overrides,
    )


def read(settings: Settings, job_id: str) -> Job:
    app = create_app(settings)
    try:
        with app.state.database.session(write=False) as session:
            return service.get_job(session, job_id)
    finally:
        app.state.database.dispose()


def submit_probe(settings: Settings, seconds: float, organization_id: str | None = None) -> str:
    app = create_app(settings)
    try:
        with app.state.database.session() as session:
            params = {"duration_seconds": seconds, "steps": 20}
            return app.state.queue.submit(session, PROBE, params, organization_id=organization_id).id
    finally:
        app.state.database.dispose()


def kill_mid_job(settings: Settings, job_id: str, worker: RunningProcess) -> None:
    wait_until(lambda: read(settings, job_id).progress > 0.1, timeout=30)
    assert read(settings, job_id).status == JobStatus.running
    worker.kill()


class TestWorkerKilledMidJob:
    def test_job_is_retried_by_another_worker(
        self, queue_settings: Callable[..., Settings], spawn: Callable[..., RunningProcess]
    ) -> None:
        settings = fast_failure_detection(queue_settings, job_max_attempts=2)
        job_id = submit_probe(settings, seconds=2.0)
        doomed = spawn(["worker"], settings)
        kill_mid_job(settings, job_id, doomed)

        spawn(["worker"], settings)
        job = wait_until(
            lambda: (j := read(settings, job_id)).status == JobStatus.succeeded and j, timeout=60
        )
        assert job.attempts == 2
        assert job.result["attempt"] == 2
        assert job.progress == 1.0

    def test_job_fails_after_its_last_attempt(
        self, queue_settings: Callable[..., Settings], spawn: Callable[..., RunningProcess]
    ) -> None:
        settings = fast_failure_detection(queue_settings, job_max_attempts=1)
        job_id = submit_probe(settings, seconds=30.0)
        doomed = spawn(["worker"], settings)
        kill_mid_job(settings, job_id, doomed)

        spawn(["worker"], settings)  # its reaper notices the silence
        job = wait_until(lambda: (j := read(settings, job_id)).status == JobStatus.failed and j, timeout=60)
        assert job.error is not None and job.error.startswith("worker lost")
        assert job.attempts == 1


def test_serve_runs_jobs_submitted_from_another_process(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess], tmp_path: object
) -> None:
    """The CLI submits into the shared queue; the server's in-process consumer runs it."""
    import httpx

    settings = make_settings(run_worker_in_process=True)
    server = serve(settings)
    app = create_app(settings)
    factory = Factory(app)
    actor = factory.user(factory.organization(), role="viewer")
    app.state.database.dispose()
    job_id = submit_probe(settings, seconds=0.2, organization_id=actor.organization_id)

    def done() -> dict | None:
        data = httpx.get(f"{server.base_url}/api/v1/jobs/{job_id}", headers=actor.headers).json()["data"]
        return data if data["status"] == "succeeded" else None

    assert wait_until(done, timeout=30)["result"]["steps"] == 20
