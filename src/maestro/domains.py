"""Every domain that registers something with the layers below it, imported once.

Domains register their file sources and counters with ``maestro.projects.sources`` at
the import of their service modules. The entry points (the app, the worker, the CLI)
import this module, so the registries are complete wherever a request or a job runs,
whatever else happened to be imported first.
"""

from __future__ import annotations

from maestro.files import service as files_service
from maestro.mlflow_compat import service as mlflow_compat_service
from maestro.projects.sources import register_counter
from maestro.registry import service as registry_service
from maestro.tracking import service as tracking_service

# The service modules imported for the registrations they make.
DOMAIN_SERVICES = (files_service, mlflow_compat_service, registry_service, tracking_service)


# --- serving: deployments per project --------------------------------------------------
# Kept here, not in the serving package, while that package is reorganised; it belongs in
# the deployments service module, next to the Deployment table.
def _register_deployments() -> None:
    from maestro.serving.models import Deployment

    register_counter("deployments", organization=Deployment.organization_id, project=Deployment.project_id)


def register_all() -> None:
    """Registrations that are not made by a domain's own import (idempotent)."""
    _register_deployments()


register_all()
