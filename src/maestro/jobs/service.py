"""The life of a job row: submit, claim, heartbeat, progress, finish, reap.

Every transition is a conditional UPDATE on (id, status, attempts), so a worker that
was presumed dead and comes back late cannot overwrite the attempt that replaced it,
and two reapers never requeue the same job twice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from maestro.db import Database, matched_rows, run_after_commit, utcnow
from maestro.errors import NotFound, ValidationFailed
from maestro.events import service as events
from maestro.jobs.handlers import HANDLERS, ClaimedJob
from maestro.jobs.models import FINISHED_STATUSES, Job, JobStatus

logger = logging.getLogger("maestro.jobs")

# Jobs whose end is no event: the delivery of events itself.
QUIET_PREFIX = "webhooks."


def submit(
    session: Session,
    enqueue: Callable[[str], None],
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    max_attempts: int,
    organization_id: str | None = None,
    project_id: str | None = None,
    created_by_id: str | None = None,
) -> Job:
    """Record a job and hand its id to the queue once the transaction commits."""
    if kind not in HANDLERS:
        raise ValidationFailed(f"Unknown job kind {kind!r}", details=[("kind", "not a registered job kind")])
    job = Job(
        kind=kind,
        params=params or {},
        max_attempts=max_attempts,
        enqueued_at=utcnow(),
        organization_id=organization_id,
        project_id=project_id,
        created_by_id=created_by_id,
    )
    session.add(job)
    session.flush()
    job_id = job.id
    run_after_commit(session, lambda: enqueue(job_id))
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("No such job")
    return job


def claim(database: Database, job_id: str, worker: str) -> ClaimedJob | None:
    """Move a queued job to running for this worker; None when another worker has it
    or it already finished (duplicate deliveries are harmless)."""
    now = utcnow()
    with database.session() as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                attempts=Job.attempts + 1,
                worker=worker[:200],
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                message=None,
            )
            .returning(Job.kind, Job.params, Job.attempts, Job.max_attempts)
        ).first()
    if row is None:
        return None
    return ClaimedJob(
        id=job_id, kind=row.kind, params=row.params or {}, attempt=row.attempts, max_attempts=row.max_attempts
    )


def _running(job: ClaimedJob) -> Any:
    return (Job.id == job.id, Job.status == JobStatus.running, Job.attempts == job.attempt)


def heartbeat(database: Database, job: ClaimedJob) -> bool:
    """Returns False when this attempt no longer owns the job."""
    now = utcnow()
    with database.session() as session:
        result = session.execute(update(Job).where(*_running(job)).values(heartbeat_at=now))
    return matched_rows(result) == 1


def report_progress(database: Database, job: ClaimedJob, fraction: float, message: str | None) -> None:
    now = utcnow()
    values: dict[str, Any] = {"progress": min(max(float(fraction), 0.0), 1.0), "heartbeat_at": now}
    if message is not None:
        values["message"] = message[:500]
    with database.session() as session:
        session.execute(update(Job).where(*_running(job)).values(**values))


def finish(
    database: Database,
    job: ClaimedJob,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    now = utcnow()
    values: dict[str, Any] = {"finished_at": now, "heartbeat_at": now, "updated_at": now}
    if error is None:
        values.update(status=JobStatus.succeeded, result=result, progress=1.0, error=None)
    else:
        values.update(status=JobStatus.failed, error=error[:10_000])
    with database.session() as session:
        owner = session.execute(
            update(Job).where(*_running(job)).values(**values).returning(Job.organization_id, Job.project_id)
        ).first()
        if owner is not None and owner.organization_id is not None and not job.kind.startswith(QUIET_PREFIX):
            events.record(
                session,
                owner.organization_id,
                "job.completed" if error is None else "job.failed",
                {
                    "job_id": job.id,
                    "kind": job.kind,
                    "project_id": owner.project_id,
                    "status": str(values["status"]),
                    "error": None if error is None else error[:500],
                },
            )
    if owner is None:
        logger.warning(
            "job %s attempt %s finished after losing ownership; outcome dropped", job.id, job.attempt
        )
        return False
    return True


@dataclass
class ReapReport:
    requeued: list[str]
    failed: list[str]
    redelivered: list[str]


def reap(
    database: Database,
    enqueue: Callable[[str], None],
    *,
    heartbeat_timeout: float,
    redeliver_after: float,
) -> ReapReport:
    """Requeue (or fail, after the last attempt) running jobs whose heartbeat stopped,
    and enqueue again jobs that have waited too long, in case their message was lost."""
    now = utcnow()
    lost_cutoff = now - timedelta(seconds=heartbeat_timeout)
    report = ReapReport([], [], [])
    with database.session() as session:
        lost = session.execute(
            select(Job.id, Job.attempts, Job.max_attempts).where(
                Job.status == JobStatus.running, Job.heartbeat_at < lost_cutoff
            )
        ).all()
        for job_id, attempts, max_attempts in lost:
            condition = (
                Job.id == job_id,
                Job.status == JobStatus.running,
                Job.attempts == attempts,
                Job.heartbeat_at < lost_cutoff,
            )
            if attempts < max_attempts:
                values = {
                    "status": JobStatus.queued,
                    "worker": None,
                    "enqueued_at": now,
                    "updated_at": now,
                    "message": f"worker lost during attempt {attempts}; queued again",
                }
                target = report.requeued
            else:
                values = {
                    "status": JobStatus.failed,
                    "finished_at": now,
                    "updated_at": now,
                    "error": f"worker lost: no heartbeat for {heartbeat_timeout:g}s during attempt "
                    f"{attempts} of {max_attempts}",
                }
                target = report.failed
            if matched_rows(session.execute(update(Job).where(*condition).values(**values))) == 1:
                target.append(job_id)

        stale_cutoff = now - timedelta(seconds=redeliver_after)
        waiting = session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued, Job.enqueued_at < stale_cutoff)
        ).all()
        for job_id in waiting:
            moved = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued, Job.enqueued_at < stale_cutoff)
                .values(enqueued_at=now)
            )
            if matched_rows(moved) == 1:
                report.redelivered.append(job_id)

    for job_id in report.requeued + report.redelivered:
        enqueue(job_id)
    if report.requeued or report.failed or report.redelivered:
        logger.warning(
            "reaper: requeued %s, failed %s, redelivered %s",
            report.requeued,
            report.failed,
            report.redelivered,
        )
    return report


def delete_finished_before(session: Session, cutoff_days: int) -> int:
    cutoff = utcnow() - timedelta(days=cutoff_days)
    result = session.execute(delete(Job).where(Job.status.in_(FINISHED_STATUSES), Job.finished_at < cutoff))
    return matched_rows(result) or 0


def last_submitted(session: Session, kind: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.kind == kind).order_by(Job.created_at.desc()).limit(1)
    ).first()
