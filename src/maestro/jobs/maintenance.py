"""Built-in job kinds that keep an installation tidy and let operators check that
workers are alive end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from maestro.jobs import service
from maestro.jobs.handlers import CLEANUP_STEPS, JobContext, job_handler

CLEANUP = "maintenance.cleanup"
# Folds prediction logs into monitoring's hourly profiles and deletes the folded ones past
# their retention; its handler is monitoring's (``maestro.monitoring.folding``).
FOLD = "monitoring.fold"
# Stores each active deployment's drift report for the intervals just closed; its handler is
# monitoring's (``maestro.monitoring.reports``).
DRIFT_REPORTS = "monitoring.drift_reports"
# Evaluates the enabled alert rules; its handler is alerts' (``maestro.alerts.evaluator``).
ALERT_EVALUATION = "alerts.evaluate"
PROBE = "system.probe"
MAX_PROBE_SECONDS = 300.0
PROBE_HOLDS = "probe-holds"  # under the data directory: files that release held probes


@job_handler(CLEANUP)
def cleanup(ctx: JobContext) -> dict[str, Any]:
    """Remove temporary files of uploads that never finished, finished jobs past their
    retention period, and what the domains' cleanup steps (``cleanup_step``) remove."""
    ctx.progress(0.0, "removing stale temporary uploads")
    removed_files = ctx.store.remove_stale_temporaries(ctx.settings.stale_upload_hours * 3600)
    ctx.progress(0.5, "removing old finished jobs")
    with ctx.database.session() as session:
        removed_jobs = service.delete_finished_before(session, ctx.settings.job_retention_days)
    result: dict[str, Any] = {"temporary_files_removed": removed_files, "jobs_removed": removed_jobs}
    for name, step in CLEANUP_STEPS.items():
        result[name] = step(ctx)
    return result


@job_handler(PROBE)
def probe(
    ctx: JobContext,
    duration_seconds: float = 0.0,
    steps: int = 10,
    fail: bool = False,
    hold: str | None = None,
) -> dict[str, Any]:
    """Walk through ``steps`` progress updates over ``duration_seconds``: proves a worker
    picks jobs up, heartbeats and reports, without touching any data. With ``fail`` it
    ends in an error, to check that failures reach whoever watches for them.

    With ``hold`` (a file name) it first reports ``held`` and waits, heartbeating, until
    that file exists in ``<data_dir>/probe-holds/`` (at most ``MAX_PROBE_SECONDS``): an
    explicit signal that lets tests stop a worker mid-job, however slow the machine."""
    duration = min(max(float(duration_seconds), 0.0), MAX_PROBE_SECONDS)
    steps = min(max(int(steps), 1), 1000)
    started = time.monotonic()
    if hold is not None:
        release = Path(ctx.settings.data_dir) / PROBE_HOLDS / Path(hold).name
        ctx.progress(0.0, "held")
        while not release.exists():
            if time.monotonic() - started > MAX_PROBE_SECONDS:
                raise RuntimeError("the probe was held and never released")
            time.sleep(0.05)
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
