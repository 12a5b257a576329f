"""Service-level routes: identity of the server, liveness and readiness."""
