"""Readiness checks: each dependency probed concurrently, with a deadline, so a hung
database cannot hang the health endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

import anyio.to_thread
from sqlalchemy import text

from maestro import __version__
from maestro.db import Database
from maestro.jobs.queue import JobQueue
from maestro.storage import ArtifactStore
from maestro.system.schemas import DependencyCheck, Readiness

CHECK_TIMEOUT_SECONDS = 3.0


class Warming(Protocol):
    """What serves deployments in this process (``deployments.state.ServingState``)."""

    def warming(self) -> str | None:
        """None once the active deployments' models are loaded; else what is left (may
        block a moment, while they are being listed)."""


async def _timed(probe: Callable[[], str | None], backend: str) -> DependencyCheck:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(anyio.to_thread.run_sync(probe), CHECK_TIMEOUT_SECONDS)
        status: Literal["up", "down"] = "up"
    except TimeoutError:
        detail, status = f"no answer within {CHECK_TIMEOUT_SECONDS:g}s", "down"
    except Exception as exc:
        detail, status = f"{type(exc).__name__}: {exc}"[:300], "down"
    return DependencyCheck(
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        backend=backend,
        detail=detail,
    )


async def _deployments_check(serving: Warming | None) -> DependencyCheck:
    """Up once the models of the active deployments are loaded, so a balancer sends no
    prediction to a server that would first have to load its model."""
    started = time.perf_counter()
    left = await anyio.to_thread.run_sync(serving.warming) if serving is not None else None
    return DependencyCheck(
        status="down" if left else "up",
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        backend="models",
        detail=left,
    )


async def readiness(
    database: Database, store: ArtifactStore, queue: JobQueue, serving: Warming | None = None
) -> Readiness:
    def database_probe() -> None:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def storage_probe() -> None:
        store.check()

    def queue_probe() -> str:
        return f"{queue.pending()} pending"

    queue_backend = "redis" if queue.settings.redis_url else "sqlite"
    database_check, storage_check, queue_check, deployments_check = await asyncio.gather(
        _timed(database_probe, database.engine.dialect.name),
        _timed(storage_probe, store.protocol),
        _timed(queue_probe, queue_backend),
        _deployments_check(serving),
    )
    checks = {
        "database": database_check,
        "storage": storage_check,
        "queue": queue_check,
        "deployments": deployments_check,
    }
    healthy = all(check.status == "up" for check in checks.values())
    return Readiness(status="healthy" if healthy else "unhealthy", version=__version__, checks=checks)
