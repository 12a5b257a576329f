"""From the outbox to the receivers.

Every consumer process (``maestro serve``'s embedded one, each ``maestro worker``) runs
the relay's tick: it turns new outbox rows into one delivery per subscribed webhook, in
the order the events were recorded, and hands each webhook with due deliveries to a
``webhooks.deliver`` job, which sends them (``delivery.drain``). Both steps claim their
rows with conditional UPDATEs (the outbox row's ``delivered_at``, the webhook's sending
lease), so any number of processes may tick at once, and a process that dies loses
nothing: unclaimed rows wait for the next tick, and a lease runs out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from maestro.db import Database, matched_rows, utc_iso, utcnow
from maestro.events.models import OutboxEvent
from maestro.jobs.handlers import JobContext, cleanup_step, job_handler, job_ticker
from maestro.webhooks import delivery
from maestro.webhooks.catalogue import DIRECT_ONLY, public_type
from maestro.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery

if TYPE_CHECKING:
    from maestro.jobs.queue import JobQueue

DELIVER = "webhooks.deliver"
BATCH = 500
# How long a dispatched webhook waits for its job to start before it is dispatched again.
DISPATCH_HOLD = timedelta(minutes=5)


def event_body(event_id: str, event_type: str, organization_id: str, created_at: datetime, data: Any) -> str:
    """The JSON every receiver gets: the same bytes on every attempt."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": utc_iso(created_at),
            "organization_id": organization_id,
            "data": data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def relay_outbox(database: Database, now: datetime | None = None, batch: int = BATCH) -> int:
    """Turn the oldest unrelayed events into deliveries; returns how many events were taken."""
    now = now or utcnow()
    taken = 0
    with database.session() as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.delivered_at.is_(None))
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        subscribers: dict[str, list[Webhook]] = {}
        for event in rows:
            claimed = session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == event.id, OutboxEvent.delivered_at.is_(None))
                .values(delivered_at=now)
            )
            if matched_rows(claimed) != 1:
                continue
            taken += 1
            event_type = public_type(event.type)
            if event_type in DIRECT_ONLY:
                continue
            if event.organization_id not in subscribers:
                subscribers[event.organization_id] = list(
                    session.scalars(
                        select(Webhook).where(
                            Webhook.organization_id == event.organization_id, Webhook.active.is_(True)
                        )
                    )
                )
            body = event_body(event.id, event_type, event.organization_id, event.created_at, event.payload)
            for webhook in subscribers[event.organization_id]:
                if event_type in (webhook.events or []):
                    session.add(
                        WebhookDelivery(
                            webhook_id=webhook.id,
                            organization_id=event.organization_id,
                            event_id=event.id,
                            event_type=event_type,
                            body=body,
                            created_at=event.created_at,
                            next_attempt_at=now,
                        )
                    )
    return taken


def due_webhooks(session: Session, now: datetime) -> list[tuple[str, str]]:
    """(webhook id, organisation id) of active webhooks with due deliveries and no sender."""
    due = (
        select(WebhookDelivery.webhook_id)
        .where(WebhookDelivery.status == DeliveryStatus.pending, WebhookDelivery.next_attempt_at <= now)
        .distinct()
    )
    return [
        (row.id, row.organization_id)
        for row in session.execute(
            select(Webhook.id, Webhook.organization_id).where(
                Webhook.id.in_(due),
                Webhook.active.is_(True),
                or_(Webhook.sending_until.is_(None), Webhook.sending_until < now),
            )
        )
    ]


def dispatch(queue: JobQueue, now: datetime | None = None) -> int:
    """Submit a delivery job for each webhook with due deliveries, holding its lease for
    that job; returns how many were submitted."""
    now = now or utcnow()
    submitted = 0
    with queue.database.session() as session:
        for webhook_id, organization_id in due_webhooks(session, now):
            sender = delivery.new_sender()
            held = session.execute(
                update(Webhook)
                .where(
                    Webhook.id == webhook_id,
                    or_(Webhook.sending_until.is_(None), Webhook.sending_until < now),
                )
                .values(sending_until=now + DISPATCH_HOLD, sender=sender)
            )
            if matched_rows(held) == 1:
                queue.submit(
                    session,
                    DELIVER,
                    {"webhook_id": webhook_id, "sender": sender},
                    organization_id=organization_id,
                )
                submitted += 1
    return submitted


@job_ticker("webhooks.relay")
def tick(queue: JobQueue) -> None:
    while relay_outbox(queue.database) == BATCH:
        pass
    dispatch(queue)


@job_handler(DELIVER)
def deliver(ctx: JobContext, webhook_id: str, sender: str | None = None) -> dict[str, Any]:
    """Send a webhook's due deliveries (the lease taken when the job was dispatched)."""
    outcomes = delivery.drain(ctx.database, ctx.settings, webhook_id, sender=sender)
    counts: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        counts[outcome.status] += 1
    return {"webhook_id": webhook_id, "attempts": len(outcomes), **counts}


PRUNE_BATCH = 1000  # rows deleted per transaction


def _delete_in_batches(database: Database, table: Any, *where: Any) -> int:
    removed = 0
    while True:
        with database.session() as session:
            ids = list(session.scalars(select(table.id).where(*where).limit(PRUNE_BATCH)))
            if ids:
                session.execute(delete(table).where(table.id.in_(ids)))
        removed += len(ids)
        if len(ids) < PRUNE_BATCH:
            return removed


@cleanup_step("webhook_records_removed")
def prune(ctx: JobContext) -> int:
    """Delete relayed events and finished deliveries (delivered, or failed for good: the
    dead letter is redeliverable until then) older than
    ``MAESTRO_WEBHOOK_DELIVERY_RETENTION_DAYS``; pending deliveries stay whatever their age."""
    cutoff = utcnow() - timedelta(days=ctx.settings.webhook_delivery_retention_days)
    events = _delete_in_batches(
        ctx.database, OutboxEvent, OutboxEvent.delivered_at.is_not(None), OutboxEvent.created_at < cutoff
    )
    deliveries = _delete_in_batches(
        ctx.database,
        WebhookDelivery,
        WebhookDelivery.status.in_((DeliveryStatus.succeeded, DeliveryStatus.failed)),
        WebhookDelivery.created_at < cutoff,
    )
    return events + deliveries
