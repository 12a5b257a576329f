from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from maestro.schemas import StrictModel, Visible
from maestro.webhooks.catalogue import DIRECT_ONLY, EVENT_TYPES
from maestro.webhooks.outbound import MAX_URL_LENGTH
from maestro.webhooks.signing import PREFIX, valid_whsec

SUBSCRIBABLE = tuple(name for name in EVENT_TYPES if name not in DIRECT_ONLY)


def _known_events(events: list[str]) -> list[str]:
    unknown = [name for name in events if name not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; GET /api/v1/webhooks/event-types lists them")
    return list(dict.fromkeys(events))


def _usable_secret(secret: str) -> str:
    if secret.startswith(PREFIX):
        if not valid_whsec(secret):
            raise ValueError("a whsec_ secret must be base64 of 24 to 64 bytes")
    elif len(secret) < 16:
        raise ValueError("must be at least 16 characters (or a whsec_ secret)")
    return secret


WebhookName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
WebhookUrl = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_LENGTH)]
EventList = Annotated[
    list[str], Field(min_length=1, max_length=len(EVENT_TYPES)), AfterValidator(_known_events)
]
Secret = Annotated[
    str,
    StringConstraints(min_length=16, max_length=200, pattern=r"^[\x21-\x7e]+$"),
    AfterValidator(_usable_secret),
]


class WebhookCreate(StrictModel):
    name: WebhookName = Field(examples=["Deployment Notifications"])
    url: WebhookUrl = Field(examples=["https://example.com/webhooks/mlops"])
    events: EventList = Field(examples=[["deployment.created", "deployment.updated", "alert.triggered"]])
    secret: Secret | None = Field(
        None,
        description="The signing secret; generated (whsec_…) when left out. Shown only in this response.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookUpdate(StrictModel):
    """Fields left out keep their value."""

    name: WebhookName = Field(None)  # type: ignore[assignment]  # None: left out; null is refused
    url: WebhookUrl = Field(None)  # type: ignore[assignment]
    events: EventList = Field(None)  # type: ignore[arg-type]  # None: left out; null is refused
    active: bool = Field(  # type: ignore[assignment]
        None, description="`true` enables a webhook again (after it was disabled), `false` pauses it."
    )
    rotate_secret: bool = Field(
        False,
        description="Replace the signing secret by a new one (returned once); the old one keeps signing "
        "beside it for 24 hours.",
    )


class SecretRotate(StrictModel):
    secret: Secret | None = Field(None, description="The new secret; generated when left out.")


class WebhookRead(BaseModel):
    id: str = Field(examples=["hook_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    organization_id: str
    name: str
    url: str
    events: list[str]
    active: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        description="Until when the secret rotated out still signs beside the new one."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookRead):
    secret: str | None = Field(
        description="The signing secret, in the answer that created or rotated it only; store it now."
    )


class DeliveryRead(BaseModel):
    id: str = Field(examples=["dlv_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    webhook_id: str
    event_id: str = Field(description="Sent as `webhook-id`: the receiver's idempotency key.")
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    response_status: int | None
    response_body: str | None = Field(
        description="The start of the receiver's last answer (1,000 characters)."
    )
    latency_ms: float | None
    error: str | None
    created_at: datetime


class PingResult(BaseModel):
    delivered: bool
    delivery: DeliveryRead


class RecoverRequest(StrictModel):
    since: datetime = Field(description="Failed deliveries of events since this time are sent again.")


class Recovered(BaseModel):
    requeued: int


class EventTypeRead(BaseModel):
    type: str
    description: str
    data_schema: dict[str, Any] = Field(description="JSON schema of the event's `data`.")
