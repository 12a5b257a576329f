"""Recording events in the outbox. Callers pass their request's session: the row
lands with the change it describes or not at all."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from maestro.events.models import OutboxEvent


def record(session: Session, organization_id: str, type: str, payload: dict[str, Any]) -> OutboxEvent:
    """Add an event to the current transaction; never commits."""
    event = OutboxEvent(organization_id=organization_id, type=type, payload=payload)
    session.add(event)
    return event
