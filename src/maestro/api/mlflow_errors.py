"""MLflow's error codes: the one table from Maestro's errors to MLflow's
``{"error_code", "message"}`` and its HTTP status, used by the MLflow REST facade
(``mlflow_compat.routes``) and by the model server's MLflow scoring routes alike.

The codes and statuses are those of MLflow's own server (``mlflow.exceptions``): a
conflict is ``RESOURCE_ALREADY_EXISTS`` answered 400, as MLflow answers it; a rate limit
is ``REQUEST_LIMIT_EXCEEDED`` 429; validation is ``INVALID_PARAMETER_VALUE`` 400; a body
of a type the route does not read is ``BAD_REQUEST`` 415, as MLflow's scoring server
answers it. A status the table does not name is ``BAD_REQUEST`` (a client error, as
MLflow reads any other 4xx) or ``INTERNAL_ERROR`` (5xx), with its status kept."""

from __future__ import annotations

INVALID = "INVALID_PARAMETER_VALUE"
MISSING = "RESOURCE_DOES_NOT_EXIST"
EXISTS = "RESOURCE_ALREADY_EXISTS"

# Maestro's status (each error class carries one) → (MLflow's status, MLflow's code).
MLFLOW_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "BAD_REQUEST"),  # BadRequest
    401: (401, "UNAUTHENTICATED"),  # AuthenticationRequired
    403: (403, "PERMISSION_DENIED"),  # PermissionDenied
    404: (404, MISSING),  # NotFound
    409: (400, EXISTS),  # Conflict
    413: (413, INVALID),  # PayloadTooLarge
    415: (415, "BAD_REQUEST"),  # UnsupportedMediaType
    422: (400, INVALID),  # ValidationFailed
    429: (429, "REQUEST_LIMIT_EXCEEDED"),  # RateLimited
    503: (503, "TEMPORARILY_UNAVAILABLE"),  # ServiceUnavailable
}


def mlflow_error(status: int) -> tuple[int, str]:
    """(MLflow's status, MLflow's error code) for an error Maestro answers with ``status``."""
    if status in MLFLOW_ERRORS:
        return MLFLOW_ERRORS[status]
    return (status, "INTERNAL_ERROR") if status >= 500 else (status, "BAD_REQUEST")


class MlflowError(Exception):
    """An error in MLflow's shape: ``{"error_code", "message"}`` with an HTTP status."""

    def __init__(self, message: str, code: str = INVALID, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def invalid(message: str) -> MlflowError:
    return MlflowError(message, INVALID, 400)


def missing(message: str) -> MlflowError:
    return MlflowError(message, MISSING, 404)
