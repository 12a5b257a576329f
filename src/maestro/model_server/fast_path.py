"""The prediction routes without the framework's per-request machinery.

FastAPI's routing, dependency resolution and request/response wrapping cost several
hundred microseconds a request, more than parsing, validating and predicting one row
together. This plain ASGI layer sits inside the request-context and metrics
middleware and answers the hot routes itself: ``POST /api/v1/predict[/{model_name}]``,
``/api/v1/batch-predict``, ``/v2/models/{name}[/versions/{v}]/infer`` and
``/invocations``. It runs exactly the code the FastAPI routes run (same
authentication, rate limits, content-type and size checks, the same work, errors in
the same shapes). The work runs on the prediction threads, except a small body for an
ONNX model whose access decision is known, which costs less than the hop to a thread
and runs on the event loop (``ModelServer.runs_inline``). The FastAPI routes stay in
the app for the OpenAPI document and for every method this layer does not take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from maestro.api.errors import MaestroError, PayloadTooLarge, ValidationFailed
from maestro.api.middleware import api_route
from maestro.model_server.auth import Caller
from maestro.model_server.protocols import header_length_of, infer, invocations, mlflow_content_type
from maestro.model_server.routes import check_json_content_type, predict_batch, predict_one
from maestro.model_server.server import ModelServer

Handler = Callable[[ModelServer, Request, Caller, bytes, list[str]], Awaitable[Response]]


async def _predict(
    server: ModelServer, request: Request, caller: Caller, body: bytes, params: list[str]
) -> Response:
    check_json_content_type(request)
    name = params[0] if params else None
    if name is not None and server.runs_inline(caller, name, len(body)):
        return predict_one(server, caller, body, name)
    return await server.run(predict_one, server, caller, body, name)


async def _batch(
    server: ModelServer, request: Request, caller: Caller, body: bytes, params: list[str]
) -> Response:
    check_json_content_type(request)
    return await server.run(predict_batch, server, caller, body)


async def _infer(
    server: ModelServer, request: Request, caller: Caller, body: bytes, params: list[str]
) -> Response:
    header_length = header_length_of(request, body)
    version = params[1] if len(params) > 1 else None
    if server.runs_inline(caller, params[0], len(body)):
        return infer(server, caller, params[0], version, body, header_length)
    return await server.run(infer, server, caller, params[0], version, body, header_length)


async def _invocations(
    server: ModelServer, request: Request, caller: Caller, body: bytes, params: list[str]
) -> Response:
    mlflow_content_type(request)
    if server.runs_inline(caller, None, len(body)):
        return invocations(server, caller, body)
    return await server.run(invocations, server, caller, body)


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
            caller = server.auth.cached(request)
            if caller is None:
                caller = await run_in_threadpool(server.auth.check_platform, request)
            state = scope.setdefault("state", {})
            state["caller"] = caller
            state["rate_limit_headers"] = {}
            state["rate_limit_headers"] = server.rate_limit(group, caller)
            body = await _body(scope, receive, server.settings.model_server_max_body_bytes)
            response = await handler(server, request, caller, body, params)
        except MaestroError as exc:
            from maestro.model_server.routes import protocol_error

            response = protocol_error(
                request,
                exc.status_code,
                exc.message,
                code=exc.code,
                details=exc.details,
                headers=exc.headers,
                reason=getattr(exc, "reason", None),
            )
        await response(scope, receive, send)


async def _body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused past ``limit`` bytes (by Content-Length, else while read)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise ValidationFailed("Content-Length must be a number of bytes")
            if int(value) > limit:
                raise PayloadTooLarge(f"The body may have at most {limit:,} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ValidationFailed("The client went away before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The body may have at most {limit:,} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
