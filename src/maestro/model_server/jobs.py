"""Asynchronous prediction jobs of the model server: in process, a bounded queue, one
worker thread, results written to files and deleted once they expire.

These are the model server's own short-lived jobs (the server may run without the
platform); they live and die with the process. A result goes to a file (named by the
job's generated id, in a directory of this process under
``<data_dir>/model-server/async-results/``), never stays in memory, and the bytes results
take on disk are bounded twice: in all (``MAESTRO_MODEL_SERVER_ASYNC_RESULT_MAX_BYTES``)
and per organisation (``MAESTRO_MODEL_SERVER_ASYNC_RESULT_QUOTA_BYTES``; an operator key
counts as one). A job reserves a generous estimate of its result when it is submitted,
and the bounds hold byte by byte while it writes:

- a submission that does not fit answers 429 when its organisation's share is used up,
  503 when the server's is, both with ``Retry-After`` (when the oldest result expires);
  one that could never fit answers 413;
- a result that outgrows the room left fails its job, and its file is deleted;
- a full queue answers 503 with ``Retry-After``.

Only the caller who submitted a job can see it; anyone else gets the same 404 as for an
unknown id. Expired results are deleted from disk by the worker, even when nobody asks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from maestro.db import new_id
from maestro.errors import MaestroError, NotFound, PayloadTooLarge, RateLimited, ServiceUnavailable
from maestro.runtimes.errors import ServingError

logger = logging.getLogger("maestro.serving")

CHUNK_ROWS = 1000  # progress is reported, and results written, per chunk
MAX_KEPT = 10_000
BUSY_RETRY_SECONDS = 5  # Retry-After when only running jobs hold the space
SWEEP_SECONDS = 60.0  # how often an idle worker deletes expired results

# work(progress, write): report progress (0..1) and write the result's JSON bytes in order.
Work = Callable[[Callable[[float], None], Callable[[bytes], None]], None]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create(path: Path) -> IO[bytes]:
    """A new file only this user may read (never an existing one)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o600), "wb")


@dataclass
class Job:
    id: str
    owner: str  # the caller who may read it
    scope: str  # whose share of the disk it counts against: an organisation, or an operator key
    model_name: str
    rows: int
    work: Work | None
    charged: int = 0  # bytes counted against the bounds: the reservation, then the file's size
    status: str = "queued"
    progress: float = 0.0
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    finished_monotonic: float | None = None
    path: Path | None = None
    size: int = 0
    error: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """The job without its result (``AsyncJobs.result`` reads that from its file)."""
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "model_name": self.model_name,
            "rows": self.rows,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": None,
            "error": self.error,
        }


class AsyncJobs:
    def __init__(
        self,
        *,
        directory: Path,
        queue_size: int,
        keep_seconds: float,
        max_bytes: int,
        quota_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = directory
        self.directory: Path | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self.quota_bytes = quota_bytes
        self.clock = clock
        self._total = 0
        self._by_scope: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Make this process's result directory (``start`` does, before its worker runs)."""
        self.directory = self._own_directory()

    def start(self) -> None:
        try:
            self.open()
        except OSError as exc:  # the server still predicts; asynchronous jobs answer 503
            logger.error("no directory for asynchronous results under %s: %s", self._root, exc)
        self._thread = threading.Thread(target=self._run, name="model-server-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # the thread is a daemon: it ends with the process
                self._queue.put_nowait(None)
            self._thread = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)  # results live and die with the process
            self.directory = None

    def _own_directory(self) -> Path:
        """A fresh directory for this process; those of this host's processes that are
        gone (killed before they could clean up) are deleted."""
        self._root.mkdir(parents=True, exist_ok=True)
        host = _host()
        for stale in self._root.glob(f"{host}-*"):
            pid = stale.name[len(host) + 1 :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=self._root))

    # --- submitting and reading ------------------------------------------------------------------
    def submit(self, owner: str, scope: str, model_name: str, rows: int, estimate: int, work: Work) -> Job:
        """Queue a job whose result should take about ``estimate`` bytes, once that fits."""
        if self.directory is None:
            raise ServiceUnavailable(
                "Asynchronous predictions are unavailable: this server has no directory for their results"
            )
        self._forget_expired()
        with self._lock:
            limit = min(self.quota_bytes, self.max_bytes)
            if estimate > limit:
                raise PayloadTooLarge(
                    f"The result of {rows:,} rows would take about {estimate:,} bytes; at most "
                    f"{limit:,} are kept for one organisation: send fewer rows per job"
                )
            if self._by_scope.get(scope, 0) + estimate > self.quota_bytes:
                raise RateLimited(
                    "Your organisation's asynchronous results fill the space kept for them; retry once "
                    "older results expire",
                    headers={"Retry-After": self._retry_after(scope)},
                )
            if self._total + estimate > self.max_bytes:
                raise ServiceUnavailable(
                    "The space for asynchronous results on this server is full; retry later",
                    headers={"Retry-After": self._retry_after(None)},
                )
            job = Job(new_id("job"), owner, scope, model_name, rows, work, charged=estimate)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise ServiceUnavailable(
                    "The asynchronous prediction queue is full; retry later",
                    headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
                ) from None
            self._charge(scope, estimate)
            self._jobs[job.id] = job
            if len(self._jobs) > MAX_KEPT:
                oldest = next((kept for kept in self._jobs.values() if kept.finished_at is not None), None)
                if oldest is not None:
                    self._drop(oldest)
        return job

    def get(self, owner: str, job_id: str) -> Job:
        self._forget_expired()
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound("No such job (results are kept for a limited time)")
        return job

    def result(self, job: Job) -> bytes | None:
        """A completed job's result, as the JSON bytes it was written as."""
        path = job.path
        if job.status != "completed" or path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound("No such job (results are kept for a limited time)") from None

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """Jobs by status: every job, or one caller's."""
        counts = {"queued": 0, "running": 0, "completed": 0, "failed": 0}
        for job in list(self._jobs.values()):
            if owner is None or job.owner == owner:
                counts[job.status] = counts.get(job.status, 0) + 1
        return counts

    def used_bytes(self, scope: str | None = None) -> int:
        """Bytes counted against the bounds (results on disk and reservations)."""
        return self._total if scope is None else self._by_scope.get(scope, 0)

    # --- accounting (with the lock held) ---------------------------------------------------------
    def _charge(self, scope: str, delta: int) -> None:
        self._total += delta
        left = self._by_scope.get(scope, 0) + delta
        if left:
            self._by_scope[scope] = left
        else:
            self._by_scope.pop(scope, None)

    def _retry_after(self, scope: str | None) -> str:
        """Seconds until the oldest result holding the space expires."""
        finished = [
            job.finished_monotonic
            for job in self._jobs.values()
            if job.finished_monotonic is not None and job.charged and (scope is None or job.scope == scope)
        ]
        if not finished:
            return str(BUSY_RETRY_SECONDS)
        wait = min(finished) + self._keep_seconds - self.clock()
        return str(max(1, math.ceil(wait)))

    def _drop(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._charge(job.scope, -job.charged)
        job.charged = 0
        if job.path is not None:
            job.path.unlink(missing_ok=True)
            job.path = None

    def _make_room(self, job: Job, needed: int) -> None:
        """Count ``needed`` bytes for ``job``, or refuse when they do not fit."""
        with self._lock:
            extra = needed - job.charged
            if extra <= 0:
                return
            over_quota = self._by_scope.get(job.scope, 0) + extra > self.quota_bytes
            if over_quota or self._total + extra > self.max_bytes:
                raise ServingError(
                    "result_too_large",
                    "The result outgrew the space left for asynchronous results; send fewer rows per job, "
                    "or retry once older results expire",
                    status=503,
                )
            self._charge(job.scope, extra)
            job.charged = needed

    def _forget_expired(self) -> None:
        now = self.clock()
        with self._lock:
            for job in [
                job
                for job in self._jobs.values()
                if job.finished_monotonic is not None and now - job.finished_monotonic > self._keep_seconds
            ]:
                self._drop(job)

    # --- the worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        sweep = min(SWEEP_SECONDS, max(self._keep_seconds, 0.05))
        while self.run_next(timeout=sweep):
            pass

    def run_next(self, timeout: float | None = None) -> bool:
        """Run the next queued job, waiting up to ``timeout`` seconds for one, then delete
        expired results; False once ``stop`` asked the worker to end."""
        try:
            job = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            job = None
        else:
            if job is None:
                return False
            self._execute(job)
        self._forget_expired()
        return True

    def _execute(self, job: Job) -> None:
        """Run one job, writing its result to its file within the bounds."""
        job.status, job.started_at = "running", _now()
        directory = self.directory
        assert directory is not None
        assert job.work is not None
        path = directory / f"{job.id}.json"
        written = 0

        def progress(fraction: float) -> None:
            job.progress = min(max(fraction, 0.0), 1.0)

        try:
            with _create(path) as handle:

                def write(data: bytes) -> None:
                    nonlocal written
                    self._make_room(job, written + len(data))
                    handle.write(data)
                    written += len(data)

                job.work(progress, write)
            job.path, job.size, job.finished_at = path, written, _now()
            job.status, job.progress = "completed", 1.0  # last: readers trust what it says
        except MaestroError as exc:
            job.status = "failed"
            job.error = {"code": exc.code, "reason": getattr(exc, "reason", None), "message": exc.message}
        except Exception as exc:
            logger.exception("asynchronous prediction job %s failed", job.id)
            job.status = "failed"
            job.error = {"code": "INTERNAL_SERVER_ERROR", "reason": "internal", "message": type(exc).__name__}
        finally:
            job.work = None  # the rows and the model can go
            if job.status != "completed":
                path.unlink(missing_ok=True)
            with self._lock:
                kept = job.size if job.status == "completed" else 0
                self._charge(job.scope, kept - job.charged)
                job.charged = kept
                job.finished_at, job.finished_monotonic = job.finished_at or _now(), self.clock()
