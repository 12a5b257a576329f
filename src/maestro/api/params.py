"""Parameters shared by every router: one definition of what an id looks like, so a
malformed id (a path trick, a quote, a NUL) is a 422 before any query runs, and one
reading of a time given in a query string."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path

from maestro.errors import ValidationFailed

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ID_MAX_LENGTH = 64


def path_id(what: str) -> Any:
    return Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=f"The {what}'s id.")


OrganizationId = Annotated[str, path_id("organization")]
ProjectId = Annotated[str, path_id("project")]
UserId = Annotated[str, path_id("user")]
ModelId = Annotated[str, path_id("model")]
ApiKeyId = Annotated[str, path_id("API key")]
JobId = Annotated[str, path_id("job")]
ExperimentId = Annotated[str, path_id("experiment")]
RunId = Annotated[str, path_id("run")]
ArtifactId = Annotated[str, path_id("artifact")]
FileId = Annotated[str, path_id("file")]
DeploymentId = Annotated[str, path_id("deployment")]
InvitationId = Annotated[str, path_id("invitation")]
WebhookId = Annotated[str, path_id("webhook")]
DeliveryId = Annotated[str, path_id("delivery")]

EARLIEST, LATEST = datetime(1970, 1, 2, tzinfo=UTC), datetime(9998, 12, 31, tzinfo=UTC)


def utc_query(value: datetime | None, field: str) -> datetime | None:
    """A query string's time in UTC (a naive one taken as UTC); a 422 naming ``field``
    outside the years the database and the arithmetic on windows can hold."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if not EARLIEST <= value <= LATEST:
        raise ValidationFailed("Invalid input parameters", details=[(field, "must be between 1970 and 9998")])
    return value.astimezone(UTC)
