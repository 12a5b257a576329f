"""The evaluation of alert rules: each enabled rule once per interval across every process
(a conditional UPDATE of its ``last_evaluated_at`` claims it), over closed windows only
(the window ends at the start of the current minute), through monitoring's one function
``monitoring.service.quantity``.

States: normal → pending (the condition holds, not yet for ``for``) → firing (an alert is
open) → normal again when the condition clears (the alert resolves); no_data when the
window has fewer than ``min_samples`` samples or no value (a firing alert stays open
through it, unless ``no_data_fires`` makes no data a firing condition). Each firing and
resolution writes ``alert.triggered`` / ``alert.resolved`` to the outbox and queues
notifications (``alerts.notifications``) in the same transaction; they are sent later by
jobs. One notification when an alert fires and one when it resolves; reminders after
``repeat_interval`` while it fires unacknowledged; none while silenced; and a rule that
flaps fires again without a new notification until ``repeat_interval`` has passed.

Time comes from the caller (``now``), so tests move it instead of sleeping."""

from __future__ import annotations

import logging
import operator as operators
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from maestro.alerts import notifications
from maestro.alerts.models import Alert, AlertRule, AlertStatus, RuleState
from maestro.alerts.service import note, silenced
from maestro.db import matched_rows, utcnow
from maestro.errors import MaestroError
from maestro.events import service as events
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.maintenance import ALERT_EVALUATION
from maestro.monitoring import service as monitoring
from maestro.monitoring.quality import QUALITY_QUANTITIES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maestro.config import Settings
    from maestro.db import Database

logger = logging.getLogger("maestro.alerts")

EVALUATE = ALERT_EVALUATION
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "less_than": operators.lt,
    "less_than_or_equal": operators.le,
    "greater_than": operators.gt,
    "greater_than_or_equal": operators.ge,
    "equal": operators.eq,
    "not_equal": operators.ne,
}


def samples_quantity(metric: str) -> str:
    """What counts as a sample of ``metric``: labels for quality figures, predictions for
    drift, requests for the request figures."""
    if metric in QUALITY_QUANTITIES:
        return "label_count"
    if metric not in monitoring.QUANTITIES:
        return "prediction_count"
    return "request_count"


def closed_window(now: datetime, seconds: int) -> tuple[datetime, datetime]:
    end = now.replace(second=0, microsecond=0)
    return end - timedelta(seconds=seconds), end


def measure(session: Session, rule: AlertRule, now: datetime) -> tuple[float | None, bool]:
    """The rule's quantity over its last closed window, and whether there was enough data."""
    start, end = closed_window(now, rule.window_seconds)
    value = monitoring.quantity(session, None, rule.deployment_id, rule.metric_name, start, end)
    if value is None:
        return None, False
    if rule.min_samples:
        count = monitoring.quantity(
            session, None, rule.deployment_id, samples_quantity(rule.metric_name), start, end
        )
        if (count or 0) < rule.min_samples:
            return value, False
    return value, True


def _claim(database: Database, rule_id: str, now: datetime, interval: float) -> bool:
    due = now - timedelta(seconds=interval / 2)
    with database.session() as session:
        return (
            matched_rows(
                session.execute(
                    update(AlertRule)
                    .where(
                        AlertRule.id == rule_id,
                        AlertRule.enabled.is_(True),
                        or_(AlertRule.last_evaluated_at.is_(None), AlertRule.last_evaluated_at < due),
                    )
                    .values(last_evaluated_at=now)
                )
            )
            == 1
        )


def _event_data(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.id,
        "rule_id": alert.rule_id,
        "name": alert.rule_name,
        "severity": alert.severity,
        "deployment_id": alert.deployment_id,
        "value": alert.value,
        "threshold": alert.threshold,
    }


def _fire(session: Session, settings: Settings, rule: AlertRule, value: float | None, now: datetime) -> Alert:
    alert = Alert(
        organization_id=rule.organization_id,
        project_id=rule.project_id,
        rule_id=rule.id,
        deployment_id=rule.deployment_id,
        rule_name=rule.name,
        metric_name=rule.metric_name,
        operator=rule.operator,
        threshold=rule.threshold,
        severity=rule.severity,
        status=AlertStatus.firing,
        value=value,
        triggered_at=now,
        timeline=[],
    )
    session.add(alert)
    session.flush()
    note(alert, "triggered", now, value=value)
    rule.state, rule.current_alert_id, rule.pending_since = RuleState.firing, alert.id, None
    events.record(session, rule.organization_id, "alert.triggered", _event_data(alert))
    flapping = rule.last_fired_notice_at is not None and now - rule.last_fired_notice_at < timedelta(
        seconds=rule.repeat_interval_seconds
    )
    if flapping:
        note(alert, "not notified", now, detail="the rule fired within its repeat interval")
    elif silenced(session, rule, now):
        note(alert, "not notified", now, detail="silenced")
    elif notifications.queue(session, settings, rule, alert, "triggered", now):
        alert.last_notified_at = rule.last_fired_notice_at = now
    return alert


def _resolve(
    session: Session, settings: Settings, rule: AlertRule, alert: Alert, value: float | None, now: datetime
) -> None:
    alert.status, alert.resolved_at, alert.value = AlertStatus.resolved, now, value
    note(alert, "resolved", now, value=value)
    rule.state, rule.current_alert_id, rule.pending_since = RuleState.normal, None, None
    events.record(session, rule.organization_id, "alert.resolved", _event_data(alert))
    # Resolution is told to whoever was told of the firing, silenced or not.
    if alert.last_notified_at is not None:
        notifications.queue(session, settings, rule, alert, "resolved", now)


def _remind(
    session: Session, settings: Settings, rule: AlertRule, alert: Alert, value: float | None, now: datetime
) -> None:
    alert.value = value if value is not None else alert.value
    if alert.acknowledged_at is not None or alert.last_notified_at is None:
        return
    if now - alert.last_notified_at < timedelta(seconds=rule.repeat_interval_seconds):
        return
    if silenced(session, rule, now):
        return
    if notifications.queue(session, settings, rule, alert, "reminder", now):
        alert.last_notified_at = rule.last_fired_notice_at = now
        note(alert, "reminder", now, value=value)


def transition(
    session: Session, settings: Settings, rule: AlertRule, value: float | None, enough: bool, now: datetime
) -> None:
    """Move the rule on from what its last closed window showed."""
    rule.last_value = value
    alert = session.get(Alert, rule.current_alert_id) if rule.current_alert_id else None
    if alert is not None and alert.status != AlertStatus.firing:
        alert, rule.current_alert_id = None, None  # resolved by hand meanwhile
        rule.state = RuleState.normal
    if not enough and not rule.no_data_fires:
        if alert is None:
            rule.state, rule.pending_since = RuleState.no_data, None
        return  # a firing alert stays open through missing data
    holds = (not enough) or OPERATORS[rule.operator](value, rule.threshold)  # type: ignore[arg-type]
    if alert is not None:
        if holds:
            _remind(session, settings, rule, alert, value, now)
        else:
            _resolve(session, settings, rule, alert, value, now)
        return
    if not holds:
        rule.state, rule.pending_since = RuleState.normal, None
        return
    if rule.state != RuleState.pending or rule.pending_since is None:
        rule.state, rule.pending_since = RuleState.pending, now
    if now - rule.pending_since >= timedelta(seconds=rule.for_seconds):
        _fire(session, settings, rule, value, now)


def evaluate_rule(
    database: Database, settings: Settings, rule_id: str, now: datetime, interval: float
) -> bool:
    """Evaluate one rule if no process did in this interval; True when this call did."""
    if not _claim(database, rule_id, now, interval):
        return False
    with database.session(write=False) as session:
        rule = session.get(AlertRule, rule_id)
        if rule is None:
            return False
        try:
            value, enough = measure(session, rule, now)
        except MaestroError as exc:  # the deployment or a drift column went away
            logger.warning("alert rule %s could not be evaluated: %s", rule_id, exc.message)
            value, enough = None, False
    with database.session() as session:
        rule = session.get(AlertRule, rule_id)
        if rule is None:
            return False
        transition(session, settings, rule, value, enough, now)
    return True


def evaluate_all(database: Database, settings: Settings, now: datetime | None = None) -> int:
    """Evaluate every enabled rule due at ``now``; how many this call evaluated."""
    now = now or utcnow()
    interval = settings.alert_evaluation_interval_seconds
    with database.session(write=False) as session:
        rule_ids = list(
            session.scalars(select(AlertRule.id).where(AlertRule.enabled.is_(True)).order_by(AlertRule.id))
        )
    evaluated = 0
    for rule_id in rule_ids:
        try:
            evaluated += evaluate_rule(database, settings, rule_id, now, interval)
        except Exception:
            logger.exception("evaluating alert rule %s failed", rule_id)
    return evaluated


@job_handler(EVALUATE)
def evaluate_job(ctx: JobContext, at: str | None = None) -> dict[str, Any]:
    """Scheduled every ``MAESTRO_ALERT_EVALUATION_INTERVAL_SECONDS``; ``at`` (ISO time)
    evaluates as of another time."""
    now = datetime.fromisoformat(at) if at else utcnow()
    return {"evaluated": evaluate_all(ctx.database, ctx.settings, now)}
