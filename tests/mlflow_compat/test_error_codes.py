"""One table from Maestro's errors to MLflow's error codes (``api.mlflow_errors``),
used by the MLflow facade and the model server's MLflow scoring routes: each error
class answers the code and status MLflow's own server gives it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from maestro import errors
from maestro.api.mlflow_errors import MLFLOW_ERRORS, mlflow_error
from maestro.mlflow_compat.routes import error_of as facade_error
from tests.mlflow_compat.conftest import World, error_of, mlflow_call

PINNED: list[tuple[errors.MaestroError, int, str]] = [
    (errors.NotFound("gone"), 404, "RESOURCE_DOES_NOT_EXIST"),
    (errors.Conflict("taken"), 400, "RESOURCE_ALREADY_EXISTS"),
    (errors.PermissionDenied(), 403, "PERMISSION_DENIED"),
    (errors.AuthenticationRequired(), 401, "UNAUTHENTICATED"),
    (errors.ValidationFailed("bad", details=[("name", "too long")]), 400, "INVALID_PARAMETER_VALUE"),
    (errors.PayloadTooLarge("big"), 413, "INVALID_PARAMETER_VALUE"),
    (errors.RateLimited(), 429, "REQUEST_LIMIT_EXCEEDED"),
    (errors.ServiceUnavailable("later"), 503, "TEMPORARILY_UNAVAILABLE"),
    (errors.UnsupportedMediaType("csv"), 415, "BAD_REQUEST"),
]


@pytest.mark.parametrize(("exc", "status", "code"), PINNED, ids=lambda value: type(value).__name__)
def test_each_error_class_has_mlflow_s_code(exc: errors.MaestroError, status: int, code: str) -> None:
    assert mlflow_error(exc.status_code) == (status, code)
    assert facade_error(exc)[:2] == (status, code)


def test_every_status_the_table_names_is_an_error_class_s() -> None:
    statuses = {cls.status_code for cls in vars(errors).values() if isinstance(cls, type)
                and issubclass(cls, errors.MaestroError) and cls is not errors.MaestroError}  # fmt: skip
    assert set(MLFLOW_ERRORS) <= statuses


def test_statuses_outside_the_table() -> None:
    assert mlflow_error(408) == (408, "BAD_REQUEST")
    assert mlflow_error(500) == (500, "INTERNAL_ERROR")


def test_over_http(client: TestClient, world: World) -> None:
    missing = mlflow_call(client, "GET", "runs/get", world.headers(), {"run_id": "run_unknown"})
    error_of(missing, 404, "RESOURCE_DOES_NOT_EXIST")
    anonymous = mlflow_call(client, "GET", "runs/get", {}, {"run_id": "run_unknown"})
    error_of(anonymous, 401, "UNAUTHENTICATED")
