from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, TimestampMixin, utcnow


class RuleState(StrEnum):
    normal = "normal"
    pending = "pending"  # the condition holds, not yet for `for_seconds`
    firing = "firing"
    no_data = "no_data"  # too few samples (or no value) in the last window


class AlertStatus(StrEnum):
    firing = "firing"
    resolved = "resolved"


class AlertRule(IdMixin, TimestampMixin, Base):
    """A condition on one monitored quantity of a deployment, with its evaluation state."""

    __tablename__ = "alert_rules"
    id_prefix = "rule"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str] = mapped_column(String(40))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    alert_type: Mapped[str] = mapped_column(String(60))
    metric_name: Mapped[str] = mapped_column(String(300))
    threshold: Mapped[float] = mapped_column(Float)
    operator: Mapped[str] = mapped_column(String(30))
    severity: Mapped[str] = mapped_column(String(20))
    notification_channels: Mapped[list[Any]] = mapped_column(default=list)
    window_seconds: Mapped[int]
    for_seconds: Mapped[int]
    repeat_interval_seconds: Mapped[int]
    enabled: Mapped[bool] = mapped_column(default=True)
    min_samples: Mapped[int]
    no_data_fires: Mapped[bool] = mapped_column(default=False)
    created_by_id: Mapped[str | None] = mapped_column(String(40))
    # Evaluation state, written by the evaluator only.
    state: Mapped[str] = mapped_column(String(20), default=RuleState.normal)
    pending_since: Mapped[datetime | None]
    last_value: Mapped[float | None] = mapped_column(Float)
    last_evaluated_at: Mapped[datetime | None]  # the claim: one evaluation per interval across processes
    current_alert_id: Mapped[str | None] = mapped_column(String(40))
    # When the rule's last firing was notified: a rule that flaps fires again without a
    # new notification until repeat_interval has passed.
    last_fired_notice_at: Mapped[datetime | None]


class Alert(IdMixin, Base):
    """One firing of a rule, from trigger to resolution, with its timeline."""

    __tablename__ = "alerts"
    id_prefix = "alert"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(40))  # whose members may see it
    rule_id: Mapped[str | None] = mapped_column(ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True)
    deployment_id: Mapped[str] = mapped_column(String(40), index=True)
    rule_name: Mapped[str] = mapped_column(String(200))
    metric_name: Mapped[str] = mapped_column(String(300))
    operator: Mapped[str] = mapped_column(String(30))
    threshold: Mapped[float] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=AlertStatus.firing)
    value: Mapped[float | None] = mapped_column(Float)
    triggered_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_id: Mapped[str | None] = mapped_column(String(40))
    last_notified_at: Mapped[datetime | None]
    timeline: Mapped[list[Any]] = mapped_column(default=list)

    __table_args__ = (Index("ix_alerts_organization_id_triggered_at", "organization_id", "triggered_at"),)


class Silence(IdMixin, Base):
    """No notification for a deployment's (or one rule's) alerts until ``ends_at``."""

    __tablename__ = "alert_silences"
    id_prefix = "sil"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    deployment_id: Mapped[str | None] = mapped_column(String(40))
    rule_id: Mapped[str | None] = mapped_column(String(40))
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[str | None] = mapped_column(String(40))


class NotificationChannel(IdMixin, TimestampMixin, Base):
    """Where an organisation's alert notifications go: a signed webhook, a Slack incoming
    webhook or email addresses. The webhook's secret and Slack's URL are sealed."""

    __tablename__ = "notification_channels"
    id_prefix = "chan"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    url: Mapped[str | None] = mapped_column(String(2000))  # a webhook's URL (Slack's is sealed)
    recipients: Mapped[list[Any]] = mapped_column(default=list)  # email addresses
    secret_sealed: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[str | None] = mapped_column(String(40))


class NotificationStatus(StrEnum):
    pending = "pending"  # waits for next_attempt_at
    queued = "queued"  # a job was submitted; until lease_until
    sending = "sending"  # a job is sending; until lease_until
    sent = "sent"
    failed = "failed"


class AlertNotification(IdMixin, Base):
    """One message about an alert for one channel; sent by an ``alerts.notify`` job,
    retried on a schedule until it is sent or its attempts run out."""

    __tablename__ = "alert_notifications"
    id_prefix = "ntf"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(30))  # triggered, reminder, resolved
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default=NotificationStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]  # queued or sending until then
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (Index("ix_alert_notifications_status_next_attempt_at", "status", "next_attempt_at"),)
