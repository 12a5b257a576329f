"""Sending one notification to one channel: a webhook (signed with Standard Webhooks
headers, through the platform's outbound guard, by ``webhooks.service.send_signed_json``),
Slack's incoming webhook (its JSON ``text`` and ``blocks``, through the same guard) or
email (the server's SMTP settings). Each send is one attempt; the caller retries."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from maestro.errors import ValidationFailed
from maestro.webhooks import service as webhooks
from maestro.webhooks import signing

if TYPE_CHECKING:
    from maestro.alerts.models import NotificationChannel
    from maestro.config import Settings

SMTP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Sent:
    delivered: bool
    detail: str | None = None
    retry_after: float | None = None


def headline(payload: dict[str, Any]) -> str:
    state = {"triggered": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED", "test": "TEST"}
    value = payload.get("value")
    shown = "no data" if value is None else f"{value:.4g}"
    return (
        f"[{state.get(payload['event'], payload['event'])}] [{str(payload['severity']).upper()}] "
        f"{payload['rule_name']}: {payload['metric_name']} = {shown} "
        f"({payload['operator'].replace('_', ' ')} {payload['threshold']:g})"
    )


def _text(payload: dict[str, Any]) -> str:
    lines = [
        headline(payload),
        "",
        f"Rule: {payload['rule_name']} ({payload.get('rule_id')})",
        f"Deployment: {payload['deployment_id']}",
        f"Severity: {payload['severity']}",
        f"Value: {payload.get('value')}",
        f"Threshold: {payload['operator']} {payload['threshold']}",
        f"At: {payload['at']}",
    ]
    if payload.get("link"):
        lines.append(f"Alert: {payload['link']}")
    return "\n".join(lines)


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    text = headline(payload)
    fields = [
        {"type": "mrkdwn", "text": f"*Deployment*\n{payload['deployment_id']}"},
        {"type": "mrkdwn", "text": f"*Value*\n{payload.get('value')}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{payload['severity']}"},
        {"type": "mrkdwn", "text": f"*Threshold*\n{payload['operator']} {payload['threshold']:g}"},
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
        {"type": "section", "fields": fields},
    ]
    if payload.get("link"):
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{payload['link']}|Open the alert>"}],
            }
        )
    return {"text": text, "blocks": blocks}


def email_message(settings: Settings, recipients: list[str], payload: dict[str, Any]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = headline(payload)
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(recipients)
    message["X-Maestro-Alert"] = str(payload["alert_id"])
    message.set_content(_text(payload))
    return message


def _send_email(settings: Settings, recipients: list[str], payload: dict[str, Any]) -> Sent:
    if not settings.smtp_host:
        return Sent(False, "no SMTP server is configured (MAESTRO_SMTP_HOST)")
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_SECONDS) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
            smtp.send_message(email_message(settings, recipients, payload))
    except (OSError, smtplib.SMTPException) as exc:
        return Sent(False, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Sent(True)


def send(settings: Settings, channel: NotificationChannel, payload: dict[str, Any], message_id: str) -> Sent:
    """One attempt; never raises for the receiver's failures (a refused destination is a
    failure that says so)."""
    if channel.kind == "email":
        return _send_email(settings, list(channel.recipients), payload)
    try:
        if channel.kind == "slack":
            url, body, secrets = (
                signing.unseal(settings, channel.secret_sealed or ""),
                slack_message(payload),
                [],
            )
        else:
            url, secrets = channel.url or "", [signing.unseal(settings, channel.secret_sealed or "")]
            body = {  # the shape of a webhook's event, so one receiver reads both
                "id": message_id,
                "type": f"alert.{payload['event']}",
                "timestamp": payload["at"],
                "organization_id": channel.organization_id,
                "data": payload,
            }
        result = webhooks.send_signed_json(settings, url, body, message_id=message_id, secrets=secrets)
    except ValidationFailed as exc:
        return Sent(False, exc.message[:200])
    except signing.SecretUnreadable as exc:
        return Sent(False, str(exc)[:200])
    if result.succeeded:
        return Sent(True)
    detail = (result.error or f"answered {result.status_code}").replace(url, "<the channel's URL>")
    return Sent(False, detail[:200], result.retry_after)
