"""Counting and timing every HTTP request by its route template, shared by the platform
and the model server, with the latency buckets both use (from 0.5 ms: the default ones,
from 5 ms, cannot resolve a 2 ms prediction)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Upper bounds in seconds; the per-minute aggregates behind …/metrics use the same
# buckets (in milliseconds) plus an unbounded last one.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS_MS = tuple(bound * 1000 for bound in LATENCY_BUCKETS)
UNMATCHED_ROUTE = "unmatched"


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (plain ASGI: a few
    microseconds, and never buffers a response). ``observe`` receives the template, the
    method, the status and the seconds until the response headers went out, or until
    its last byte with ``until_last_byte``."""

    def __init__(
        self,
        app: ASGIApp,
        observe: Callable[[str, str, int, float], None],
        until_last_byte: bool = False,
    ) -> None:
        self.app = app
        self.observe = observe
        self.until_last_byte = until_last_byte

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "seconds": None}

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                if not self.until_last_byte:
                    answer["seconds"] = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            template = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            seconds = answer["seconds"]
            self.observe(
                template,
                scope["method"],
                answer["status"],
                seconds if seconds is not None else time.perf_counter() - started,
            )
