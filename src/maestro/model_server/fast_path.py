"""The prediction routes without the framework's per-request machinery.

FastAPI's routing, dependency resolution and request/response wrapping cost several
hundred microseconds a request, more than parsing, validating and predicting one row
together. This plain ASGI layer sits inside the request-context and metrics
middleware and answers the hot routes itself: ``POST /api/v1/predict[/{model_name}]``,
``/api/v1/batch-predict``, ``/v2/models/{name}[/versions/{v}]/infer`` and
``/invocations``. It calls what the FastAPI routes call: ``routes.authenticated``
(the routes' caller dependencies: authentication and rate limits) and the routes' own
answers (``answer_predict``, ``answer_batch``, ``protocols.answer_infer``,
``answer_invocations``: content-type and size checks, the work), with errors rendered
by ``protocol_error`` as the app's handlers render them; only route matching and
dependency solving are skipped. ``MAESTRO_FAST_PATHS=false`` leaves this layer out, and
``tests/model_server/test_fast_path_equality.py`` sends the same requests both ways.
The FastAPI routes stay in the app for the OpenAPI document and for every method this
layer does not take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from maestro.api.middleware import api_route
from maestro.errors import MaestroError
from maestro.model_server.auth import Caller
from maestro.model_server.protocols import answer_infer, answer_invocations
from maestro.model_server.routes import answer_batch, answer_predict, authenticated, on_maestro_error
from maestro.model_server.server import ModelServer

Handler = Callable[[ModelServer, Request, Caller, list[str]], Awaitable[Response]]


async def _predict(server: ModelServer, request: Request, caller: Caller, params: list[str]) -> Response:
    return await answer_predict(server, request, caller, params[0] if params else None)


async def _batch(server: ModelServer, request: Request, caller: Caller, params: list[str]) -> Response:
    return await answer_batch(server, request, caller)


async def _infer(server: ModelServer, request: Request, caller: Caller, params: list[str]) -> Response:
    return await answer_infer(server, request, caller, params[0], params[1] if len(params) > 1 else None)


async def _invocations(server: ModelServer, request: Request, caller: Caller, params: list[str]) -> Response:
    return await answer_invocations(server, request, caller)


def _match(path: str) -> tuple[str, Handler, str, list[str]] | None:
    """(route template, handler, rate-limit group, path parameters) for a hot route."""
    if path == "/api/v1/predict":
        return "/api/v1/predict", _predict, "predict", []
    if path == "/api/v1/batch-predict":
        return "/api/v1/batch-predict", _batch, "batch", []
    if path == "/invocations":
        return "/invocations", _invocations, "predict", []
    if path.startswith("/api/v1/predict/"):
        name = path[len("/api/v1/predict/") :]
        if name and "/" not in name:
            return "/api/v1/predict/{model_name}", _predict, "predict", [name]
        return None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[len("/v2/models/") : -len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return "/v2/models/{model_name}/infer", _infer, "predict", parts
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            return (
                "/v2/models/{model_name}/versions/{model_version}/infer",
                _infer,
                "predict",
                [parts[0], parts[2]],
            )
    return None


class FastPredictions:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: dict[str, APIRoute | None] = {}

    def _route(self, template: str) -> APIRoute | None:
        if template not in self._routes:
            self._routes[template] = api_route(self.fastapi_app, "POST", template)
        return self._routes[template]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        matched = _match(scope["path"])
        if matched is None:
            await self.app(scope, receive, send)
            return
        template, handler, group, params = matched
        scope["route"] = self._route(template)  # what metrics and the access log label it with
        scope["app"] = self.fastapi_app
        server: ModelServer = self.fastapi_app.state.model_server
        request = Request(scope, receive)
        try:
            caller = await authenticated(request, server, group)
            response = await handler(server, request, caller, params)
        except MaestroError as exc:
            response = await on_maestro_error(request, exc)  # the app's own handler
        await response(scope, receive, send)
