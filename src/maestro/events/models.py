from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, utcnow


class OutboxEvent(IdMixin, Base):
    """Something that happened, such as `model.created`, waiting to be delivered.

    A row is written in the transaction that made the change, so an event exists
    exactly when its change was committed; ``delivered_at`` is set once it has been
    handed on."""

    __tablename__ = "event_outbox"
    id_prefix = "evt"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_event_outbox_delivered_at_created_at", "delivered_at", "created_at"),)
