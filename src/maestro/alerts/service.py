"""Alert rules of a deployment (its project's monitoring permissions), the alerts they
raise and their silences (the organisation's members read them; developers acknowledge,
resolve and silence), and notification channels (the organisation's admins, as webhooks).
Another organisation's ids answer 404 exactly like unknown ones.

A channel's secret (a webhook's signing secret, Slack's URL) is sealed at rest, returned
only by the answer that created or rotated it, and never written to the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from maestro.alerts import channels
from maestro.alerts.models import Alert, AlertRule, AlertStatus, NotificationChannel, RuleState, Silence
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
    TimelineEntry,
)
from maestro.api.pagination import PageParams, paginate
from maestro.db import new_id, release_write_lock, utc_iso, utcnow
from maestro.deployments.models import Deployment
from maestro.deployments.service import NO_SUCH_DEPLOYMENT
from maestro.errors import NotFound, ValidationFailed
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.monitoring import service as monitoring
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.webhooks import service as webhooks
from maestro.webhooks import signing

if TYPE_CHECKING:
    from maestro.api.envelope import Page
    from maestro.config import Settings

NO_SUCH_RULE = "No such alert rule"
NO_SUCH_ALERT = "No such alert"
NO_SUCH_SILENCE = "No such silence"
NO_SUCH_CHANNEL = "No such notification channel"
SLACK_HOST = "hooks.slack.com"


def _actor(principal: Principal) -> str:
    return principal.user_id or principal.id


# --- rules --------------------------------------------------------------------------------------
def _deployment(session: Session, principal: Principal, deployment_id: str, action: Action) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(NO_SUCH_DEPLOYMENT)
    project = projects_service.get_project(session, deployment.project_id)
    projects_service.authorize_in_project(
        session, principal, "monitoring", action, project, missing=NO_SUCH_DEPLOYMENT
    )
    return deployment


def rule_read(rule: AlertRule) -> AlertRuleRead:
    return AlertRuleRead(
        id=rule.id,
        organization_id=rule.organization_id,
        project_id=rule.project_id,
        deployment_id=rule.deployment_id,
        name=rule.name,
        alert_type=rule.alert_type,
        metric_name=rule.metric_name,
        threshold=rule.threshold,
        operator=rule.operator,
        severity=rule.severity,
        notification_channels=list(rule.notification_channels),
        window=rule.window_seconds,
        for_=rule.for_seconds,
        repeat_interval=rule.repeat_interval_seconds,
        enabled=rule.enabled,
        min_samples=rule.min_samples,
        no_data_fires=rule.no_data_fires,
        state=rule.state,  # type: ignore[arg-type]
        pending_since=rule.pending_since,
        last_value=rule.last_value,
        last_evaluated_at=rule.last_evaluated_at,
        current_alert_id=rule.current_alert_id,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def _check_metric(session: Session, deployment_id: str, name: str) -> None:
    """Monitoring's own function judges the name (unknown names, unknown drift columns),
    over the last closed minute; its refusal is told on ``metric_name``."""
    end = utcnow().replace(second=0, microsecond=0)
    try:
        monitoring.quantity(session, None, deployment_id, name, end - timedelta(minutes=1), end)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message, details=[("metric_name", exc.message[:500])]) from exc


def _check_channels(session: Session, organization_id: str, ids: list[str]) -> list[str]:
    ids = list(dict.fromkeys(ids))
    if not ids:
        return ids
    found = set(
        session.scalars(
            select(NotificationChannel.id).where(
                NotificationChannel.id.in_(ids), NotificationChannel.organization_id == organization_id
            )
        )
    )
    unknown = [channel for channel in ids if channel not in found]
    if unknown:
        raise ValidationFailed(
            "Unknown notification channels",
            details=[("notification_channels", f"no such channel: {', '.join(unknown)[:400]}")],
        )
    return ids


def _audit_rule(session: Session, rule: AlertRule, **details: Any) -> None:
    audit.describe(
        session,
        resource_type="alert_rules",
        resource_id=rule.id,
        organization_id=rule.organization_id,
        deployment_id=rule.deployment_id,
        metric_name=rule.metric_name,
        operator=rule.operator,
        threshold=rule.threshold,
        **details,
    )


def create_rule(
    session: Session, principal: Principal, deployment_id: str, body: AlertRuleCreate
) -> AlertRuleRead:
    deployment = _deployment(session, principal, deployment_id, "write")
    _check_metric(session, deployment.id, body.metric_name)
    rule = AlertRule(
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        deployment_id=deployment.id,
        name=body.name or f"{body.metric_name} {body.operator} {body.threshold:g}",
        alert_type=body.alert_type,
        metric_name=body.metric_name,
        threshold=body.threshold,
        operator=body.operator,
        severity=body.severity,
        notification_channels=_check_channels(
            session, deployment.organization_id, body.notification_channels
        ),
        window_seconds=body.window,
        for_seconds=body.for_,
        repeat_interval_seconds=body.repeat_interval,
        enabled=body.enabled,
        min_samples=body.min_samples,
        no_data_fires=body.no_data_fires,
        created_by_id=_actor(principal),
        state=RuleState.normal,
    )
    session.add(rule)
    session.flush()
    _audit_rule(session, rule)
    return rule_read(rule)


def list_rules(
    session: Session, principal: Principal, deployment_id: str, params: PageParams
) -> Page[AlertRuleRead]:
    deployment = _deployment(session, principal, deployment_id, "read")
    return paginate(
        session,
        select(AlertRule).where(AlertRule.deployment_id == deployment.id),
        params,
        sort_column=AlertRule.created_at,
        id_column=AlertRule.id,
        to_item=lambda rows: [rule_read(row) for row in rows],
    )


def _rule(session: Session, principal: Principal, rule_id: str, action: Action) -> AlertRule:
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFound(NO_SUCH_RULE)
    project = projects_service.get_project(session, rule.project_id)
    projects_service.authorize_in_project(
        session, principal, "monitoring", action, project, missing=NO_SUCH_RULE
    )
    return rule


def get_rule(session: Session, principal: Principal, rule_id: str) -> AlertRuleRead:
    return rule_read(_rule(session, principal, rule_id, "read"))


_RULE_COLUMNS = {
    "window": "window_seconds",
    "for_": "for_seconds",
    "repeat_interval": "repeat_interval_seconds",
}


def update_rule(session: Session, principal: Principal, rule_id: str, body: AlertRuleUpdate) -> AlertRuleRead:
    rule = _rule(session, principal, rule_id, "write")
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        if value is None:
            raise ValidationFailed(
                f"{field} cannot be null", details=[(field.rstrip("_"), "must not be null")]
            )
    if "metric_name" in changes:
        _check_metric(session, rule.deployment_id, changes["metric_name"])
    if "notification_channels" in changes:
        changes["notification_channels"] = _check_channels(
            session, rule.organization_id, changes["notification_channels"]
        )
    for field, value in changes.items():
        setattr(rule, _RULE_COLUMNS.get(field, field), value)
    if {"metric_name", "threshold", "operator", "window", "min_samples"} & changes.keys() and rule.state in (
        RuleState.pending,
        RuleState.no_data,
    ):
        rule.state, rule.pending_since = RuleState.normal, None  # a new condition starts afresh
    rule.updated_at = utcnow()
    session.flush()
    _audit_rule(session, rule, changed=sorted(field.rstrip("_") for field in changes))
    return rule_read(rule)


def delete_rule(session: Session, principal: Principal, rule_id: str) -> None:
    rule = _rule(session, principal, rule_id, "delete")
    _audit_rule(session, rule)
    open_alert = session.get(Alert, rule.current_alert_id) if rule.current_alert_id else None
    if open_alert is not None and open_alert.status == AlertStatus.firing:
        now = utcnow()
        open_alert.status, open_alert.resolved_at = AlertStatus.resolved, now
        note(open_alert, "resolved", now, by=_actor(principal), detail="its rule was deleted")
    session.delete(rule)
    session.flush()


# --- alerts -------------------------------------------------------------------------------------
def alert_read(alert: Alert) -> AlertRead:
    return AlertRead(
        id=alert.id,
        organization_id=alert.organization_id,
        rule_id=alert.rule_id,
        deployment_id=alert.deployment_id,
        rule_name=alert.rule_name,
        metric_name=alert.metric_name,
        operator=alert.operator,
        threshold=alert.threshold,
        severity=alert.severity,
        status=alert.status,  # type: ignore[arg-type]
        value=alert.value,
        triggered_at=alert.triggered_at,
        resolved_at=alert.resolved_at,
        acknowledged=alert.acknowledged_at is not None,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by_id=alert.acknowledged_by_id,
    )


def alert_detail(alert: Alert) -> AlertDetail:
    return AlertDetail(
        **alert_read(alert).model_dump(),
        timeline=[TimelineEntry.model_validate(entry) for entry in alert.timeline],
    )


def note(alert: Alert, event: str, at: datetime, **fields: Any) -> None:
    """Add an entry to the alert's timeline (a new list, so the change is saved)."""
    entry = {"at": at.astimezone(UTC).isoformat(), "event": event}
    entry.update({key: value for key, value in fields.items() if value is not None})
    alert.timeline = [*alert.timeline, entry]


def list_alerts(
    session: Session,
    principal: Principal,
    organization_id: str,
    params: PageParams,
    *,
    status: str | None = None,
    severity: str | None = None,
    deployment_id: str | None = None,
    rule_id: str | None = None,
    since: datetime | None = None,
) -> Page[AlertRead]:
    authorize(session, principal, "read", Target("alerts", organization_id))
    statement = select(Alert).where(Alert.organization_id == organization_id)
    if principal.kind == "user":  # a private project's alerts are its members' (and admins')
        visible = projects_service.visible_projects(session, principal, organization_id)
        statement = statement.where(
            Alert.project_id.in_(visible.with_only_columns(Project.id).order_by(None))
        )
    if status is not None:
        statement = statement.where(Alert.status == status)
    if severity is not None:
        statement = statement.where(Alert.severity == severity)
    if deployment_id is not None:
        statement = statement.where(Alert.deployment_id == deployment_id)
    if rule_id is not None:
        statement = statement.where(Alert.rule_id == rule_id)
    if since is not None:
        statement = statement.where(Alert.triggered_at >= since)
    return paginate(
        session,
        statement,
        params,
        sort_column=Alert.triggered_at,
        id_column=Alert.id,
        to_item=lambda rows: [alert_read(row) for row in rows],
    )


def _alert(session: Session, principal: Principal, alert_id: str, action: Action) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(NO_SUCH_ALERT)
    authorize(session, principal, action, Target("alerts", alert.organization_id), missing=NO_SUCH_ALERT)
    if principal.kind == "user":
        project = projects_service.get_project(session, alert.project_id)
        authorize(
            session,
            principal,
            "read",
            Target("projects", project.organization_id, project),
            missing=NO_SUCH_ALERT,
        )
    return alert


def get_alert(session: Session, principal: Principal, alert_id: str) -> AlertDetail:
    return alert_detail(_alert(session, principal, alert_id, "read"))


def _audit_alert(session: Session, alert: Alert, **details: Any) -> None:
    audit.describe(
        session,
        resource_type="alerts",
        resource_id=alert.id,
        organization_id=alert.organization_id,
        rule_id=alert.rule_id,
        **details,
    )


def acknowledge(session: Session, principal: Principal, alert_id: str) -> AlertDetail:
    """Stops reminders for a firing alert; its resolution is still notified."""
    alert = _alert(session, principal, alert_id, "write")
    if alert.acknowledged_at is None:
        now = utcnow()
        alert.acknowledged_at, alert.acknowledged_by_id = now, _actor(principal)
        note(alert, "acknowledged", now, by=_actor(principal))
        session.flush()
    _audit_alert(session, alert, action="acknowledge")
    return alert_detail(alert)


def resolve(session: Session, principal: Principal, alert_id: str) -> AlertDetail:
    """Closes an alert by hand; its rule starts over from normal (a condition that still
    holds raises a new alert after ``for``)."""
    alert = _alert(session, principal, alert_id, "write")
    if alert.status != AlertStatus.resolved:
        now = utcnow()
        alert.status, alert.resolved_at = AlertStatus.resolved, now
        note(alert, "resolved", now, by=_actor(principal), detail="resolved by hand")
        if alert.rule_id is not None:
            rule = session.get(AlertRule, alert.rule_id)
            if rule is not None and rule.current_alert_id == alert.id:
                rule.current_alert_id, rule.state, rule.pending_since = None, RuleState.normal, None
        session.flush()
    _audit_alert(session, alert, action="resolve")
    return alert_detail(alert)


# --- silences -----------------------------------------------------------------------------------
def _silence_read(silence: Silence) -> SilenceRead:
    return SilenceRead.model_validate(silence, from_attributes=True)


def create_silence(
    session: Session, principal: Principal, organization_id: str, body: SilenceCreate
) -> SilenceRead:
    authorize(session, principal, "write", Target("alerts", organization_id))
    if (body.deployment_id is None) == (body.rule_id is None):
        raise ValidationFailed(
            "A silence names either a deployment or a rule",
            details=[("deployment_id", "give one of the two")],
        )
    ends_at = body.ends_at if body.ends_at.tzinfo else body.ends_at.replace(tzinfo=UTC)
    if ends_at <= utcnow():
        raise ValidationFailed("ends_at must be in the future", details=[("ends_at", "not in the future")])
    if body.rule_id is not None:
        rule = session.get(AlertRule, body.rule_id)
        if rule is None or rule.organization_id != organization_id:
            raise ValidationFailed("No such alert rule", details=[("rule_id", "no such rule")])
    if body.deployment_id is not None:
        deployment = session.get(Deployment, body.deployment_id)
        if deployment is None or deployment.organization_id != organization_id:
            raise ValidationFailed("No such deployment", details=[("deployment_id", "no such deployment")])
    silence = Silence(
        organization_id=organization_id,
        deployment_id=body.deployment_id,
        rule_id=body.rule_id,
        ends_at=ends_at,
        reason=body.reason,
        created_by_id=_actor(principal),
    )
    session.add(silence)
    session.flush()
    audit.describe(
        session, resource_type="alert_silences", resource_id=silence.id, organization_id=organization_id
    )
    return _silence_read(silence)


def list_silences(
    session: Session, principal: Principal, organization_id: str, params: PageParams
) -> Page[SilenceRead]:
    authorize(session, principal, "read", Target("alerts", organization_id))
    return paginate(
        session,
        select(Silence).where(Silence.organization_id == organization_id),
        params,
        sort_column=Silence.created_at,
        id_column=Silence.id,
        to_item=lambda rows: [_silence_read(row) for row in rows],
    )


def delete_silence(session: Session, principal: Principal, organization_id: str, silence_id: str) -> None:
    authorize(session, principal, "delete", Target("alerts", organization_id))
    silence = session.get(Silence, silence_id)
    if silence is None or silence.organization_id != organization_id:
        raise NotFound(NO_SUCH_SILENCE)
    audit.describe(
        session, resource_type="alert_silences", resource_id=silence.id, organization_id=organization_id
    )
    session.delete(silence)
    session.flush()


def silenced(session: Session, rule: AlertRule, now: datetime) -> bool:
    return (
        session.scalar(
            select(Silence.id)
            .where(
                Silence.organization_id == rule.organization_id,
                Silence.ends_at > now,
                (Silence.rule_id == rule.id) | (Silence.deployment_id == rule.deployment_id),
            )
            .limit(1)
        )
        is not None
    )


# --- notification channels ----------------------------------------------------------------------
def destination(channel: NotificationChannel) -> str | None:
    """What responses and the audit log show of where a channel sends: never a URL's
    path or query (Slack's whole URL is its credential), never a secret."""
    if channel.kind == "email":
        return ", ".join(channel.recipients)
    if channel.kind == "slack":
        return SLACK_HOST
    parts = urlsplit(channel.url or "")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _channel_read(channel: NotificationChannel) -> ChannelRead:
    return ChannelRead(
        id=channel.id,
        organization_id=channel.organization_id,
        name=channel.name,
        kind=channel.kind,  # type: ignore[arg-type]
        destination=destination(channel),
        created_at=channel.created_at,
        updated_at=channel.updated_at,
    )


def _audit_channel(session: Session, channel: NotificationChannel, **details: Any) -> None:
    audit.describe(
        session,
        resource_type="notification_channels",
        resource_id=channel.id,
        organization_id=channel.organization_id,
        name=channel.name,
        kind=channel.kind,
        destination=destination(channel),
        **details,
    )


def _channel(
    session: Session, principal: Principal, channel_id: str, action: Literal["read", "write", "delete"]
) -> NotificationChannel:
    channel = session.get(NotificationChannel, channel_id)
    if channel is None:
        raise NotFound(NO_SUCH_CHANNEL)
    authorize(
        session,
        principal,
        action,
        Target("notification_channels", channel.organization_id),
        missing=NO_SUCH_CHANNEL,
    )
    return channel


def channel_for(session: Session, principal: Principal, channel_id: str) -> NotificationChannel:
    return _channel(session, principal, channel_id, "write")


def _set_url(settings: Settings, channel: NotificationChannel, url: str) -> None:
    try:
        webhooks.check_destination(url, settings)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message, details=[("url", exc.message[:500])]) from exc
    if channel.kind == "slack":
        channel.secret_sealed, channel.url = signing.seal(settings, url), None
    else:
        channel.url = url


def create_channel(
    session: Session, settings: Settings, principal: Principal, organization_id: str, body: ChannelCreate
) -> ChannelWithSecret:
    authorize(session, principal, "write", Target("notification_channels", organization_id))
    channel = NotificationChannel(
        organization_id=organization_id, name=body.name, kind=body.kind, created_by_id=_actor(principal)
    )
    secret: str | None = None
    if body.kind == "email":
        if not body.recipients or body.url is not None or body.secret is not None:
            raise ValidationFailed(
                "An email channel takes recipients only", details=[("recipients", "one address at least")]
            )
        channel.recipients = list(dict.fromkeys(str(address) for address in body.recipients))
    else:
        if body.url is None or body.recipients:
            raise ValidationFailed(f"A {body.kind} channel takes a url", details=[("url", "required")])
        if body.kind == "slack" and body.secret is not None:
            raise ValidationFailed("A Slack channel has no secret", details=[("secret", "not for slack")])
        _set_url(settings, channel, body.url)
        if body.kind == "webhook":
            secret = body.secret or signing.generate_secret()
            channel.secret_sealed = signing.seal(settings, secret)
    session.add(channel)
    session.flush()
    _audit_channel(session, channel)
    return ChannelWithSecret(**_channel_read(channel).model_dump(), secret=secret)


def list_channels(
    session: Session, principal: Principal, organization_id: str, params: PageParams
) -> Page[ChannelRead]:
    authorize(session, principal, "read", Target("notification_channels", organization_id))
    return paginate(
        session,
        select(NotificationChannel).where(NotificationChannel.organization_id == organization_id),
        params,
        sort_column=NotificationChannel.created_at,
        id_column=NotificationChannel.id,
        to_item=lambda rows: [_channel_read(row) for row in rows],
    )


def update_channel(
    session: Session, settings: Settings, principal: Principal, channel_id: str, body: ChannelUpdate
) -> ChannelWithSecret:
    channel = _channel(session, principal, channel_id, "write")
    changes = body.model_dump(exclude_unset=True)
    secret: str | None = None
    if changes.get("name") is not None:
        channel.name = changes["name"]
    if changes.get("url") is not None:
        if channel.kind == "email":
            raise ValidationFailed("An email channel has no url", details=[("url", "not for email")])
        _set_url(settings, channel, changes["url"])
    if changes.get("recipients") is not None:
        if channel.kind != "email" or not changes["recipients"]:
            raise ValidationFailed("Recipients are an email channel's", details=[("recipients", "not here")])
        channel.recipients = list(dict.fromkeys(str(address) for address in changes["recipients"]))
    if body.rotate_secret:
        if channel.kind != "webhook":
            raise ValidationFailed("Only webhook channels sign", details=[("rotate_secret", "not here")])
        secret = signing.generate_secret()
        channel.secret_sealed = signing.seal(settings, secret)
    channel.updated_at = utcnow()
    session.flush()
    _audit_channel(session, channel, changed=sorted(changes), secret_rotated=bool(body.rotate_secret))
    return ChannelWithSecret(**_channel_read(channel).model_dump(), secret=secret)


def delete_channel(session: Session, principal: Principal, channel_id: str) -> None:
    channel = _channel(session, principal, channel_id, "delete")
    _audit_channel(session, channel)
    for rule in session.scalars(
        select(AlertRule).where(AlertRule.organization_id == channel.organization_id)
    ):
        if channel.id in rule.notification_channels:
            rule.notification_channels = [
                other for other in rule.notification_channels if other != channel.id
            ]
    session.delete(channel)
    session.flush()


def test_channel(
    session: Session, settings: Settings, principal: Principal, channel_id: str
) -> ChannelTestResult:
    """Send a test notification now, with the database released while it is sent."""
    channel = _channel(session, principal, channel_id, "write")
    now = utcnow()
    payload = {
        "event": "test",
        "alert_id": "alert_test",
        "status": "firing",
        "rule_id": None,
        "rule_name": "Test notification",
        "deployment_id": "-",
        "metric_name": "-",
        "operator": "greater_than",
        "threshold": 0.0,
        "value": None,
        "severity": "low",
        "at": utc_iso(now),
        "link": None,
    }
    _audit_channel(session, channel, action="test")
    session.expunge(channel)
    release_write_lock(session)
    sent = channels.send(settings, channel, payload, new_id("msg"))
    return ChannelTestResult(delivered=sent.delivered, detail=sent.detail)
