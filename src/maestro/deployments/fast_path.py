"""The platform's inference routes without the framework's per-request machinery.

FastAPI's routing (every route of the platform is tried in turn), dependency solving
and endpoint wrapping cost about as much as a one-row prediction itself, and the
middleware stack a fifth of it again. ``InferenceFastPath`` claims ``POST
/api/v1/inference/{deployment_name}`` and ``…/{deployment_name}/batch`` at the app's
front door (``api.front_door``, which does the request context, metrics, body timeout
and access log for it) and runs exactly what those routes run: the reading principal
dependency (``get_reading_principal``: credential cache, API key scopes, plan rate
limits) and ``inference.predict`` (deployment lookup, project permission, body checks,
prediction log), with errors rendered by the app's own exception handlers. A name the
route's pattern would refuse, and every other request, goes on to the middleware and
FastAPI, whose routes stay in the app for the OpenAPI document.
``MAESTRO_FAST_PATHS=false`` leaves this path out;
``tests/deployments/test_fast_path_equality.py`` sends the same requests both ways.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from maestro.api.deps import get_reading_principal
from maestro.api.front_door import Answer
from maestro.api.middleware import api_route
from maestro.deployments import inference

PREFIX = "/api/v1/inference/"
SINGLE, BATCH = "/api/v1/inference/{deployment_name}", "/api/v1/inference/{deployment_name}/batch"
# The deployment name's path pattern (``schemas.NAME_PATTERN``, at most 63 characters).
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def match(path: str) -> tuple[str, str] | None:
    """(route template, deployment name) of an inference route's path."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    template = SINGLE
    if rest.endswith("/batch"):
        rest, template = rest[: -len("/batch")], BATCH
    if _NAME.fullmatch(rest) is None:
        return None
    return template, rest


class InferenceFastPath:
    """The inference routes as a front-door ``FastRoute``."""

    def __init__(self, fastapi_app: FastAPI) -> None:
        self.fastapi_app = fastapi_app
        self._routes: dict[str, APIRoute | None] = {}

    def _route(self, template: str) -> APIRoute | None:
        if template not in self._routes:
            self._routes[template] = api_route(self.fastapi_app, "POST", template)
        return self._routes[template]

    def _handler(self, exc: Exception) -> Any:
        """The app's exception handler for ``exc``, looked up as Starlette does."""
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None

    def claim(self, scope: Scope) -> tuple[APIRoute, Answer] | None:
        matched = match(scope["path"]) if scope["method"] == "POST" else None
        route = self._route(matched[0]) if matched is not None else None
        if matched is None or route is None:
            return None
        template, name = matched

        async def answer(request: Request) -> Response:
            scope["path_params"] = {"deployment_name": name}
            try:
                principal = await get_reading_principal(request)
                return await inference.predict(
                    request, request.app.state.serving, principal, name, batch=template == BATCH
                )
            except Exception as exc:
                handler = self._handler(exc)
                if handler is None:
                    raise  # the front door answers 500 in the error shape
                return await handler(request, exc)

        return route, answer
