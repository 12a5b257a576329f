from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from maestro import __version__
from maestro.api.deps import DatabaseDep, QueueDep, StoreDep
from maestro.api.envelope import Envelope, ErrorDetail
from maestro.api.errors import error_response, error_responses
from maestro.db import utcnow
from maestro.system import service
from maestro.system.schemas import Liveness, Readiness, ServerInfo

router = APIRouter(tags=["system"])


@router.get("/", response_model=ServerInfo)
async def server_info(request: Request) -> ServerInfo:
    """Name and version of this server, and where its API is described."""
    return ServerInfo(
        name="Maestro", version=__version__, docs_url="/docs", openapi_url=request.app.openapi_url or ""
    )


@router.get("/health", response_model=Liveness)
async def liveness() -> Liveness:
    """Liveness: the process is up and serving. Checks no dependency, so a load
    balancer never restarts a healthy server because the database is slow."""
    return Liveness(version=__version__, timestamp=utcnow())


@router.get(
    "/api/v1/health",
    response_model=Envelope[Readiness],
    responses=error_responses(503),
)
async def readiness(
    request: Request, database: DatabaseDep, store: StoreDep, queue: QueueDep
) -> Envelope[Readiness] | JSONResponse:
    """Readiness: the database, artifact storage and job queue each answer, with the
    latency of each check, and the models of the active deployments are loaded (at start
    they load in the background). 503 names the dependencies that are down."""
    report = await service.readiness(database, store, queue, getattr(request.app.state, "serving", None))
    if report.status == "healthy":
        return Envelope(data=report)
    down = [(name, check.detail or "down") for name, check in report.checks.items() if check.status == "down"]
    return error_response(
        503,
        "Not ready: " + ", ".join(name for name, _ in down) + " unavailable",
        details=[ErrorDetail(field=name, message=detail) for name, detail in down],
    )


@router.get("/api/v1/openapi.yaml", include_in_schema=False)
def openapi_yaml(request: Request) -> Response:
    """The OpenAPI document as YAML (the JSON form is at /api/v1/openapi.json)."""
    import yaml

    return Response(yaml.safe_dump(request.app.openapi(), sort_keys=False), media_type="application/yaml")
