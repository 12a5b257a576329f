"""The Huey queue that carries job ids, and the consumers that execute them.

Huey stores messages in SQLite (``<data_dir>/queue.db``) by default and in Redis when
``MAESTRO_REDIS_URL`` is set. The same consumer runs inside ``maestro serve`` (threads,
no signal handlers of its own) or as ``maestro worker`` on any number of machines.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from maestro.config import Settings
from maestro.db import Database, utcnow
from maestro.events import service as events
from maestro.jobs import service
from maestro.jobs.handlers import HANDLERS, TICKERS, JobContext, load_handlers
from maestro.jobs.models import FINISHED_STATUSES
from maestro.storage import ArtifactStore

if TYPE_CHECKING:
    from huey import Huey
    from huey.consumer import Consumer

logger = logging.getLogger("maestro.jobs")

EXECUTE_TASK = "maestro.execute_job"
FOLD_SLACK_SECONDS = 5
# A drift interval is reported once it closed this long ago: folding reads only logs older
# than a minute (or three flush intervals), and runs every fold interval.
DRIFT_SETTLE_SECONDS = 180


def build_huey(settings: Settings) -> Huey:
    from huey import RedisHuey, SqliteHuey  # with its storage drivers: loaded when first used

    if settings.redis_url:
        return RedisHuey(settings.queue_name, url=settings.redis_url, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        settings.queue_name,
        filename=str(settings.queue_file),
        results=False,
        utc=True,
        timeout=max(settings.sqlite_busy_timeout_ms / 1000, 1),
    )


class JobQueue:
    """Everything a process needs to submit and execute jobs."""

    def __init__(self, settings: Settings, database: Database, store: ArtifactStore) -> None:
        load_handlers()
        self.settings = settings
        self.database = database
        self.store = store
        self._huey: Huey | None = None
        self._execute_task: Any = None
        self._huey_lock = threading.Lock()
        self.in_server_process = False  # set by EmbeddedWorker

    @property
    def huey(self) -> Huey:
        """Built on first use, so a process starts without loading Huey."""
        with self._huey_lock:
            if self._huey is None:
                from huey import crontab

                huey = build_huey(self.settings)
                self._execute_task = huey.task(name=EXECUTE_TASK)(self.execute)
                if self.settings.maintenance_interval_minutes:
                    huey.periodic_task(crontab(), name="maestro.schedule_maintenance")(
                        self.schedule_maintenance
                    )
                self._huey = huey
            return self._huey

    # --- submitting --------------------------------------------------------------------
    def enqueue(self, job_id: str) -> None:
        self.huey  # noqa: B018 - builds the queue and its task on first use
        self._execute_task(job_id)

    def submit(
        self, session: Any, kind: str, params: dict[str, Any] | None = None, **owner: str | None
    ) -> Any:
        """``owner``: organization_id, project_id and created_by_id of a tenant's job."""
        return service.submit(
            session, self.enqueue, kind, params, max_attempts=self.settings.job_max_attempts, **owner
        )

    def pending(self) -> int:
        return int(self.huey.storage.queue_size())

    def close(self) -> None:
        if self._huey is not None:
            self._huey.storage.close()

    # --- executing ---------------------------------------------------------------------
    def execute(self, job_id: str) -> None:
        """Run one job to completion in this thread, heartbeating alongside it."""
        worker = f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"
        job = service.claim(self.database, job_id, worker)
        if job is None:
            return
        handler = HANDLERS.get(job.kind)
        if handler is None:
            service.finish(self.database, job, error=f"no handler for job kind {job.kind!r} on this worker")
            return

        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.job_heartbeat_interval):
                if not service.heartbeat(self.database, job):
                    return

        beater = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        beater.start()
        context = JobContext(
            job=job,
            settings=self.settings,
            database=self.database,
            store=self.store,
            report=lambda fraction, message: service.report_progress(self.database, job, fraction, message),
            in_server_process=self.in_server_process,
        )
        try:
            result = handler(context, **job.params)
        except Exception as exc:
            logger.exception("job %s (%s) failed", job_id, job.kind)
            service.finish(self.database, job, error=f"{type(exc).__name__}: {exc}")
        else:
            service.finish(self.database, job, result=result or {})
        finally:
            stop.set()
            beater.join()

    def reap(self) -> service.ReapReport:
        return service.reap(
            self.database,
            self.enqueue,
            heartbeat_timeout=self.settings.job_heartbeat_timeout,
            redeliver_after=self.settings.job_redeliver_after,
        )

    def schedule_maintenance(self) -> None:
        """Runs every minute on every consumer; the storage-wide lock and the check of
        the last run make one cleanup per interval across all of them, one fold of
        prediction logs per fold interval, and one run of drift reports per drift
        interval once it has closed, never while the last one is still waiting or
        running, and one evaluation of alert rules per alert interval."""
        from maestro.jobs.maintenance import ALERT_EVALUATION, CLEANUP, DRIFT_REPORTS, FOLD

        interval = timedelta(minutes=self.settings.maintenance_interval_minutes)
        fold_every = self.settings.monitoring_fold_interval_seconds
        drift_every = self.settings.monitoring_drift_interval_seconds
        with self.huey.lock_task("maestro-maintenance-schedule"), self.database.session() as session:
            last = service.last_submitted(session, CLEANUP)
            if last is None or last.created_at < utcnow() - interval:
                self.submit(session, CLEANUP)
            if fold_every:
                last = service.last_submitted(session, FOLD)
                # Checked once a minute: without the slack, a fold each minute would run every other.
                due = utcnow() - timedelta(seconds=max(fold_every - FOLD_SLACK_SECONDS, 0))
                if last is None or (last.status in FINISHED_STATUSES and last.created_at < due):
                    self.submit(session, FOLD)
            if drift_every:
                last = service.last_submitted(session, DRIFT_REPORTS)
                # Due once another interval has closed (and folding had time to settle) since the last run.
                closed = _intervals_closed(utcnow().timestamp(), drift_every)
                if last is None or (
                    last.status in FINISHED_STATUSES
                    and closed > _intervals_closed(last.created_at.timestamp(), drift_every)
                ):
                    self.submit(session, DRIFT_REPORTS)
            alert_every = self.settings.alert_evaluation_interval_seconds
            if alert_every:
                last = service.last_submitted(session, ALERT_EVALUATION)
                due = utcnow() - timedelta(seconds=max(alert_every - FOLD_SLACK_SECONDS, 0))
                if last is None or (last.status in FINISHED_STATUSES and last.created_at < due):
                    self.submit(session, ALERT_EVALUATION)


def _intervals_closed(at: float, every: int) -> int:
    """How many whole drift intervals (aligned in UTC) had closed, and folding settled,
    at ``at`` (epoch seconds)."""
    return int((at - DRIFT_SETTLE_SECONDS) // every)


class Reaper(threading.Thread):
    def __init__(self, queue: JobQueue) -> None:
        super().__init__(name="maestro-reaper", daemon=True)
        self.queue = queue
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.queue.settings.job_reaper_interval):
            try:
                self.queue.reap()
            except Exception:
                logger.exception("reaper sweep failed")

    def stop(self) -> None:
        self.stopped.set()


class Ticker(threading.Thread):
    """Runs the registered tickers (``job_ticker``) of a consumer process: at once when
    an event was committed in this process, else every relay interval."""

    def __init__(self, queue: JobQueue) -> None:
        super().__init__(name="maestro-ticker", daemon=True)
        self.queue = queue
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = self.queue.settings.webhook_relay_interval_seconds
        while not self.stopped.is_set():
            events.written.wait(interval)
            events.written.clear()
            if self.stopped.is_set():
                return
            for name, tick in list(TICKERS.items()):
                try:
                    tick(self.queue)
                except Exception:
                    logger.exception("ticker %s failed", name)

    def stop(self) -> None:
        self.stopped.set()
        events.written.set()


def _consumer_options(settings: Settings) -> dict[str, Any]:
    return {
        "workers": settings.worker_threads,
        "worker_type": "thread",
        "periodic": bool(settings.maintenance_interval_minutes),
        "initial_delay": 0.05,
        "max_delay": 1.0,
        "backoff": 1.5,
        "check_worker_health": True,
    }


def _embedded_consumer(queue: JobQueue) -> Consumer:
    from huey.consumer import Consumer

    class EmbeddedConsumer(Consumer):
        """A Huey consumer that leaves signal handling to its host process (uvicorn)."""

        def _set_signal_handlers(self) -> None:
            pass

    return EmbeddedConsumer(queue.huey, shutdown_timeout=10, **_consumer_options(queue.settings))


class EmbeddedWorker:
    """Consumer threads and a reaper inside the API server process. The consumer is
    built and started in the background, so the server answers while Huey loads."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        queue.in_server_process = True
        self.consumer: Consumer | None = None
        self.reaper = Reaper(queue)
        self.ticker = Ticker(queue)
        self._starting = threading.Thread(
            target=self._start_consumer, name="maestro-worker-start", daemon=True
        )

    def _start_consumer(self) -> None:
        self.consumer = _embedded_consumer(self.queue)
        self.consumer.start()

    def start(self) -> None:
        self._starting.start()
        self.reaper.start()
        self.ticker.start()

    def stop(self) -> None:
        self.reaper.stop()
        self.ticker.stop()
        if self._starting.ident is not None:  # started
            self._starting.join()
        if self.consumer is not None:
            self.consumer.stop(graceful=True)


def run_worker(queue: JobQueue) -> None:
    """The ``maestro worker`` main loop; returns on SIGINT/SIGTERM."""
    reaper = Reaper(queue)
    reaper.start()
    ticker = Ticker(queue)
    ticker.start()
    from huey.consumer import Consumer

    consumer = Consumer(queue.huey, **_consumer_options(queue.settings))
    try:
        consumer.run()
    finally:
        reaper.stop()
        ticker.stop()
