"""Asynchronous prediction jobs of the model server: in process, a bounded queue, one
worker thread, results kept for a while and then forgotten.

These are the model server's own short-lived jobs (the server may run without the
platform); they live and die with the process. A full queue answers 503 with
``Retry-After`` instead of growing without bound. Only the caller who submitted a job
can see it; anyone else gets the same 404 as for an unknown id.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maestro.api.errors import MaestroError, NotFound, ServiceUnavailable
from maestro.db import new_id

logger = logging.getLogger("maestro.serving")

CHUNK_ROWS = 1000  # progress is reported per chunk
MAX_KEPT = 10_000


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    owner: str
    model_name: str
    rows: int
    work: Callable[[Callable[[float], None]], dict[str, Any]]
    status: str = "queued"
    progress: float = 0.0
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    finished_monotonic: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "model_name": self.model_name,
            "rows": self.rows,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
        }


class AsyncJobs:
    def __init__(self, *, queue_size: int, keep_seconds: float) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep_seconds = keep_seconds
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-server-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # the thread is a daemon: it ends with the process
                self._queue.put_nowait(None)
            self._thread = None

    def submit(
        self,
        owner: str,
        model_name: str,
        rows: int,
        work: Callable[[Callable[[float], None]], dict[str, Any]],
    ) -> Job:
        self._forget_expired()
        job = Job(new_id("job"), owner, model_name, rows, work)
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise ServiceUnavailable(
                    "The asynchronous prediction queue is full; retry later",
                    headers={"Retry-After": "5"},
                ) from None
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_KEPT:
                self._jobs.popitem(last=False)
        return job

    def get(self, owner: str, job_id: str) -> Job:
        self._forget_expired()
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound("No such job (results are kept for a limited time)")
        return job

    def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0, "completed": 0, "failed": 0}
        for job in list(self._jobs.values()):
            counts[job.status] = counts.get(job.status, 0) + 1
        return counts

    def _forget_expired(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in [
                job.id
                for job in self._jobs.values()
                if job.finished_monotonic is not None and now - job.finished_monotonic > self._keep_seconds
            ]:
                del self._jobs[job_id]

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.status, job.started_at = "running", _now()

            def progress(fraction: float, job: Job = job) -> None:
                job.progress = min(max(fraction, 0.0), 1.0)

            try:
                job.result = job.work(progress)
                job.status, job.progress = "completed", 1.0
            except MaestroError as exc:
                job.status = "failed"
                job.error = {"code": exc.code, "reason": getattr(exc, "reason", None), "message": exc.message}
            except Exception as exc:
                logger.exception("asynchronous prediction job %s failed", job.id)
                job.status = "failed"
                job.error = {
                    "code": "INTERNAL_SERVER_ERROR",
                    "reason": "internal",
                    "message": type(exc).__name__,
                }
            job.finished_at, job.finished_monotonic = _now(), time.monotonic()
