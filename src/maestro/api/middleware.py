"""Request context middleware: request id, timing header, access log, and the last
line of defence that turns an unexpected exception into a 500 in the error shape.

It is plain ASGI (no BaseHTTPMiddleware) so it costs microseconds and never
buffers a streamed response."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maestro.api.context import accept_request_id, request_id_var
from maestro.api.envelope import ErrorDetail
from maestro.api.errors import error_response
from maestro.errors import RequestTimeout
from maestro.logs import access_logger, log_access, write_at_once

error_logger = logging.getLogger("maestro.errors")


def request_header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def unexpected_error(request_id: str) -> Any:
    return error_response(
        500, f"An unexpected error occurred; quote request id {request_id} when reporting it"
    )


def _nul_rejection() -> Any:
    return error_response(
        422,
        "NUL characters are not allowed in paths or query strings",
        details=[ErrorDetail(field="path", message="contains a NUL character")],
    )


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(
                scope, receive, _writing_logs_at_shutdown(send) if scope["type"] == "lifespan" else send
            )
            return

        request_id = accept_request_id(request_header(scope, b"x-request-id"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = list(message.get("headers", []))
                add_context_headers(headers, scope, request_id, started)
                message = {**message, "headers": headers}
            await send(message)

        try:
            if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
                # No identifier or filter holds a NUL; refuse it before any database sees it.
                await _nul_rejection()(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception:
            error_logger.exception(
                "unhandled error", extra={"request_id": request_id, "path": scope.get("path")}
            )
            if status_holder["started"]:
                raise  # headers are gone; the server closes the connection
            await unexpected_error(request_id)(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)
            if self.access_log:
                log_request(scope, status_holder["status"], started, request_id)


def add_context_headers(
    headers: list[tuple[bytes, bytes]], scope: Scope, request_id: str, started: float
) -> None:
    """What every answer carries: its request id, its processing time so far and the
    rate-limit headers its caller's plan set."""
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers.append((b"x-process-time", f"{time.perf_counter() - started:.4f}".encode()))
    for name, value in scope.get("state", {}).get("rate_limit_headers", {}).items():
        headers.append((name.lower().encode(), value.encode()))


def log_request(scope: Scope, status: int, started: float, request_id: str) -> None:
    """The request's access line, when the access log writes at INFO."""
    if access_logger.isEnabledFor(logging.INFO):
        client = scope.get("client")
        log_access(
            scope["method"],
            scope["path"],
            status,
            (time.perf_counter() - started) * 1000,
            request_id,
            client[0] if client else None,
        )


def _writing_logs_at_shutdown(send: Send) -> Send:
    """``send`` for the lifespan: once the application has stopped, the log lines still
    queued (the last requests', the shutdown's own) are written, and later ones at once,
    before the server is told: uvicorn then ends the process by the signal that stopped
    it, which runs no exit handlers."""

    async def send_after_writing(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            write_at_once()
        await send(message)

    return send_after_writing


class BodyClock:
    """``receive`` with a clock on the request body: when nothing of it arrives for
    ``seconds``, ``receive`` raises ``RequestTimeout`` (and later answers a disconnect),
    ``timed_out`` is set and ``timeout_response()`` is the answer to send instead of
    the application's. Once the body is complete, receiving (listening for a
    disconnect) is not timed."""

    __slots__ = ("_receive", "body_done", "seconds", "timed_out")

    def __init__(self, receive: Receive, seconds: float) -> None:
        self._receive = receive
        self.seconds = seconds
        self.body_done = False
        self.timed_out = False

    async def receive(self) -> Message:
        if self.timed_out:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()
        try:
            # asyncio's own timeout: a tenth of what anyio's cancel scope costs per call.
            async with asyncio.timeout(self.seconds):
                message = await self._receive()
        except TimeoutError:
            self.timed_out = True
            raise RequestTimeout(self.message()) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    def message(self) -> str:
        return f"No part of the request body arrived for {self.seconds:g} seconds"

    def timeout_response(self) -> Any:
        return error_response(
            RequestTimeout.status_code,
            self.message(),
            code=RequestTimeout.code,
            headers={"Connection": "close"},
        )


class RequestBodyTimeoutMiddleware:
    """Answers 408 and closes the connection when a client sends nothing of its request
    body for ``seconds`` (``BodyClock``), so a stalled upload cannot keep a connection, a
    partial file or a database transaction open for as long as it likes. The
    application sees the timeout as an error raised from ``receive`` and cleans up as
    for any failed request; its own answer is then replaced by the 408."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = BodyClock(receive, self.seconds)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if clock.timed_out and not started:
                return  # the 408 below answers instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, clock.receive, guarded_send)
        except Exception:
            if not clock.timed_out or started:
                raise
        if clock.timed_out and not started:
            await clock.timeout_response()(scope, receive, send)


def api_route(app: FastAPI, method: str, template: str) -> APIRoute | None:
    """The FastAPI route that answers ``method`` on the path template ``template``:
    what a plain-ASGI fast path labels its requests with (metrics, audit) and calls."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path == template and method in (route.methods or ()):
            return route
    return None
