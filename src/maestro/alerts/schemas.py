from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from maestro.schemas import StrictModel, Visible
from maestro.webhooks.schemas import Secret

Operator = Literal[
    "less_than", "less_than_or_equal", "greater_than", "greater_than_or_equal", "equal", "not_equal"
]
Severity = Literal["low", "medium", "high", "critical"]
AlertType = Literal[
    "performance_degradation", "data_drift", "error_rate", "latency", "traffic", "label_coverage", "custom"
]
ChannelKind = Literal["webhook", "slack", "email"]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Visible,
]
MetricName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
ChannelIds = Annotated[list[Annotated[str, StringConstraints(max_length=40)]], Field(max_length=20)]
Seconds = Annotated[int, Field(ge=60, le=30 * 86_400)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class AlertRuleCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name | None = Field(None, description="Defaults to the metric, operator and threshold.")
    alert_type: AlertType = Field("custom", examples=["performance_degradation"])
    metric_name: MetricName = Field(
        examples=["accuracy"],
        description="A quantity monitoring computes: accuracy, error_rate, latency_p95, throughput_rps, "
        "request_count, label_coverage, dataset_drift_share, drift.<column>…",
    )
    threshold: float = Field(allow_inf_nan=False, examples=[0.9])
    operator: Operator = Field(examples=["less_than"])
    severity: Severity = Field("medium", examples=["high"])
    notification_channels: ChannelIds = Field(
        default_factory=list, examples=[["chan_01jd8x2k4m6p8r0t2v4w6y8z0a"]]
    )
    window: Seconds = Field(3600, description="Seconds of closed windows the quantity is computed over.")
    for_: Annotated[int, Field(ge=0, le=7 * 86_400)] = Field(
        300, alias="for", description="Seconds the condition must hold before the alert fires (0: at once)."
    )
    repeat_interval: Seconds = Field(
        4 * 3600, description="Seconds between reminders while an alert keeps firing unacknowledged."
    )
    enabled: bool = True
    min_samples: Annotated[int, Field(ge=0, le=1_000_000_000)] = Field(
        10,
        description="Fewest samples (labels for quality figures, requests otherwise) a window needs to "
        "be judged; fewer is no data.",
    )
    no_data_fires: bool = Field(False, description="Fire when a window has no data (as for a traffic stop).")


class AlertRuleUpdate(StrictModel):
    """Fields left out keep their value."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name = Field(None)  # type: ignore[assignment]
    alert_type: AlertType = Field(None)  # type: ignore[arg-type]
    metric_name: MetricName = Field(None)  # type: ignore[assignment]
    threshold: float = Field(None, allow_inf_nan=False)  # type: ignore[assignment]
    operator: Operator = Field(None)  # type: ignore[arg-type]
    severity: Severity = Field(None)  # type: ignore[arg-type]
    notification_channels: ChannelIds = Field(None)  # type: ignore[arg-type]
    window: Seconds = Field(None)  # type: ignore[assignment]
    for_: Annotated[int, Field(ge=0, le=7 * 86_400)] = Field(None, alias="for")  # type: ignore[assignment]
    repeat_interval: Seconds = Field(None)  # type: ignore[assignment]
    enabled: bool = Field(None)  # type: ignore[assignment]
    min_samples: Annotated[int, Field(ge=0, le=1_000_000_000)] = Field(None)  # type: ignore[assignment]
    no_data_fires: bool = Field(None)  # type: ignore[assignment]


class AlertRuleRead(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str = Field(examples=["rule_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    organization_id: str
    project_id: str
    deployment_id: str
    name: str
    alert_type: str
    metric_name: str
    threshold: float
    operator: str
    severity: str
    notification_channels: list[str]
    window: int
    for_: int = Field(alias="for")
    repeat_interval: int
    enabled: bool
    min_samples: int
    no_data_fires: bool
    state: Literal["normal", "pending", "firing", "no_data"]
    pending_since: datetime | None
    last_value: float | None
    last_evaluated_at: datetime | None
    current_alert_id: str | None
    created_at: datetime
    updated_at: datetime


class TimelineEntry(BaseModel):
    at: datetime
    event: str = Field(description="triggered, reminder, acknowledged, resolved, notified…")
    value: float | None = None
    by: str | None = None
    detail: str | None = None


class AlertRead(BaseModel):
    id: str = Field(examples=["alert_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    organization_id: str
    rule_id: str | None
    deployment_id: str
    rule_name: str
    metric_name: str
    operator: str
    threshold: float
    severity: str
    status: Literal["firing", "resolved"]
    value: float | None
    triggered_at: datetime
    resolved_at: datetime | None
    acknowledged: bool
    acknowledged_at: datetime | None
    acknowledged_by_id: str | None


class AlertDetail(AlertRead):
    timeline: list[TimelineEntry]


class SilenceCreate(StrictModel):
    deployment_id: Annotated[str, StringConstraints(max_length=40)] | None = None
    rule_id: Annotated[str, StringConstraints(max_length=40)] | None = None
    ends_at: datetime = Field(description="No notification for the silenced alerts until then.")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class SilenceRead(BaseModel):
    id: str = Field(examples=["sil_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    organization_id: str
    deployment_id: str | None
    rule_id: str | None
    ends_at: datetime
    reason: str | None
    created_at: datetime


class ChannelCreate(StrictModel):
    name: Name = Field(examples=["On-call"])
    kind: ChannelKind
    url: Url | None = Field(
        None, description="The webhook's URL, or Slack's incoming-webhook URL (kept secret, never shown)."
    )
    recipients: Annotated[list[EmailStr], Field(max_length=50)] | None = Field(
        None, description="Email addresses (email channels)."
    )
    secret: Secret | None = Field(
        None,
        description="A webhook channel's signing secret (a whsec_ secret or 16 characters or more); "
        "generated when left out, shown once.",
    )


class ChannelUpdate(StrictModel):
    name: Name = Field(None)  # type: ignore[assignment]
    url: Url = Field(None)  # type: ignore[assignment]
    recipients: Annotated[list[EmailStr], Field(max_length=50)] = Field(None)  # type: ignore[arg-type]
    rotate_secret: bool = False


class ChannelRead(BaseModel):
    id: str = Field(examples=["chan_01jd8x2k4m6p8r0t2v4w6y8z0a"])
    organization_id: str
    name: str
    kind: ChannelKind
    destination: str | None = Field(
        description="Where it sends: a webhook's scheme and host, `hooks.slack.com`, or the addresses."
    )
    created_at: datetime
    updated_at: datetime


class ChannelWithSecret(ChannelRead):
    secret: str | None = Field(description="A webhook channel's signing secret, in this answer only.")


class ChannelTestResult(BaseModel):
    delivered: bool
    detail: str | None


Payload = dict[str, Any]
