from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from maestro.api.deps import CurrentPrincipal, SessionDep, SettingsDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep
from maestro.api.params import DeliveryId, OrganizationId, WebhookId, utc_query
from maestro.webhooks import service
from maestro.webhooks.schemas import (
    DeliveryRead,
    EventTypeRead,
    PingResult,
    Recovered,
    RecoverRequest,
    SecretRotate,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(prefix="/api/v1", tags=["webhooks"])


@router.get(
    "/webhooks/event-types", response_model=Envelope[list[EventTypeRead]], responses=error_responses(401, 429)
)
def list_event_types(principal: CurrentPrincipal) -> Envelope[list[EventTypeRead]]:
    """The events a webhook may subscribe to, each with the JSON schema of its `data`."""
    return Envelope(data=service.event_types())


@router.get(
    "/organizations/{org_id}/webhooks",
    response_model=Page[WebhookRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_webhooks(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[WebhookRead]:
    """The organisation's webhooks, newest first; their secrets are never shown again."""
    return service.list_webhooks(session, principal, org_id, params)


@router.post(
    "/organizations/{org_id}/webhooks",
    status_code=201,
    response_model=Envelope[WebhookWithSecret],
    responses=error_responses(401, 403, 404, 422, 429),
)
def create_webhook(
    org_id: OrganizationId,
    body: WebhookCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[WebhookWithSecret]:
    """Subscribe a URL to events (admins). The signing secret is in this answer only."""
    return Envelope(data=service.create_webhook(session, settings, principal, org_id, body))


@router.put(
    "/webhooks/{webhook_id}",
    response_model=Envelope[WebhookWithSecret],
    responses=error_responses(401, 403, 404, 422, 429),
)
def update_webhook(
    webhook_id: WebhookId,
    body: WebhookUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[WebhookWithSecret]:
    """Change a webhook, enable it again, or rotate its secret (`rotate_secret`)."""
    return Envelope(data=service.update_webhook(session, settings, principal, webhook_id, body))


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=error_responses(401, 403, 404, 422, 429))
def delete_webhook(webhook_id: WebhookId, principal: CurrentPrincipal, session: SessionDep) -> None:
    """Delete a webhook and its deliveries."""
    service.delete_webhook(session, principal, webhook_id)


@router.post(
    "/webhooks/{webhook_id}/rotate-secret",
    response_model=Envelope[WebhookWithSecret],
    responses=error_responses(401, 403, 404, 422, 429),
)
def rotate_secret(
    webhook_id: WebhookId,
    body: SecretRotate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[WebhookWithSecret]:
    """A new signing secret (in this answer only); the old one signs beside it for 24 hours."""
    return Envelope(data=service.rotate_secret(session, settings, principal, webhook_id, body))


@router.post(
    "/webhooks/{webhook_id}/test",
    response_model=Envelope[PingResult],
    responses=error_responses(401, 403, 404, 422, 429),
)
def test_webhook(
    webhook_id: WebhookId, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> Envelope[PingResult]:
    """Send a `webhook.test` event now and answer what the receiver said; a destination
    that is not allowed is a 422 and nothing is sent."""
    return Envelope(data=service.ping(session, settings, principal, webhook_id))


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_deliveries(
    webhook_id: WebhookId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    status: Annotated[
        Literal["pending", "succeeded", "failed"] | None, Query(description="Only deliveries in this state.")
    ] = None,
) -> Page[DeliveryRead]:
    """The webhook's deliveries, newest first: state, attempts and the receiver's last answer."""
    return service.list_deliveries(session, principal, webhook_id, params, status)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=Envelope[DeliveryRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def redeliver(
    webhook_id: WebhookId, delivery_id: DeliveryId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[DeliveryRead]:
    """Send a delivery again (a failed one from the dead letter, or any other), at once."""
    return Envelope(data=service.redeliver(session, principal, webhook_id, delivery_id))


@router.post(
    "/webhooks/{webhook_id}/recover",
    status_code=202,
    response_model=Envelope[Recovered],
    responses=error_responses(401, 403, 404, 422, 429),
)
def recover(
    webhook_id: WebhookId, body: RecoverRequest, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[Recovered]:
    """Send again every delivery that failed since a given time."""
    since = utc_query(body.since, "since")
    assert since is not None
    return Envelope(data=Recovered(requeued=service.recover(session, principal, webhook_id, since)))
