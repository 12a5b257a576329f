"""Path parameters shared by every router: one definition of what an id looks like,
so a malformed id (a path trick, a quote, a NUL) is a 422 before any query runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

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
