"""Sending deliveries: one signed attempt at a time, retried on the Standard Webhooks
schedule, dead-lettered after the last attempt.

One process at a time sends a webhook's deliveries, holding a lease on the webhook row
(``sending_until``/``sender``, taken with a conditional UPDATE), oldest due delivery
first; so several workers share the deliveries of many webhooks without sending one
twice at once. An attempt's outcome is written with a conditional UPDATE on the
delivery's attempt count, so a sender that lost its lease cannot overwrite a newer one.
A process killed mid-attempt leaves the delivery pending: it is sent again, with the same
``webhook-id``, once the lease runs out (at least once; receivers deduplicate by id).

Time comes from a ``Clock`` (the system's by default) so tests move it instead of sleeping.
"""

from __future__ import annotations

import logging
import random
import secrets as random_tokens
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from maestro.db import Database, matched_rows, utcnow
from maestro.events import service as events
from maestro.identity.models import AuditLog
from maestro.webhooks import outbound, signing
from maestro.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery

if TYPE_CHECKING:
    from maestro.config import Settings

logger = logging.getLogger("maestro.webhooks")

# Seconds before each attempt, counted from the failure of the one before (the first is
# at once): the Standard Webhooks schedule, ten attempts over about three days.
SCHEDULE = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
JITTER = 0.1  # each wait is stretched or shrunk by up to this share
MAX_RETRY_AFTER = 24 * 3600
DISABLE_AFTER = timedelta(days=5)
RESPONSE_KEPT = 1000  # characters of a receiver's answer kept with the delivery
LEASE_MARGIN = timedelta(seconds=1)


class Clock:
    """The time deliveries are scheduled and sent by."""

    def now(self) -> datetime:
        return utcnow()


class ManualClock(Clock):
    """A clock that moves only when told: for tests and rehearsals of the retry schedule."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or utcnow()

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


SYSTEM_CLOCK = Clock()


def retry_delay(attempts_made: int, rng: Callable[[float, float], float] = random.uniform) -> float | None:
    """Seconds to wait before the next attempt once ``attempts_made`` have failed; None
    when the schedule is spent."""
    if attempts_made >= len(SCHEDULE):
        return None
    base = SCHEDULE[attempts_made]
    return base * rng(1 - JITTER, 1 + JITTER) if base else 0.0


def live_secrets(settings: Settings, webhook: Webhook, now: datetime) -> list[str]:
    """The secrets that sign: the current one, and the one rotated out while it still may."""
    found = [signing.unseal(settings, webhook.secret_sealed)]
    if (
        webhook.previous_secret_sealed
        and webhook.previous_secret_expires_at is not None
        and webhook.previous_secret_expires_at > now
    ):
        found.append(signing.unseal(settings, webhook.previous_secret_sealed))
    return found


def send_signed(
    settings: Settings,
    url: str,
    message_id: str,
    body: bytes,
    secrets: list[str],
    now: datetime,
    *,
    resolver: outbound.Resolver | None = None,
) -> outbound.SendResult:
    """One signed JSON POST through the outbound guard: what webhooks (and alert
    channels) send. Raises ``DestinationRefused`` for a URL the guard refuses."""
    headers = signing.headers(message_id, now, body, secrets)
    return outbound.send(url, body, headers, settings, resolver=resolver)


@dataclass
class Outcome:
    delivery_id: str
    status: str
    response_status: int | None


def _lease(database: Database, webhook_id: str, sender: str, now: datetime, settings: Settings) -> bool:
    """Take or renew the webhook's sending lease for ``sender``."""
    # Outlasts one attempt (bounded by the timeout), so only a dead sender loses it.
    until = now + timedelta(seconds=2 * settings.webhook_timeout_seconds) + LEASE_MARGIN
    with database.session() as session:
        taken = session.execute(
            update(Webhook)
            .where(
                Webhook.id == webhook_id,
                Webhook.active.is_(True),
                or_(Webhook.sender == sender, Webhook.sending_until.is_(None), Webhook.sending_until < now),
            )
            .values(sending_until=until, sender=sender)
        )
        return matched_rows(taken) == 1


def _release(database: Database, webhook_id: str, sender: str) -> None:
    with database.session() as session:
        session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.sender == sender)
            .values(sending_until=None, sender=None)
        )


def new_sender() -> str:
    return random_tokens.token_hex(16)


def drain(
    database: Database,
    settings: Settings,
    webhook_id: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sender: str | None = None,
    resolver: outbound.Resolver | None = None,
    limit: int = 10_000,
) -> list[Outcome]:
    """Send the webhook's due deliveries, oldest first, one at a time, until none is
    due; returns what each attempt came to. ``sender``: the lease a dispatcher took for
    this call (a new one is taken otherwise)."""
    sender = sender or new_sender()
    outcomes: list[Outcome] = []
    try:
        while len(outcomes) < limit:
            now = clock.now()
            if not _lease(database, webhook_id, sender, now, settings):
                break
            with database.session(write=False) as session:
                delivery = session.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.webhook_id == webhook_id,
                        WebhookDelivery.status == DeliveryStatus.pending,
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
                    .limit(1)
                ).first()
                webhook = session.get(Webhook, webhook_id)
                if delivery is None or webhook is None:
                    break
                session.expunge_all()
            outcomes.append(attempt(database, settings, webhook, delivery, clock=clock, resolver=resolver))
    finally:
        _release(database, webhook_id, sender)
    return outcomes


def attempt(
    database: Database,
    settings: Settings,
    webhook: Webhook,
    delivery: WebhookDelivery,
    *,
    clock: Clock = SYSTEM_CLOCK,
    resolver: outbound.Resolver | None = None,
) -> Outcome:
    """One attempt of one delivery, and its outcome recorded."""
    now = clock.now()
    body = delivery.body.encode("utf-8")
    try:
        result = send_signed(
            settings,
            webhook.url,
            delivery.event_id,
            body,
            live_secrets(settings, webhook, now),
            now,
            resolver=resolver,
        )
    except outbound.DestinationRefused as refused:
        result = outbound.SendResult(status_code=None, body="", latency_ms=0.0, error=refused.message)
    except signing.SecretUnreadable as unreadable:
        result = outbound.SendResult(status_code=None, body="", latency_ms=0.0, error=str(unreadable))
    return record_outcome(database, webhook.id, delivery, result, now)


def record_outcome(
    database: Database, webhook_id: str, delivery: WebhookDelivery, result: outbound.SendResult, now: datetime
) -> Outcome:
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "response_status": result.status_code,
        "response_body": result.body[:RESPONSE_KEPT] if result.body else None,
        "latency_ms": result.latency_ms,
        "error": result.error[:500] if result.error else None,
    }
    gone = result.status_code == 410
    if result.succeeded:
        values.update(status=DeliveryStatus.succeeded, delivered_at=now, next_attempt_at=None)
    else:
        delay = None if gone else retry_delay(attempts)
        if delay is not None and result.retry_after is not None:
            delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
        if delay is None:
            values.update(status=DeliveryStatus.failed, next_attempt_at=None)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=delay))
    with database.session() as session:
        written = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.status == DeliveryStatus.pending,
                WebhookDelivery.attempts == delivery.attempts,
            )
            .values(**values)
        )
        if matched_rows(written) != 1:
            logger.warning("delivery %s changed while it was being sent; outcome dropped", delivery.id)
        else:
            webhook = session.get(Webhook, webhook_id)
            if webhook is not None:
                _follow_health(session, webhook, result, now, gone=gone)
    return Outcome(delivery.id, str(values.get("status", DeliveryStatus.pending)), result.status_code)


def _follow_health(
    session: Session, webhook: Webhook, result: outbound.SendResult, now: datetime, *, gone: bool
) -> None:
    """A success clears the failure streak; 410 Gone, or five days of nothing but
    failures, disables the webhook."""
    if result.succeeded:
        webhook.failing_since = None
        return
    if webhook.failing_since is None:
        webhook.failing_since = now
    if gone:
        disable(session, webhook, "the receiver answered 410 Gone", now)
    elif now - webhook.failing_since >= DISABLE_AFTER:
        disable(session, webhook, "every delivery failed for five days", now)


def disable(session: Session, webhook: Webhook, reason: str, now: datetime) -> None:
    """Stop sending to a webhook, with an event and an audit entry saying why."""
    if not webhook.active:
        return
    webhook.active = False
    webhook.disabled_reason = reason
    webhook.disabled_at = now
    events.record(
        session,
        webhook.organization_id,
        "webhook.disabled",
        {"webhook_id": webhook.id, "name": webhook.name, "reason": reason},
    )
    session.add(
        AuditLog(
            organization_id=webhook.organization_id,
            actor_type="system",
            actor_id=None,
            action="webhooks:disable_webhook",
            resource_type="webhooks",
            resource_id=webhook.id,
            outcome="success",
            details={"reason": reason, "name": webhook.name},
        )
    )
    logger.warning("webhook %s disabled: %s", webhook.id, reason)
