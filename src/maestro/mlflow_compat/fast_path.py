"""The MLflow routes a client calls once per metric or search, without the framework's
per-request routing and dependency solving.

An MLflow client logs one metric per HTTP request, so a training loop pays Maestro's
fixed cost per request for every point: Starlette's route matching, FastAPI's
dependency resolution and request wrapping cost a large share of the time of a
``runs/log-metric`` whose database work takes a fraction of a millisecond. This plain
ASGI layer sits inside the request-context, metrics and CORS middleware and answers
``POST runs/log-metric``, ``POST runs/log-batch``, ``POST runs/search`` and
``GET runs/get`` (at the root and under ``/mlflow/{project_id}``) itself, by calling
the very endpoint functions of those FastAPI routes with the caller that
``get_reading_principal`` authenticates, inside the same MLflow error rendering
(``routes.in_mlflow_shape``). Authentication, permission checks, validation, the
transaction with its audit row, the response bytes and the errors are therefore those
of the FastAPI routes; only the lookup of the route and of its one dependency is
skipped. Every other request, and any request whose ASGI scope asks for more than this
layer knows (a root path, FastAPI's own telemetry), goes on to the app unchanged.
``MAESTRO_FAST_PATHS=false`` leaves this layer out;
``tests/mlflow_compat/test_fast_path_equality.py`` sends the same requests both ways.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from maestro.api.deps import get_reading_principal
from maestro.api.middleware import api_route
from maestro.mlflow_compat.routes import API, SCOPED_PREFIX, in_mlflow_shape

Handler = Callable[[Request], Awaitable[Response]]
SCOPED_START = "/mlflow/"
FAST_ROUTES = frozenset(
    {
        ("POST", f"{API}/runs/log-metric"),
        ("POST", f"{API}/runs/log-batch"),
        ("POST", f"{API}/runs/search"),
        ("GET", f"{API}/runs/get"),
    }
)


def match(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """(route template, path parameters) when ``method path`` is a fast route, as
    Starlette would match it (``{project_id}`` is one non-empty path segment)."""
    params: dict[str, str] = {}
    prefix = ""
    if path.startswith(SCOPED_START):
        project_id, slash, rest = path[len(SCOPED_START) :].partition("/")
        if not project_id or not slash:
            return None
        path = "/" + rest
        params = {"project_id": project_id}
        prefix = SCOPED_PREFIX
    if (method, path) not in FAST_ROUTES:
        return None
    return prefix + path, params


class FastMlflow:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: dict[tuple[str, str], tuple[APIRoute, Handler] | None] = {}

    def _route(self, method: str, template: str) -> tuple[APIRoute, Handler] | None:
        """The FastAPI route that would answer, and its endpoint with the caller resolved,
        found once; None (the app answers) unless the route takes exactly the request
        and the ``ReadingPrincipal`` this layer supplies."""
        key = (method, template)
        if key not in self._routes:
            found = api_route(self.fastapi_app, method, template)
            self._routes[key] = (found, _calling(found.endpoint)) if found and _takes_caller(found) else None
        return self._routes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path") or scope.get("fastapi.telemetry") is not None:
            await self.app(scope, receive, send)
            return
        matched = match(scope["method"], scope["path"])
        found = self._route(scope["method"], matched[0]) if matched is not None else None
        if matched is None or found is None:
            await self.app(scope, receive, send)
            return
        route, handler = found
        scope["app"] = self.fastapi_app
        scope["route"] = route  # what metrics, the access log and the audit row name it by
        scope["endpoint"] = route.endpoint
        scope["path_params"] = matched[1]
        request = Request(scope, receive, send)
        response = await in_mlflow_shape(handler, request)
        await response(scope, receive, send)


def _takes_caller(route: APIRoute) -> bool:
    dependant = route.dependant
    return (
        [dependency.call for dependency in dependant.dependencies] == [get_reading_principal]
        and dependant.request_param_name == "request"
        and not (dependant.path_params or dependant.query_params or dependant.header_params)
        and not (dependant.cookie_params or dependant.body_params)
    )


def _calling(endpoint: Callable[..., Awaitable[Response]]) -> Handler:
    """The route's endpoint with its one dependency, the caller, resolved as FastAPI
    resolves it (``ReadingPrincipal``)."""

    async def call(request: Request) -> Response:
        principal = await get_reading_principal(request)
        return await endpoint(request=request, principal=principal)

    return call
