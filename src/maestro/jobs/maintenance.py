"""Built-in job kinds that keep an installation tidy and let operators check that
workers are alive end to end."""

from __future__ import annotations

import time
from typing import Any

from maestro.jobs import service
from maestro.jobs.handlers import JobContext, job_handler

CLEANUP = "maintenance.cleanup"
PROBE = "system.probe"
MAX_PROBE_SECONDS = 300.0


@job_handler(CLEANUP)
def cleanup(ctx: JobContext) -> dict[str, Any]:
    """Remove temporary files of uploads that never finished and finished jobs past
    their retention period."""
    ctx.progress(0.0, "removing stale temporary uploads")
    removed_files = ctx.store.remove_stale_temporaries(ctx.settings.stale_upload_hours * 3600)
    ctx.progress(0.5, "removing old finished jobs")
    with ctx.database.session() as session:
        removed_jobs = service.delete_finished_before(session, ctx.settings.job_retention_days)
    return {"temporary_files_removed": removed_files, "jobs_removed": removed_jobs}


@job_handler(PROBE)
def probe(
    ctx: JobContext, duration_seconds: float = 0.0, steps: int = 10, fail: bool = False
) -> dict[str, Any]:
    """Walk through ``steps`` progress updates over ``duration_seconds``: proves a worker
    picks jobs up, heartbeats and reports, without touching any data. With ``fail`` it
    ends in an error, to check that failures reach whoever watches for them."""
    duration = min(max(float(duration_seconds), 0.0), MAX_PROBE_SECONDS)
    steps = min(max(int(steps), 1), 1000)
    started = time.monotonic()
    for step in range(steps):
        time.sleep(duration / steps)
        ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}")
    if fail:
        raise RuntimeError("the probe was asked to fail")
    return {
        "steps": steps,
        "elapsed_seconds": round(time.monotonic() - started, 3),
        "attempt": ctx.job.attempt,
    }
