from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from maestro.alerts import service
from maestro.alerts.schemas import (
    AlertDetail,
    AlertRead,
    AlertRuleCreate,
    AlertRuleRead,
    AlertRuleUpdate,
    ChannelCreate,
    ChannelRead,
    ChannelTestResult,
    ChannelUpdate,
    ChannelWithSecret,
    SilenceCreate,
    SilenceRead,
)
from maestro.api.deps import CurrentPrincipal, SessionDep, SettingsDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep
from maestro.api.params import DeploymentId, OrganizationId, path_id, utc_query

router = APIRouter(prefix="/api/v1", tags=["alerts"])

RuleId = Annotated[str, path_id("alert rule")]
AlertId = Annotated[str, path_id("alert")]
SilenceId = Annotated[str, path_id("silence")]
ChannelId = Annotated[str, path_id("notification channel")]
QueryId = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
ERRORS = error_responses(401, 403, 404, 422, 429)


# --- rules --------------------------------------------------------------------------------------
@router.post(
    "/deployments/{deployment_id}/monitoring/alerts",
    status_code=201,
    response_model=Envelope[AlertRuleRead],
    responses=ERRORS,
)
def create_alert_rule(
    deployment_id: DeploymentId, body: AlertRuleCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AlertRuleRead]:
    """Create an alert rule on one of the deployment's monitored quantities."""
    return Envelope(data=service.create_rule(session, principal, deployment_id, body))


@router.get(
    "/deployments/{deployment_id}/monitoring/alerts", response_model=Page[AlertRuleRead], responses=ERRORS
)
def list_alert_rules(
    deployment_id: DeploymentId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[AlertRuleRead]:
    """The deployment's alert rules, newest first, each with its evaluation state."""
    return service.list_rules(session, principal, deployment_id, params)


@router.get("/alert-rules/{rule_id}", response_model=Envelope[AlertRuleRead], responses=ERRORS)
def get_alert_rule(
    rule_id: RuleId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AlertRuleRead]:
    """One alert rule and its state."""
    return Envelope(data=service.get_rule(session, principal, rule_id))


@router.put("/alert-rules/{rule_id}", response_model=Envelope[AlertRuleRead], responses=ERRORS)
def update_alert_rule(
    rule_id: RuleId, body: AlertRuleUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AlertRuleRead]:
    """Change an alert rule; fields left out keep their value."""
    return Envelope(data=service.update_rule(session, principal, rule_id, body))


@router.delete("/alert-rules/{rule_id}", status_code=204, responses=ERRORS)
def delete_alert_rule(rule_id: RuleId, principal: CurrentPrincipal, session: SessionDep) -> None:
    """Delete an alert rule; its alerts stay in the history."""
    service.delete_rule(session, principal, rule_id)


# --- alerts -------------------------------------------------------------------------------------
@router.get("/organizations/{org_id}/alerts", response_model=Page[AlertRead], responses=ERRORS)
def list_alerts(
    org_id: OrganizationId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    status: Annotated[Literal["firing", "resolved"] | None, Query()] = None,
    severity: Annotated[Literal["low", "medium", "high", "critical"] | None, Query()] = None,
    deployment_id: QueryId = None,
    rule_id: QueryId = None,
    since: Annotated[datetime | None, Query(description="Alerts triggered at or after this time.")] = None,
) -> Page[AlertRead]:
    """The organisation's alerts, most recently triggered first."""
    return service.list_alerts(
        session,
        principal,
        org_id,
        params,
        status=status,
        severity=severity,
        deployment_id=deployment_id,
        rule_id=rule_id,
        since=utc_query(since, "since"),
    )


@router.get("/alerts/{alert_id}", response_model=Envelope[AlertDetail], responses=ERRORS)
def get_alert(alert_id: AlertId, principal: CurrentPrincipal, session: SessionDep) -> Envelope[AlertDetail]:
    """One alert with its timeline (triggered, notified, acknowledged, resolved…)."""
    return Envelope(data=service.get_alert(session, principal, alert_id))


@router.put("/alerts/{alert_id}/acknowledge", response_model=Envelope[AlertDetail], responses=ERRORS)
def acknowledge_alert(
    alert_id: AlertId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AlertDetail]:
    """Acknowledge an alert: no more reminders; its resolution is still notified."""
    return Envelope(data=service.acknowledge(session, principal, alert_id))


@router.put("/alerts/{alert_id}/resolve", response_model=Envelope[AlertDetail], responses=ERRORS)
def resolve_alert(
    alert_id: AlertId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AlertDetail]:
    """Resolve an alert by hand; its rule starts over from normal."""
    return Envelope(data=service.resolve(session, principal, alert_id))


# --- silences -----------------------------------------------------------------------------------
@router.post(
    "/organizations/{org_id}/alert-silences",
    status_code=201,
    response_model=Envelope[SilenceRead],
    responses=ERRORS,
)
def create_silence(
    org_id: OrganizationId, body: SilenceCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[SilenceRead]:
    """Silence a deployment's or a rule's alerts until a time: they are still raised,
    never notified."""
    return Envelope(data=service.create_silence(session, principal, org_id, body))


@router.get("/organizations/{org_id}/alert-silences", response_model=Page[SilenceRead], responses=ERRORS)
def list_silences(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[SilenceRead]:
    """The organisation's silences, newest first."""
    return service.list_silences(session, principal, org_id, params)


@router.delete("/organizations/{org_id}/alert-silences/{silence_id}", status_code=204, responses=ERRORS)
def delete_silence(
    org_id: OrganizationId, silence_id: SilenceId, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """End a silence now."""
    service.delete_silence(session, principal, org_id, silence_id)


# --- notification channels ----------------------------------------------------------------------
@router.get(
    "/organizations/{org_id}/notification-channels", response_model=Page[ChannelRead], responses=ERRORS
)
def list_notification_channels(
    org_id: OrganizationId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[ChannelRead]:
    """The organisation's notification channels; secrets are never shown again."""
    return service.list_channels(session, principal, org_id, params)


@router.post(
    "/organizations/{org_id}/notification-channels",
    status_code=201,
    response_model=Envelope[ChannelWithSecret],
    responses=ERRORS,
)
def create_notification_channel(
    org_id: OrganizationId,
    body: ChannelCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[ChannelWithSecret]:
    """A channel alert notifications go to (admins): a signed webhook (its secret is in
    this answer only), a Slack incoming webhook, or email addresses."""
    return Envelope(data=service.create_channel(session, settings, principal, org_id, body))


@router.put(
    "/notification-channels/{channel_id}", response_model=Envelope[ChannelWithSecret], responses=ERRORS
)
def update_notification_channel(
    channel_id: ChannelId,
    body: ChannelUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Envelope[ChannelWithSecret]:
    """Change a channel, or rotate a webhook channel's secret (`rotate_secret`)."""
    return Envelope(data=service.update_channel(session, settings, principal, channel_id, body))


@router.delete("/notification-channels/{channel_id}", status_code=204, responses=ERRORS)
def delete_notification_channel(
    channel_id: ChannelId, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Delete a channel; rules stop naming it."""
    service.delete_channel(session, principal, channel_id)


@router.post(
    "/notification-channels/{channel_id}/test", response_model=Envelope[ChannelTestResult], responses=ERRORS
)
def test_notification_channel(
    channel_id: ChannelId, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> Envelope[ChannelTestResult]:
    """Send a test notification now and answer whether it was delivered."""
    return Envelope(data=service.test_channel(session, settings, principal, channel_id))
