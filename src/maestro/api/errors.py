"""The one place that renders every error (ours, FastAPI's validation errors,
Starlette's 404 and 405) into the platform's error shape. The exception classes live in
``maestro.errors``, below every layer that raises them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from maestro.api.deps import refusal_before_validation
from maestro.api.envelope import ErrorBody, ErrorResponse
from maestro.errors import (
    ErrorDetail,
    MaestroError,
    code_for_status,
)

logger = logging.getLogger("maestro.errors")


_STATUS_DESCRIPTIONS = {
    400: "Bad request",
    401: "Authentication required",
    403: "Insufficient permissions",
    404: "Resource not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict with the current state",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    details: Sequence[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(code=code or code_for_status(status), message=message, details=list(details))
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


# The error shape by reference: FastAPI would build a validator for a ``model`` in every
# documented response of every route (about a fifth of the app's start-up), only to
# write this same reference. ``app._finish_openapi`` adds the schema to the components.
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry documenting each error a route can return."""
    return {
        status: {"description": _STATUS_DESCRIPTIONS[status], "content": ERROR_CONTENT} for status in statuses
    }


def _field_of(location: Sequence[Any]) -> str | None:
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or None


def validation_details(errors: Iterable[Mapping[str, Any]]) -> list[ErrorDetail]:
    return [
        ErrorDetail(field=_field_of(err.get("loc", ())), message=str(err.get("msg", "invalid")))
        for err in errors
    ]


async def _on_maestro_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaestroError)
    return error_response(
        exc.status_code, exc.message, code=exc.code, details=exc.details, headers=exc.headers
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    refusal = await refusal_before_validation(request)
    if refusal is not None:
        return await _on_maestro_error(request, refusal)
    return error_response(422, "Invalid input parameters", details=validation_details(exc.errors()))


async def _on_http_exception(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's "error parsing the body": bytes that are not UTF-8 are invalid input,
        # like malformed JSON, which FastAPI itself reports as 422.
        return error_response(
            422,
            "The request body is not valid UTF-8 JSON",
            details=[ErrorDetail(field="body", message="not UTF-8")],
        )
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        return error_response(
            422,
            "The request body is nested too deeply",
            details=[ErrorDetail(field="body", message="nested too deeply")],
        )
    if exc.status_code == 404:
        message = "No such resource or route"
    elif exc.status_code == 405:
        message = "This method is not allowed on this route"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _on_data_error(_request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value (a NUL character in text on PostgreSQL, a number
    out of range): the input was wrong, not the server."""
    logger.info("database refused a value: %s", exc)
    return error_response(
        422, "The input contains a value the database cannot store (such as a NUL character)"
    )


# SQLite result codes (the primary code is the low byte of an extended one) and
# PostgreSQL SQLSTATEs that mean "not now" rather than "never".
_SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_INTERRUPT = 9
_PG_BUSY = frozenset({"55P03", "40P01", "40001"})  # lock_not_available, deadlock, serialization
_PG_CANCELLED = "57014"  # query_canceled: statement_timeout
BUSY_RETRY_AFTER = "1"
CANCELLED_RETRY_AFTER = "5"


def database_pressure(exc: OperationalError) -> str | None:
    """Why the database refused: ``busy`` when a lock could not be had in time,
    ``cancelled`` when a statement ran past the request budget, None for any other
    failure (which is no client's doing and stays a 500)."""
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        primary = sqlite_code & 0xFF
        if primary in _SQLITE_BUSY:
            return "busy"
        return "cancelled" if primary == _SQLITE_INTERRUPT else None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _PG_BUSY:
        return "busy"
    return "cancelled" if sqlstate == _PG_CANCELLED else None


async def _on_operational_error(_request: Request, exc: Exception) -> JSONResponse:
    """A write lock that could not be had in time, or a statement stopped at the request
    budget, is the server being busy: 503 with Retry-After, never a 500. Anything else
    is a real failure, left to the request middleware's 500."""
    assert isinstance(exc, OperationalError)
    pressure = database_pressure(exc)
    if pressure == "busy":
        logger.warning("database busy: %s", exc.orig)
        return error_response(
            503,
            "The database is busy with other writes; retry shortly",
            headers={"Retry-After": BUSY_RETRY_AFTER},
        )
    if pressure == "cancelled":
        logger.warning("statement stopped at the request budget: %s", exc.orig)
        return error_response(
            503,
            "The request took longer than the server allows for one query; narrow it or retry later",
            headers={"Retry-After": CANCELLED_RETRY_AFTER},
        )
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    """Unexpected exceptions are rendered by the request-context middleware, which
    runs outside Starlette's exception layer and so can attach the request id."""
    app.add_exception_handler(MaestroError, _on_maestro_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(DataError, _on_data_error)
    app.add_exception_handler(OperationalError, _on_operational_error)
