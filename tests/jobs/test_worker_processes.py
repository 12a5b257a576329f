"""Real `maestro worker` processes: a worker killed with SIGKILL mid-job loses
nothing — the job is run again by another worker, or failed after its last attempt,
and never left `running`.

Nothing here races the clock: the probe job is held mid-flight until the test releases
it (a file it waits for), so a worker is always killed while the job runs; and instead
of waiting for a heartbeat to grow old, the test makes the dead worker's last heartbeat
old, so the next worker's reaper finds it lost on its first sweep while live workers,
heartbeating far inside the timeout, are never suspected on a slow machine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from maestro.app import create_app
from maestro.config import Settings
from maestro.jobs import service
from maestro.jobs.maintenance import PROBE, PROBE_HOLDS
from maestro.jobs.models import Job, JobStatus
from tests.conftest import RunningProcess, wait_until
from tests.factories import Factory

pytestmark = pytest.mark.slow

# Live workers beat every 0.2 s and are lost only after 60 s of silence; their reapers
# sweep every 0.2 s.
WORKERS = {
    "job_heartbeat_interval": 0.2,
    "job_heartbeat_timeout": 60.0,
    "job_reaper_interval": 0.2,
    "worker_threads": 1,
}


class Jobs:
    """Submits probes, reads jobs and moves a job's heartbeat back in time, through
    one connection to the database the workers share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.database = self.app.state.database

    def submit(self, *, hold: str | None = None, organization_id: str | None = None) -> str:
        params: dict[str, object] = {"steps": 20}
        if hold is not None:
            params["hold"] = hold
        with self.database.session() as session:
            return self.app.state.queue.submit(session, PROBE, params, organization_id=organization_id).id

    def read(self, job_id: str) -> Job:
        with self.database.session(write=False) as session:
            return service.get_job(session, job_id)

    def until(self, job_id: str, condition: Callable[[Job], bool]) -> Job:
        def met() -> Job | None:
            job = self.read(job_id)
            return job if condition(job) else None

        return wait_until(met, timeout=60)

    def held(self, job_id: str, attempt: int) -> Job:
        """Until the job's ``attempt`` is running and held."""
        return self.until(
            job_id, lambda j: (j.status, j.attempts, j.message) == (JobStatus.running, attempt, "held")
        )

    def release(self, hold: str) -> None:
        folder = Path(self.settings.data_dir) / PROBE_HOLDS
        folder.mkdir(parents=True, exist_ok=True)
        (folder / hold).touch()

    def age_heartbeat(self, job_id: str, by: timedelta) -> None:
        with self.database.session() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.heartbeat_at is not None
            job.heartbeat_at -= by

    def close(self) -> None:
        self.database.dispose()


@pytest.fixture
def open_jobs() -> Iterator[Callable[[Settings], Jobs]]:
    opened: list[Jobs] = []

    def open_(settings: Settings) -> Jobs:
        opened.append(Jobs(settings))
        return opened[-1]

    yield open_
    for jobs in opened:
        jobs.close()


def kill_mid_job(jobs: Jobs, job_id: str, worker: RunningProcess) -> None:
    """Kill ``worker`` while it holds the job's first attempt, then let the silence
    last past the timeout."""
    jobs.held(job_id, attempt=1)
    worker.kill()
    jobs.age_heartbeat(job_id, by=timedelta(seconds=WORKERS["job_heartbeat_timeout"] * 2))


class TestWorkerKilledMidJob:
    def test_job_is_retried_by_another_worker(
        self,
        queue_settings: Callable[..., Settings],
        spawn: Callable[..., RunningProcess],
        open_jobs: Callable[[Settings], Jobs],
    ) -> None:
        settings = queue_settings(job_max_attempts=2, **WORKERS)
        jobs = open_jobs(settings)
        job_id = jobs.submit(hold="go")
        kill_mid_job(jobs, job_id, spawn(["worker"], settings))

        spawn(["worker"], settings)  # its reaper queues the job again, and it runs it
        jobs.held(job_id, attempt=2)
        jobs.release("go")
        job = jobs.until(job_id, lambda j: j.status in (JobStatus.succeeded, JobStatus.failed))
        assert job.status == JobStatus.succeeded, job.error
        assert job.attempts == 2
        assert job.result is not None and job.result["attempt"] == 2
        assert job.progress == 1.0

    def test_job_fails_after_its_last_attempt(
        self,
        queue_settings: Callable[..., Settings],
        spawn: Callable[..., RunningProcess],
        open_jobs: Callable[[Settings], Jobs],
    ) -> None:
        settings = queue_settings(job_max_attempts=1, **WORKERS)
        jobs = open_jobs(settings)
        job_id = jobs.submit(hold="never")
        kill_mid_job(jobs, job_id, spawn(["worker"], settings))

        spawn(["worker"], settings)  # its reaper notices the silence
        job = jobs.until(job_id, lambda j: j.status in (JobStatus.succeeded, JobStatus.failed))
        assert job.status == JobStatus.failed
        assert job.error is not None and job.error.startswith("worker lost")
        assert job.attempts == 1


def test_serve_runs_jobs_submitted_from_another_process(
    make_settings: Callable[..., Settings],
    serve: Callable[..., RunningProcess],
    open_jobs: Callable[[Settings], Jobs],
) -> None:
    """The CLI submits into the shared queue; the server's in-process consumer runs it."""
    settings = make_settings(run_worker_in_process=True)
    server = serve(settings)
    jobs = open_jobs(settings)
    factory = Factory(jobs.app)
    actor = factory.user(factory.organization(), role="viewer")
    job_id = jobs.submit(organization_id=actor.organization_id)

    def done() -> dict | None:
        data = httpx.get(f"{server.base_url}/api/v1/jobs/{job_id}", headers=actor.headers).json()["data"]
        return data if data["status"] == "succeeded" else None

    assert wait_until(done, timeout=30)["result"]["steps"] == 20
