"""Errors as exception classes that carry their code and HTTP status. Services, the
store and the database layer raise them; the HTTP layer (``maestro.api.errors``) renders
them into the platform's error shape. Nothing here knows about HTTP frameworks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="Dotted path of the offending input, when there is one.")
    message: str


class MaestroError(Exception):
    """Base of every error a service may raise for a client to see."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    default_message: ClassVar[str] = "The request could not be processed"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Iterable[ErrorDetail | tuple[str | None, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = [
            d if isinstance(d, ErrorDetail) else ErrorDetail(field=d[0], message=d[1]) for d in details
        ]
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(MaestroError):
    pass


class AuthenticationRequired(MaestroError):
    status_code = 401
    code = "AUTHENTICATION_REQUIRED"
    default_message = "Missing or invalid authentication"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class PermissionDenied(MaestroError):
    status_code = 403
    code = "INSUFFICIENT_PERMISSIONS"
    default_message = "You do not have permission to do this"


class NotFound(MaestroError):
    status_code = 404
    code = "RESOURCE_NOT_FOUND"
    default_message = "The requested resource does not exist"


class MethodNotAllowed(MaestroError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "This method is not allowed on this resource"


class RequestTimeout(MaestroError):
    status_code = 408
    code = "REQUEST_TIMEOUT"
    default_message = "The request body did not arrive in time"


class Conflict(MaestroError):
    status_code = 409
    code = "CONFLICT"
    default_message = "The request conflicts with the current state of the resource"


class PayloadTooLarge(MaestroError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The request body is larger than allowed"


class UnsupportedMediaType(MaestroError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "This content type is not supported here"


class ValidationFailed(MaestroError):
    status_code = 422
    code = "VALIDATION_ERROR"
    default_message = "Invalid input parameters"


class RateLimited(MaestroError):
    status_code = 429
    code = "RATE_LIMIT_EXCEEDED"
    default_message = "Too many requests"


class ServiceUnavailable(MaestroError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "Service temporarily unavailable"


_CODE_FOR_STATUS = {
    cls.status_code: cls.code
    for cls in (
        BadRequest,
        AuthenticationRequired,
        PermissionDenied,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        ServiceUnavailable,
    )
}
_CODE_FOR_STATUS[500] = "INTERNAL_SERVER_ERROR"


def code_for_status(status: int) -> str:
    return _CODE_FOR_STATUS.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "BAD_REQUEST")
