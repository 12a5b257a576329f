"""The model server's FastAPI app: its routes, protocols, fast path and middleware around
one ``ModelServer``, and the uvicorn runner."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from maestro import __version__
from maestro.api.middleware import RequestBodyTimeoutMiddleware, RequestContextMiddleware
from maestro.api.request_metrics import RequestMetricsMiddleware
from maestro.config import Settings
from maestro.model_server.fast_path import FastPredictions
from maestro.model_server.protocols import mlflow_router, oip_router
from maestro.model_server.routes import install_error_handlers, router
from maestro.model_server.schemas import document_bodies
from maestro.model_server.server import ModelServer
from maestro.server import freeze_startup_objects, switch_threads_often

if TYPE_CHECKING:
    pass

logger = logging.getLogger("maestro.serving")


DESCRIPTION = """\
Maestro's model server: loaded models answer predictions over Maestro's routes
(`/api/v1/predict`, `/api/v1/batch-predict`, `/api/v1/predict-async`), the Open
Inference Protocol (`/v2/models/{name}/infer`) and MLflow's scoring protocol
(`/invocations`). Authenticate with an operator key of this server, or a Maestro API key
or access token (`Authorization: Bearer …` or `X-API-Key`).
"""


def _say_if_the_platform_database_is_missing(settings: Settings) -> None:
    """Registry models and platform credentials need the platform's database, which this
    server opens but never creates: a missing one is said at the start, by its path."""
    import os

    from maestro.db import shown_url, sqlite_file

    path = sqlite_file(settings.resolved_database_url)
    if path is not None and not os.path.exists(path):
        logger.warning(
            "the platform database %s does not exist: registry models and platform credentials are "
            "unavailable until MAESTRO_DATABASE_URL or MAESTRO_DATA_DIR names the platform's",
            shown_url(settings.resolved_database_url),
        )


def create_model_server(settings: Settings | None = None) -> FastAPI:
    from maestro.logs import configure_logging

    settings = settings or Settings()
    configure_logging(settings)
    server = ModelServer(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        switch_threads_often()
        server.jobs.start()
        preload = threading.Thread(target=server.run_preload, name="model-server-preload", daemon=True)
        preload.start()
        logger.info(
            "Maestro model server %s starting; preloading %d model(s)", __version__, server.preload.total
        )
        _say_if_the_platform_database_is_missing(settings)
        try:
            yield
        finally:
            server.close()
            gc.unfreeze()

    app = FastAPI(
        title="Maestro model server",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: f"{route.tags[0]}:{route.name}",
    )
    app.state.settings = settings
    app.state.model_server = server
    install_error_handlers(app)
    document_bodies(app)
    app.include_router(router)
    app.include_router(oip_router)
    app.include_router(mlflow_router)
    if settings.fast_paths:
        app.add_middleware(FastPredictions, fastapi_app=app)  # innermost: inside ids, timing and metrics
    app.add_middleware(RequestBodyTimeoutMiddleware, seconds=settings.request_body_timeout_seconds)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    app.add_middleware(RequestMetricsMiddleware, observe=server.metrics.observe_request, until_last_byte=True)
    return app


def run(settings: Settings, *, host: str, port: int, loop: str = "auto") -> None:
    """Serve on one process with the platform server's HTTP protocol (TCP_NODELAY on
    every accepted connection, httptools when installed) and uvloop when installed."""
    import uvicorn

    from maestro.server import HTTP_PROTOCOL

    uvicorn.run(
        create_model_server(settings),
        host=host,
        port=port,
        loop=loop,
        http=HTTP_PROTOCOL,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=20,
        server_header=False,
    )
