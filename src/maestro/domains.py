"""Every domain that registers something with the layers below it, imported once.

Domains register their file sources and counters with ``maestro.projects.sources`` at
the import of their service modules. The entry points (the app, the worker, the CLI)
call ``register_all``, so the registries are complete wherever a request or a job runs,
whatever else happened to be imported first.
"""

from __future__ import annotations

import importlib

# The service modules whose import registers their domain's file sources and counters.
DOMAIN_SERVICES = (
    "maestro.deployments.service",
    "maestro.files.service",
    "maestro.mlflow_compat.service",
    "maestro.registry.service",
    "maestro.tracking.service",
)


def register_all() -> None:
    """Import every domain's service module (idempotent): each registers on import."""
    for module in DOMAIN_SERVICES:
        importlib.import_module(module)
