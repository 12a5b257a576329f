"""The events a webhook may subscribe to, each with the JSON schema of its ``data``.

Every delivery's body is ``{"id", "type", "timestamp", "organization_id", "data"}``
(the Standard Webhooks payload shape); ``id`` is the event's id, also sent as the
``webhook-id`` header, the receiver's idempotency key."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    # Payloads may grow new fields; receivers must ignore what they do not know.
    model_config = ConfigDict(extra="allow")


class ModelCreated(_Data):
    model_id: str
    name: str
    project_id: str


class ModelVersionCreated(_Data):
    model_id: str
    version_id: str
    version: str
    stage: str


class ModelVersionStageChanged(_Data):
    model_id: str
    version_id: str
    version: str
    from_stage: str
    to_stage: str
    archived_versions: list[str] = Field(description="Versions archived because this one was promoted.")


class DeploymentCreated(_Data):
    deployment_id: str
    name: str
    project_id: str
    environment: str
    model_version_id: str
    version: str


class DeploymentUpdated(_Data):
    deployment_id: str
    name: str
    changed: list[str]
    model_version_id: str | None
    previous_version_id: str | None
    status: str


class DeploymentRolledBack(_Data):
    deployment_id: str
    name: str
    model_version_id: str
    version: str
    previous_version_id: str | None
    reason: str | None


class DeploymentDeleted(_Data):
    deployment_id: str
    name: str
    project_id: str


class RunEnded(_Data):
    run_id: str
    run_name: str | None
    experiment_id: str
    project_id: str
    status: str
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    metrics: dict[str, float | None]


class AlertData(_Data):
    alert_id: str
    rule_id: str | None = None
    name: str | None = None
    severity: str | None = None
    deployment_id: str | None = None
    value: float | None = None
    threshold: float | None = None


class DriftDetected(_Data):
    deployment_id: str
    deployment_name: str
    report_id: str
    window_start: str
    window_end: str
    share_drifted: float | None
    drifted_columns: list[str]
    trigger: str


class JobEnded(_Data):
    job_id: str
    kind: str
    project_id: str | None
    status: str
    error: str | None = None


class WebhookTest(_Data):
    webhook_id: str
    message: str


class WebhookDisabled(_Data):
    webhook_id: str
    name: str
    reason: str


EVENT_TYPES: dict[str, tuple[str, type[BaseModel]]] = {
    "model.created": ("A model was registered.", ModelCreated),
    "model.version.created": ("A version of a model was registered.", ModelVersionCreated),
    "model.version.stage_changed": ("A version moved to another stage.", ModelVersionStageChanged),
    "deployment.created": ("A deployment was created and serves its version.", DeploymentCreated),
    "deployment.updated": ("A deployment changed (version, settings or status).", DeploymentUpdated),
    "deployment.rolled_back": ("A deployment went back to an earlier version.", DeploymentRolledBack),
    "deployment.deleted": ("A deployment was deleted.", DeploymentDeleted),
    "run.finished": ("A run completed.", RunEnded),
    "run.failed": ("A run failed.", RunEnded),
    "alert.triggered": ("An alert started firing.", AlertData),
    "alert.resolved": ("A firing alert resolved.", AlertData),
    "drift.detected": ("A scheduled or requested drift report found the dataset drifted.", DriftDetected),
    "job.completed": ("A job of the organisation succeeded.", JobEnded),
    "job.failed": ("A job of the organisation failed.", JobEnded),
    "webhook.test": ("Sent by POST /api/v1/webhooks/{id}/test only, to the webhook tested.", WebhookTest),
    "webhook.disabled": (
        "A webhook was disabled after failing for days (or answering 410).",
        WebhookDisabled,
    ),
}
# Written by domains under another name than the one subscribers see.
ALIASES = {"run.completed": "run.finished"}
# Events only ever sent to one webhook, never fanned out from the outbox.
DIRECT_ONLY = frozenset({"webhook.test"})


def public_type(outbox_type: str) -> str:
    return ALIASES.get(outbox_type, outbox_type)


def data_schema(event_type: str) -> dict[str, Any]:
    return EVENT_TYPES[event_type][1].model_json_schema()
