"""Notifications of alerts: rows written with the evaluation that decided them
(``queue``), handed to ``alerts.notify`` jobs by a ticker every job consumer runs, sent
outside any evaluation's transaction, and retried on a schedule until sent or out of
attempts. A row goes pending → queued (a job was submitted) → sending → sent (or back to
pending for its next attempt, or failed); a queued or sending row whose lease ran out (its
worker died) is queued again."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select, update

from maestro.alerts import channels
from maestro.alerts.models import Alert, AlertNotification, AlertRule, NotificationChannel, NotificationStatus
from maestro.db import matched_rows, run_after_commit, utc_iso, utcnow
from maestro.events import service as events
from maestro.jobs.handlers import JobContext, job_handler, job_ticker

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maestro.config import Settings

logger = logging.getLogger("maestro.alerts")

NOTIFY = "alerts.notify"
LEASE = timedelta(minutes=2)
RETRY_SECONDS = (5, 30, 120, 600, 1800, 3600)  # after attempts 1, 2, …; then it has failed
BATCH = 100


def payload(settings: Settings, rule: AlertRule, alert: Alert, event: str, now: datetime) -> dict[str, Any]:
    base = (settings.public_url or "").rstrip("/")
    return {
        "event": event,
        "alert_id": alert.id,
        "status": alert.status,
        "rule_id": rule.id,
        "rule_name": rule.name,
        "deployment_id": rule.deployment_id,
        "metric_name": rule.metric_name,
        "operator": rule.operator,
        "threshold": rule.threshold,
        "value": alert.value,
        "severity": rule.severity,
        "at": utc_iso(now),
        "link": f"{base}/api/v1/alerts/{alert.id}" if base else None,
    }


def queue(
    session: Session, settings: Settings, rule: AlertRule, alert: Alert, event: str, now: datetime
) -> int:
    """One notification per channel of the rule, in the caller's transaction; how many."""
    ids = list(rule.notification_channels)
    if not ids:
        return 0
    found = list(
        session.scalars(
            select(NotificationChannel.id).where(
                NotificationChannel.id.in_(ids), NotificationChannel.organization_id == rule.organization_id
            )
        )
    )
    body = payload(settings, rule, alert, event, now)
    for channel_id in found:
        session.add(
            AlertNotification(
                organization_id=rule.organization_id,
                alert_id=alert.id,
                channel_id=channel_id,
                event=event,
                payload=body,
                next_attempt_at=utcnow(),
            )
        )
    if found:
        run_after_commit(session, events.written.set)  # wakes this process's ticker
    return len(found)


def submit_due(job_queue: Any, now: datetime | None = None) -> int:
    """Hand due notifications to jobs; the conditional UPDATE makes one job per row even
    when several processes tick at once."""
    now = now or utcnow()
    submitted = 0
    with job_queue.database.session() as session:
        due = list(
            session.scalars(
                select(AlertNotification.id)
                .where(
                    or_(
                        and_(
                            AlertNotification.status == NotificationStatus.pending,
                            AlertNotification.next_attempt_at <= now,
                        ),
                        and_(
                            AlertNotification.status.in_(
                                [NotificationStatus.queued, NotificationStatus.sending]
                            ),
                            AlertNotification.lease_until < now,
                        ),
                    )
                )
                .order_by(AlertNotification.next_attempt_at)
                .limit(BATCH)
            )
        )
        for notification_id in due:
            taken = session.execute(
                update(AlertNotification)
                .where(
                    AlertNotification.id == notification_id,
                    or_(
                        AlertNotification.status == NotificationStatus.pending,
                        AlertNotification.lease_until < now,
                    ),
                    AlertNotification.status.not_in([NotificationStatus.sent, NotificationStatus.failed]),
                )
                .values(status=NotificationStatus.queued, lease_until=now + LEASE)
            )
            if matched_rows(taken):
                job_queue.submit(session, NOTIFY, {"notification_id": notification_id})
                submitted += 1
    return submitted


@job_ticker("alerts.notifications")
def tick(job_queue: Any) -> None:
    submit_due(job_queue)


def _note(session: Session, alert_id: str, entry: dict[str, Any]) -> None:
    alert = session.get(Alert, alert_id)
    if alert is not None:
        alert.timeline = [*alert.timeline, entry]


@job_handler(NOTIFY)
def notify(ctx: JobContext, notification_id: str) -> dict[str, Any]:
    """One attempt at one notification."""
    now = utcnow()
    with ctx.database.session() as session:
        taken = session.execute(
            update(AlertNotification)
            .where(
                AlertNotification.id == notification_id, AlertNotification.status == NotificationStatus.queued
            )
            .values(status=NotificationStatus.sending, lease_until=now + LEASE)
        )
        if not matched_rows(taken):
            return {"sent": False, "skipped": True}
        row = session.get(AlertNotification, notification_id)
        channel = session.get(NotificationChannel, row.channel_id) if row is not None else None
        if row is None or channel is None:
            return {"sent": False, "skipped": True}
        session.expunge(channel)
        body, message_id, attempts, alert_id = dict(row.payload), row.id, row.attempts + 1, row.alert_id
    outcome = channels.send(ctx.settings, channel, body, message_id)
    finished = utcnow()
    with ctx.database.session() as session:
        values: dict[str, Any] = {"attempts": attempts, "lease_until": None, "error": outcome.detail}
        if outcome.delivered:
            values.update(status=NotificationStatus.sent, sent_at=finished)
        elif attempts > len(RETRY_SECONDS):
            values.update(status=NotificationStatus.failed)
        else:
            wait = max(RETRY_SECONDS[attempts - 1], outcome.retry_after or 0)
            values.update(
                status=NotificationStatus.pending, next_attempt_at=finished + timedelta(seconds=wait)
            )
        session.execute(
            update(AlertNotification)
            .where(
                AlertNotification.id == notification_id,
                AlertNotification.status == NotificationStatus.sending,
            )
            .values(**values)
        )
        entry: dict[str, Any] = {
            "at": finished.astimezone(UTC).isoformat(),
            "event": "notified" if outcome.delivered else "notification failed",
            "detail": f"{channel.kind} {channel.name}: {body['event']}"
            + ("" if outcome.delivered else f" ({outcome.detail})"),
        }
        _note(session, alert_id, entry)
    if not outcome.delivered:
        logger.warning(
            "alert notification %s to channel %s failed: %s", notification_id, channel.id, outcome.detail
        )
    return {"sent": outcome.delivered, "attempts": attempts}
