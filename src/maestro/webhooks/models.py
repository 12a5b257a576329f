from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its next attempt (due at next_attempt_at)
    succeeded = "succeeded"
    failed = "failed"  # every attempt failed: the dead letter, redeliverable


class Webhook(IdMixin, TimestampMixin, Base):
    """A subscription: where an organisation's events of the chosen types are sent."""

    __tablename__ = "webhooks"
    id_prefix = "hook"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[Any]] = mapped_column(default=list)
    # Signing secrets, sealed with the installation's key; the previous one keeps signing
    # beside the new one until previous_secret_expires_at after a rotation.
    secret_sealed: Mapped[str] = mapped_column(Text)
    previous_secret_sealed: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[datetime | None]
    # Since when every attempt failed (None after a success): five days of it disable the webhook.
    failing_since: Mapped[datetime | None]
    # One process sends a webhook's deliveries at a time, oldest first, until this lease ends.
    sending_until: Mapped[datetime | None]
    sender: Mapped[str | None] = mapped_column(String(60))  # who holds that lease
    created_by_id: Mapped[str | None] = mapped_column(String(40))


class WebhookDelivery(IdMixin, Base):
    """One event for one webhook, with the outcome of its latest attempt."""

    __tablename__ = "webhook_deliveries"
    id_prefix = "dlv"

    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(
        String(40)
    )  # the `webhook-id` header: the receiver's idempotency key
    event_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent, the same bytes on every attempt
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(String(2000))
    latency_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        Index(
            "ix_webhook_deliveries_webhook_id_status_next_attempt_at",
            "webhook_id",
            "status",
            "next_attempt_at",
        ),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
    )
