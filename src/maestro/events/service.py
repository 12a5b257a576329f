"""Recording events in the outbox. Callers pass their request's session: the row
lands with the change it describes or not at all."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session

from maestro.db import run_after_commit
from maestro.events.models import OutboxEvent

# Set once an event has been committed in this process, so a relay here picks it up at
# once instead of at its next look (relays in other processes look every interval).
written = threading.Event()


def record(session: Session, organization_id: str, type: str, payload: dict[str, Any]) -> OutboxEvent:
    """Add an event to the current transaction; never commits."""
    event = OutboxEvent(organization_id=organization_id, type=type, payload=payload)
    session.add(event)
    run_after_commit(session, written.set)
    return event
