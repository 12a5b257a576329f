"""Webhooks of an organisation: managed by its admins (and API keys granted `webhooks`),
invisible to everyone else (another organisation's ids answer 404 like unknown ones).

A signing secret is returned only by the answer that created or rotated it; it is stored
sealed, and neither the audit log nor the logs ever see it (nor a URL's path, which some
receivers use as a credential)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maestro.api.pagination import PageParams, paginate
from maestro.db import matched_rows, new_id, release_write_lock, run_after_commit, utcnow
from maestro.errors import NotFound
from maestro.events import service as events
from maestro.events.models import OutboxEvent
from maestro.identity import audit
from maestro.identity.rbac import Principal, Target, authorize
from maestro.webhooks import catalogue, delivery, outbound, signing
from maestro.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from maestro.webhooks.relay import event_body
from maestro.webhooks.schemas import (
    DeliveryRead,
    EventTypeRead,
    PingResult,
    SecretRotate,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    WebhookWithSecret,
)

if TYPE_CHECKING:
    from maestro.api.envelope import Page
    from maestro.config import Settings

ROTATION_OVERLAP = timedelta(hours=24)
MISSING = "No such webhook"


# --- what other domains (alert channels) reuse ------------------------------------------------
def check_destination(url: str, settings: Settings, *, resolver: outbound.Resolver | None = None) -> None:
    """Refuse (422, on the field ``url``) a URL that outbound requests must not reach;
    names that do not resolve yet pass here and are checked again at every send."""
    outbound.check_url(url, settings, resolver=resolver, resolve=False)


def send_signed_json(
    settings: Settings,
    url: str,
    payload: dict[str, Any],
    *,
    message_id: str,
    secrets: list[str],
    resolver: outbound.Resolver | None = None,
) -> outbound.SendResult:
    """One JSON POST, signed with Standard Webhooks headers under each of ``secrets``,
    through the outbound guard: the answer (or why none came) is in the result; a refused
    destination raises ``outbound.DestinationRefused`` and nothing is sent."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return delivery.send_signed(settings, url, message_id, body, secrets, utcnow(), resolver=resolver)


def event_types() -> list[EventTypeRead]:
    return [
        EventTypeRead(type=name, description=description, data_schema=catalogue.data_schema(name))
        for name, (description, _) in catalogue.EVENT_TYPES.items()
    ]


def _read(webhook: Webhook) -> WebhookRead:
    return WebhookRead.model_validate(webhook, from_attributes=True)


def _with_secret(webhook: Webhook, secret: str | None) -> WebhookWithSecret:
    return WebhookWithSecret(**_read(webhook).model_dump(), secret=secret)


def _where(url: str) -> str:
    """What the audit log keeps of a URL: scheme and host, never its path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _audit(session: Session, webhook: Webhook, **details: Any) -> None:
    audit.describe(
        session,
        resource_type="webhooks",
        resource_id=webhook.id,
        organization_id=webhook.organization_id,
        name=webhook.name,
        destination=_where(webhook.url),
        events=list(webhook.events),
        **details,
    )


def get_webhook(
    session: Session, principal: Principal, webhook_id: str, action: Literal["read", "write", "delete"]
) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFound(MISSING)
    authorize(session, principal, action, Target("webhooks", webhook.organization_id), missing=MISSING)
    return webhook


def list_webhooks(
    session: Session, principal: Principal, organization_id: str, params: PageParams
) -> Page[WebhookRead]:
    authorize(session, principal, "read", Target("webhooks", organization_id))
    return paginate(
        session,
        select(Webhook).where(Webhook.organization_id == organization_id),
        params,
        sort_column=Webhook.created_at,
        id_column=Webhook.id,
        to_item=lambda rows: [_read(row) for row in rows],
    )


def create_webhook(
    session: Session, settings: Settings, principal: Principal, organization_id: str, body: WebhookCreate
) -> WebhookWithSecret:
    authorize(session, principal, "write", Target("webhooks", organization_id))
    outbound.check_url(body.url, settings, resolve=False)
    secret = body.secret or signing.generate_secret()
    webhook = Webhook(
        organization_id=organization_id,
        name=body.name,
        url=body.url,
        events=body.events,
        secret_sealed=signing.seal(settings, secret),
        created_by_id=principal.user_id or principal.id,
    )
    session.add(webhook)
    session.flush()
    _audit(session, webhook)
    return _with_secret(webhook, secret)


def _rotate(settings: Settings, webhook: Webhook, secret: str | None) -> str:
    new = secret or signing.generate_secret()
    webhook.previous_secret_sealed = webhook.secret_sealed
    webhook.previous_secret_expires_at = utcnow() + ROTATION_OVERLAP
    webhook.secret_sealed = signing.seal(settings, new)
    return new


def update_webhook(
    session: Session, settings: Settings, principal: Principal, webhook_id: str, body: WebhookUpdate
) -> WebhookWithSecret:
    webhook = get_webhook(session, principal, webhook_id, "write")
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes:
        outbound.check_url(body.url, settings, resolve=False)
        webhook.url = body.url
    if "name" in changes:
        webhook.name = body.name
    if "events" in changes:
        webhook.events = body.events
    if "active" in changes:
        webhook.active = body.active
        if body.active:
            webhook.disabled_reason = webhook.disabled_at = webhook.failing_since = None
        else:
            webhook.disabled_reason, webhook.disabled_at = "paused by a person", utcnow()
    secret = _rotate(settings, webhook, None) if body.rotate_secret else None
    webhook.updated_at = utcnow()
    session.flush()
    _audit(session, webhook, changed=sorted(changes), secret_rotated=bool(body.rotate_secret))
    return _with_secret(webhook, secret)


def rotate_secret(
    session: Session, settings: Settings, principal: Principal, webhook_id: str, body: SecretRotate
) -> WebhookWithSecret:
    webhook = get_webhook(session, principal, webhook_id, "write")
    secret = _rotate(settings, webhook, body.secret)
    webhook.updated_at = utcnow()
    session.flush()
    _audit(session, webhook, secret_rotated=True)
    return _with_secret(webhook, secret)


def delete_webhook(session: Session, principal: Principal, webhook_id: str) -> None:
    webhook = get_webhook(session, principal, webhook_id, "delete")
    _audit(session, webhook)
    session.delete(webhook)
    session.flush()


def list_deliveries(
    session: Session, principal: Principal, webhook_id: str, params: PageParams, status: str | None = None
) -> Page[DeliveryRead]:
    webhook = get_webhook(session, principal, webhook_id, "read")
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status)
    return paginate(
        session,
        statement,
        params,
        sort_column=WebhookDelivery.created_at,
        id_column=WebhookDelivery.id,
        to_item=lambda rows: [DeliveryRead.model_validate(row, from_attributes=True) for row in rows],
    )


def _wake_after_commit(session: Session) -> None:
    run_after_commit(session, events.written.set)


def redeliver(session: Session, principal: Principal, webhook_id: str, delivery_id: str) -> DeliveryRead:
    """Send a delivery again, whatever became of it, with a fresh schedule."""
    webhook = get_webhook(session, principal, webhook_id, "write")
    found = session.get(WebhookDelivery, delivery_id)
    if found is None or found.webhook_id != webhook.id:
        raise NotFound("No such delivery")
    found.status = DeliveryStatus.pending
    found.attempts = 0
    found.next_attempt_at = utcnow()
    session.flush()
    _wake_after_commit(session)
    audit.describe(
        session,
        resource_type="webhooks",
        resource_id=webhook.id,
        organization_id=webhook.organization_id,
        delivery_id=found.id,
        event_id=found.event_id,
    )
    return DeliveryRead.model_validate(found, from_attributes=True)


def recover(session: Session, principal: Principal, webhook_id: str, since: datetime) -> int:
    """Send again every failed delivery of events since ``since``."""
    webhook = get_webhook(session, principal, webhook_id, "write")
    requeued = matched_rows(
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == webhook.id,
                WebhookDelivery.status == DeliveryStatus.failed,
                WebhookDelivery.created_at >= since,
            )
            .values(status=DeliveryStatus.pending, attempts=0, next_attempt_at=utcnow())
        )
    )
    _wake_after_commit(session)
    audit.describe(
        session,
        resource_type="webhooks",
        resource_id=webhook.id,
        organization_id=webhook.organization_id,
        since=since.isoformat(),
        requeued=requeued,
    )
    return requeued


def ping(
    session: Session,
    settings: Settings,
    principal: Principal,
    webhook_id: str,
    *,
    resolver: outbound.Resolver | None = None,
) -> PingResult:
    """Send a ``webhook.test`` event to the webhook now, through the same guarded client,
    and keep it among its deliveries. A refused destination is a 422 and nothing is sent."""
    webhook = get_webhook(session, principal, webhook_id, "write")
    outbound.check_url(webhook.url, settings, resolver=resolver)
    now = utcnow()
    event_id = new_id(OutboxEvent.id_prefix)
    body = event_body(
        event_id,
        "webhook.test",
        webhook.organization_id,
        now,
        {"webhook_id": webhook.id, "message": "A test delivery from Maestro"},
    )
    row = WebhookDelivery(
        webhook_id=webhook.id,
        organization_id=webhook.organization_id,
        event_id=event_id,
        event_type="webhook.test",
        body=body,
        created_at=now,
        next_attempt_at=None,
    )
    secrets = delivery.live_secrets(settings, webhook, now)
    url = webhook.url
    release_write_lock(session)  # the receiver may take its time: hold no lock meanwhile
    result = delivery.send_signed(
        settings, url, event_id, body.encode("utf-8"), secrets, now, resolver=resolver
    )
    row.attempts = 1
    row.last_attempt_at = now
    row.status = DeliveryStatus.succeeded if result.succeeded else DeliveryStatus.failed
    row.delivered_at = now if result.succeeded else None
    row.response_status = result.status_code
    row.response_body = result.body[: delivery.RESPONSE_KEPT] if result.body else None
    row.latency_ms = result.latency_ms
    row.error = result.error[:500] if result.error else None
    session.add(row)
    session.flush()
    return PingResult(
        delivered=result.succeeded, delivery=DeliveryRead.model_validate(row, from_attributes=True)
    )
