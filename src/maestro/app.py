"""``create_app(settings)`` builds the whole API: resources, middleware, error
handlers and every domain's router."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import ASGIApp

from maestro import __version__
from maestro.alerts.routes import router as alerts_router
from maestro.api.envelope import ErrorResponse
from maestro.api.errors import install_error_handlers
from maestro.api.front_door import FastRoute, FrontDoor
from maestro.api.heavy import HeavyWork
from maestro.api.middleware import RequestBodyTimeoutMiddleware, RequestContextMiddleware
from maestro.api.ratelimit import RateLimiter
from maestro.api.request_metrics import RequestMetricsMiddleware
from maestro.config import Settings
from maestro.db import Database
from maestro.deployments import service as deployments_service
from maestro.deployments.fast_path import InferenceFastPath
from maestro.deployments.metrics import PlatformMetrics
from maestro.deployments.routes import inference_router, metrics_router
from maestro.deployments.routes import router as deployments_router
from maestro.deployments.state import ServingState
from maestro.domains import register_all
from maestro.files.routes import router as files_router
from maestro.identity.api_keys import router as api_keys_router
from maestro.identity.audit_log import router as audit_log_router
from maestro.identity.authn import CredentialCache
from maestro.identity.routes import router as auth_router
from maestro.jobs.queue import EmbeddedWorker, JobQueue
from maestro.jobs.routes import router as jobs_router
from maestro.logs import configure_logging
from maestro.mlflow_compat.fast_path import FastMlflow
from maestro.mlflow_compat.routes import hot_router as mlflow_hot_router
from maestro.mlflow_compat.routes import router as mlflow_router
from maestro.monitoring.routes import router as monitoring_router
from maestro.organizations.admin_routes import router as admin_router
from maestro.organizations.routes import router as organizations_router
from maestro.projects.routes import router as projects_router
from maestro.registry.routes import router as registry_router
from maestro.registry.spec_routes import router as registry_by_name_router
from maestro.storage import ArtifactStore
from maestro.system.routes import router as system_router
from maestro.tracking.routes import router as tracking_router
from maestro.webhooks.routes import router as webhooks_router

logger = logging.getLogger("maestro")

OPENAPI_URL = "/api/v1/openapi.json"
# Swagger UI and ReDoc ship inside the package (static/vendor/manifest.json says which
# versions), so /docs and /redoc work on an installation without internet access.
DOCS_ASSETS = "/static/docs"
VENDOR_DIR = Path(__file__).parent / "static" / "vendor"
ROUTERS = (
    mlflow_hot_router,  # first: MLflow's logging and search routes (see mlflow_compat.routes)
    inference_router,  # early: routes are matched in order, and predictions are the hot path
    system_router,
    auth_router,
    organizations_router,
    admin_router,
    projects_router,
    api_keys_router,
    audit_log_router,
    registry_router,
    registry_by_name_router,  # the name-addressed registry API, beside the platform's routes
    files_router,
    jobs_router,
    tracking_router,
    deployments_router,
    monitoring_router,
    webhooks_router,
    alerts_router,
    metrics_router,
    mlflow_router,
)

DESCRIPTION = """\
Maestro is a self-hosted MLOps platform: organisations and access control,
experiment tracking, a model registry with model cards, deployments and inference,
and monitoring, behind one REST API.

Successful responses are wrapped as `{"success": true, "data": …, "metadata": …}`;
lists add `pagination`. Every error has the shape
`{"success": false, "error": {"code", "message", "details"}, "metadata": …}`.
"""


def operation_id(route: APIRoute) -> str:
    if not route.tags:
        raise RuntimeError(f"route {route.path} has no tag; every router declares one")
    return f"{route.tags[0]}:{route.name}"


SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from /api/v1/auth/login, or an API key (mk_…).",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _authenticated_operations(app: FastAPI) -> set[tuple[str, str]]:
    from maestro.api.deps import route_requires_principal

    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path_format
        if isinstance(route, APIRoute) and path is not None and route_requires_principal(route.dependant):
            found.update((path, method.lower()) for method in route.methods or ())
    return found


BUSY_DESCRIPTION = "Service unavailable: the database is busy or the request ran past its time budget"
STALLED_DESCRIPTION = "Request timeout: the request body stopped arriving"


def _finish_openapi(app: FastAPI) -> None:
    """FastAPI documents its own 422 body; ours is the platform error shape, so the
    document must say so or generated clients and fuzzers would be misled. It also
    declares how to authenticate, on exactly the operations that require it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        error_ref = "#/components/schemas/ErrorResponse"
        authenticated = _authenticated_operations(app)
        for path, path_item in schema.get("paths", {}).items():
            for method, operation in path_item.items():
                responses = operation.setdefault("responses", {})
                if (path, method) in authenticated:
                    operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
                    # Every authenticated request counts against its organisation's plan.
                    responses.setdefault(
                        "429",
                        {
                            "description": "Rate limit exceeded",
                            "content": {"application/json": {"schema": {"$ref": error_ref}}},
                        },
                    )
                response = responses.get("422")
                if response:
                    response["description"] = "Validation error"
                    response["content"] = {"application/json": {"schema": {"$ref": error_ref}}}
                # Any route may find the database busy or run past its statement budget,
                # and any route that reads a body may give up on a stalled one.
                error_body = {"application/json": {"schema": {"$ref": error_ref}}}
                if path.startswith("/api/v1/"):
                    responses.setdefault("503", {"description": BUSY_DESCRIPTION, "content": error_body})
                if "requestBody" in operation:
                    responses.setdefault("408", {"description": STALLED_DESCRIPTION, "content": error_body})
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        components = schema["components"].setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        if "ErrorResponse" not in components:
            error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(error_schema.pop("$defs", {}))
            components["ErrorResponse"] = error_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # how FastAPI documents customising it


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, from the package's own copies of their assets."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=VENDOR_DIR), name="docs-assets")

    def assets(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS}"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root, base = request.scope.get("root_path", ""), assets(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title="Maestro API",
            swagger_js_url=f"{base}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{base}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        )

    async def swagger_ui_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        base = assets(request)
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{OPENAPI_URL}",
            title="Maestro API",
            redoc_js_url=f"{base}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{base}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/docs/oauth2-redirect", swagger_ui_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)


class MaestroAPI(FastAPI):
    """FastAPI with a front door (``api.front_door``) before the whole middleware stack,
    where Starlette's own error guard would otherwise be outermost."""

    fast_routes: tuple[FastRoute, ...] = ()
    front_door_options: dict[str, Any]

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return FrontDoor(stack, self.fast_routes, **self.front_door_options) if self.fast_routes else stack


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)
    register_all()  # every domain's file sources and counters, before the first request
    database = Database(settings)
    store = ArtifactStore(settings.resolved_storage_url)
    queue = JobQueue(settings, database, store)
    metrics = PlatformMetrics()
    serving = ServingState(settings, database, store, metrics, deployments_service.fail_serving)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = EmbeddedWorker(queue) if settings.run_worker_in_process else None
        if worker:
            worker.start()
        serving.start()
        logger.info("Maestro %s ready (%s database)", __version__, database.engine.dialect.name)
        try:
            yield
        finally:
            serving.stop()  # writes the prediction logs and request counts still in memory
            if worker:
                worker.stop()
            queue.close()
            database.dispose()

    app = MaestroAPI(
        title="Maestro",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=OPENAPI_URL,
        docs_url=None,  # served from the package's assets (_install_docs)
        redoc_url=None,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.store = store
    app.state.queue = queue
    app.state.rate_limiter = RateLimiter(settings)
    app.state.heavy = HeavyWork.from_settings(settings)  # the shared pool for CPU-heavy requests
    app.state.credential_cache = CredentialCache(settings.auth_cache_seconds)
    app.state.metrics = metrics
    app.state.serving = serving

    install_error_handlers(app)
    _finish_openapi(app)
    _install_docs(app)
    for router in ROUTERS:
        app.include_router(router)

    if settings.fast_paths:
        app.add_middleware(FastMlflow, fastapi_app=app)  # MLflow runs/log-metric, log-batch, search, get
    # Outside every route and fast path; inside CORS, metrics and the request context.
    app.add_middleware(RequestBodyTimeoutMiddleware, seconds=settings.request_body_timeout_seconds)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "X-Process-Time",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
        )
    if settings.metrics_enabled:
        app.add_middleware(RequestMetricsMiddleware, observe=metrics.observe_request)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    if settings.fast_paths:  # POST /api/v1/inference/{name}[/batch], before all of the above
        app.fast_routes = (InferenceFastPath(app),)
        app.front_door_options = {
            "observe": metrics.observe_request if settings.metrics_enabled else None,
            "access_log": settings.access_log,
            "body_timeout_seconds": settings.request_body_timeout_seconds,
            "cors": bool(settings.cors_origins),
        }
    return app
