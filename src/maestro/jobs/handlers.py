"""The registry of job kinds. A domain declares a kind with ``@job_handler("kind")``
on a plain function taking a ``JobContext`` and the job's parameters; the function's
return value (a JSON-able dict) becomes the job's result."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database
    from maestro.storage import ArtifactStore

Handler = Callable[..., dict[str, Any] | None]

HANDLERS: dict[str, Handler] = {}

# Modules that declare job kinds; imported wherever jobs are submitted or executed.
HANDLER_MODULES = (
    "maestro.jobs.maintenance",
    "maestro.deployments.batch_jobs",
    "maestro.monitoring.folding",
    "maestro.monitoring.reference",
    "maestro.monitoring.reports",
    "maestro.webhooks.relay",
    "maestro.alerts.evaluator",
    "maestro.alerts.notifications",
)


def job_handler(kind: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        if HANDLERS.get(kind, function) is not function:
            raise RuntimeError(f"job kind {kind!r} registered twice")
        HANDLERS[kind] = function
        return function

    return register


# Work every consumer process does between jobs, each called with the process's
# ``JobQueue`` every ``MAESTRO_WEBHOOK_RELAY_INTERVAL_SECONDS`` and whenever an event was
# committed in the process (the webhooks relay: events into deliveries, deliveries into jobs).
TICKERS: dict[str, Callable[[Any], None]] = {}


def job_ticker(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    def register(function: Callable[[Any], None]) -> Callable[[Any], None]:
        TICKERS[name] = function
        return function

    return register


# What domains add to the cleanup job (``maintenance.cleanup``): each is called with the
# job's context and returns how many rows it removed, reported under its name.
CLEANUP_STEPS: dict[str, Callable[[JobContext], int]] = {}


def cleanup_step(name: str) -> Callable[[Callable[[JobContext], int]], Callable[[JobContext], int]]:
    def register(function: Callable[[JobContext], int]) -> Callable[[JobContext], int]:
        CLEANUP_STEPS[name] = function
        return function

    return register


def load_handlers() -> dict[str, Handler]:
    for module in HANDLER_MODULES:
        importlib.import_module(module)
    return HANDLERS


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker has claimed: what its handler is called with."""

    id: str
    kind: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int


@dataclass
class JobContext:
    """What a running job may use: the platform's resources and a way to report."""

    job: ClaimedJob
    settings: Settings
    database: Database
    store: ArtifactStore
    report: Callable[[float, str | None], None]
    # True in a worker embedded in an API server: interpreter-bound work there competes
    # with requests for the interpreter's lock, so a handler may move it to a process.
    in_server_process: bool = False

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0..1); also counts as a heartbeat."""
        self.report(fraction, message)
