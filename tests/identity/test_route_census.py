"""Every route requires authentication except a short, reviewed allowlist."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from maestro.api.deps import route_requires_principal

PUBLIC = {
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.yaml"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/metrics"),  # Prometheus scrapes unauthenticated; MAESTRO_METRICS_ENABLED=false turns it off
}
# The documentation routes (plain Starlette routes, not API routes) and their assets.
DOCUMENTATION = {"/api/v1/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static/docs"}


def test_every_route_authenticates_unless_allowlisted(app: FastAPI) -> None:
    unauthenticated, seen = set(), set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            assert context.path in DOCUMENTATION, f"unexpected non-API route {context.path}"
            continue
        for method in route.methods:
            seen.add((method, context.path))
            if not route_requires_principal(route.dependant):
                unauthenticated.add((method, context.path))
    assert unauthenticated == PUBLIC
    assert seen >= PUBLIC, "the allowlist names routes that no longer exist"
