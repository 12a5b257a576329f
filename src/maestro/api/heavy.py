"""One bounded pool for CPU-heavy request work, shared fairly between callers.

A request that costs seconds of CPU (a model card PDF, downsampling a long metric
series, analysing a dataset) must not let one tenant slow everyone else down. Such
work goes through ``HeavyWork``:

* at most ``workers`` pieces run at once in a server process, whoever asks;
* one caller, and one organisation, has at most ``per_owner`` of them running and
  ``owner_queue`` waiting; asking for more answers ``429`` at once;
* at most ``queue`` requests wait in all, each for at most ``wait_seconds``, in arrival
  order (a waiting request whose caller already has its share running lets the next
  one go first); past either limit the request answers ``503``. Both carry
  ``Retry-After``.

``slot()`` only admits: the work then runs in the caller's thread, which suits work
done by the database (SQL releases the GIL). ``run()`` admits and runs a plain
function in a worker process: pure-Python work such as fpdf2's layout holds the GIL
the whole time, and in a thread of the server it would slow every other request of
the process (a victim's 10 ms GET took 373 ms while four PDFs rendered). Worker
processes are started once, on first use, and reused; they run at a lower priority
than the server and end with it. The function and its arguments travel by pickle, so
they must be defined at module level.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from maestro.config import Settings
from maestro.errors import RateLimited, ServiceUnavailable
from maestro.identity.rbac import Principal

T = TypeVar("T")

OWNER_RETRY_AFTER = 1  # seconds: the caller's own earlier requests are what it waits for
WORKER_NICENESS = 10


def default_workers() -> int:
    """The cores this process may use, minus one for the server itself."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def owners_of(principal: Principal) -> tuple[str, ...]:
    """Whose share a request counts against: its caller's and its organisation's (so more
    API keys, or more members, of one organisation get no more than one share)."""
    owners = [f"{principal.kind}:{principal.id}"]
    if principal.organization_id:
        owners.append(f"organization:{principal.organization_id}")
    return tuple(owners)


def _worker_started() -> None:
    """Runs first in every worker process. The server's own requests come first, and
    the worker ends with the server however the server ends: uvicorn stops on SIGTERM
    by raising the signal again, so no exit handler of the server runs to stop it."""
    with suppress(OSError):
        os.nice(WORKER_NICENESS)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_end_with, args=(parent.sentinel,), name="end-with-server", daemon=True
        ).start()


def _end_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # readable once the server process is gone
    os._exit(0)


_executors: dict[int, ProcessPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> ProcessPoolExecutor:
    """The worker processes of this server process (one set per size, shared by every
    app in it). Spawned rather than forked: the server has threads, and a fork copies
    their locks in whatever state they are."""
    with _executors_lock:
        executor = _executors.get(workers)
        if executor is None:
            executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started,
            )
            _executors[workers] = executor
        return executor


def _discard_executor(workers: int, broken: ProcessPoolExecutor) -> None:
    with _executors_lock:
        if _executors.get(workers) is broken:
            del _executors[workers]
    broken.shutdown(wait=False, cancel_futures=True)


def _count(counter: Counter[str], owners: tuple[str, ...], delta: int) -> None:
    """Add ``delta`` for each owner, forgetting owners that reach zero (callers come
    and go; the counters must not grow with them)."""
    for owner in owners:
        counter[owner] += delta
        if counter[owner] <= 0:
            del counter[owner]


class _Ticket:
    __slots__ = ("owners",)

    def __init__(self, owners: tuple[str, ...]) -> None:
        self.owners = owners


class HeavyWork:
    """Admission to, and the running of, CPU-heavy work; one per app."""

    def __init__(
        self,
        *,
        workers: int,
        per_owner: int = 1,
        owner_queue: int = 2,
        queue: int = 8,
        wait_seconds: float = 10.0,
        processes: bool = True,
        on_admitted: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        self.workers = workers
        self.per_owner = per_owner
        self.owner_queue = owner_queue
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.processes = processes
        # Called in the caller's thread once a request is admitted, before its work
        # runs: lets an operator's instrumentation (or a test) observe or hold it.
        self.on_admitted = on_admitted
        self._changed = threading.Condition()
        self._running = 0
        self._running_by_owner: Counter[str] = Counter()
        self._waiting: deque[_Ticket] = deque()
        self._waiting_by_owner: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> HeavyWork:
        return cls(
            workers=settings.heavy_workers or default_workers(),
            per_owner=settings.heavy_per_owner,
            owner_queue=settings.heavy_queue_per_owner,
            queue=settings.heavy_queue,
            wait_seconds=settings.heavy_wait_seconds,
            processes=settings.heavy_processes,
        )

    # --- admission -------------------------------------------------------------------
    def _may_start(self, ticket: _Ticket) -> bool:
        """A slot is free and ``ticket`` is the first waiting one whose owners are all
        below their share."""
        if self._running >= self.workers:
            return False
        for waiting in self._waiting:
            if all(self._running_by_owner[owner] < self.per_owner for owner in waiting.owners):
                return waiting is ticket
        return False

    def _start(self, owners: tuple[str, ...]) -> None:
        self._running += 1
        _count(self._running_by_owner, owners, 1)

    def _enter(self, owners: tuple[str, ...]) -> None:
        with self._changed:
            share = self.per_owner + self.owner_queue
            if any(self._running_by_owner[o] + self._waiting_by_owner[o] >= share for o in owners):
                raise RateLimited(
                    f"At most {self.per_owner} requests of this kind may run at once for you or your "
                    f"organisation, and {self.owner_queue} wait; try again when one has finished",
                    details=[("request", "too many CPU-heavy requests at once")],
                    headers={"Retry-After": str(OWNER_RETRY_AFTER)},
                )
            idle = self._running < self.workers and not self._waiting
            if idle and all(self._running_by_owner[o] < self.per_owner for o in owners):
                self._start(owners)
                return
            if len(self._waiting) >= self.queue:
                raise self._busy()
            ticket = _Ticket(owners)
            self._waiting.append(ticket)
            _count(self._waiting_by_owner, owners, 1)
            deadline = time.monotonic() + self.wait_seconds
            try:
                while not self._may_start(ticket):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._busy()
                    self._changed.wait(remaining)
                self._start(owners)
            finally:
                self._waiting.remove(ticket)
                _count(self._waiting_by_owner, owners, -1)
                self._changed.notify_all()

    def _leave(self, owners: tuple[str, ...]) -> None:
        with self._changed:
            self._running -= 1
            _count(self._running_by_owner, owners, -1)
            self._changed.notify_all()

    def _busy(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            "The server is busy with other CPU-heavy requests; try again shortly",
            details=[("request", "no turn for a CPU-heavy request within the wait limit")],
            headers={"Retry-After": str(math.ceil(self.wait_seconds))},
        )

    @contextmanager
    def slot(self, owners: Sequence[str]) -> Iterator[None]:
        """Hold one of the pool's turns for the block's work, which runs in the
        caller's thread; raises ``RateLimited`` or ``ServiceUnavailable`` instead."""
        owners = tuple(owners)
        self._enter(owners)
        try:
            if self.on_admitted is not None:
                self.on_admitted(owners)
            yield
        finally:
            self._leave(owners)

    # --- running ---------------------------------------------------------------------
    def run(self, owners: Sequence[str], function: Callable[..., T], /, *args: Any) -> T:
        """``function(*args)`` in a turn of the pool, in a worker process (or in this
        thread when processes are turned off); blocks the calling thread until done."""
        with self.slot(owners):
            if not self.processes:
                return function(*args)
            executor = _executor(self.workers)
            try:
                return executor.submit(function, *args).result()
            except BrokenProcessPool as exc:
                # A worker died (killed, out of memory): start afresh for the next request.
                _discard_executor(self.workers, executor)
                raise ServiceUnavailable(
                    "A worker process stopped while doing this request; try again",
                    headers={"Retry-After": "1"},
                ) from exc

    def stats(self) -> dict[str, int]:
        """Running and waiting requests, for health pages and tests."""
        with self._changed:
            return {"running": self._running, "waiting": len(self._waiting)}


async def get_heavy_work(request: Request) -> HeavyWork:
    return request.app.state.heavy


HeavyDep = Annotated[HeavyWork, Depends(get_heavy_work)]
