from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class ServerInfo(BaseModel):
    name: str = Field(examples=["Maestro"])
    version: str
    docs_url: str
    openapi_url: str


class Liveness(BaseModel):
    status: Literal["healthy"] = "healthy"
    version: str
    timestamp: datetime


class DependencyCheck(BaseModel):
    status: Literal["up", "down"]
    latency_ms: float = Field(description="Time the check took.")
    backend: str = Field(description="What serves this dependency, e.g. `sqlite`, `postgresql`, `redis`.")
    detail: str | None = Field(None, description="Why the dependency is down, or extra facts when up.")


class Readiness(BaseModel):
    status: Literal["healthy", "unhealthy"]
    version: str
    checks: dict[str, DependencyCheck] = Field(
        description="One entry per dependency: `database`, `storage`, `queue`, and `deployments` "
        "(the models of the active deployments, loaded at start)."
    )
