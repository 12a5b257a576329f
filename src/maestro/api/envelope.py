"""The response shapes every JSON route shares: ``Envelope[T]``, ``Page[T]`` and the
error body. Routes declare these as response models so the OpenAPI document is exact."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from maestro.api.context import current_request_id
from maestro.db import utcnow
from maestro.errors import ErrorDetail

T = TypeVar("T")


class Metadata(BaseModel):
    timestamp: datetime = Field(default_factory=utcnow)
    request_id: str = Field(default_factory=current_request_id, examples=["req_3f9a0c1d2e4b5a69"])


class Envelope(BaseModel, Generic[T]):
    success: Literal[True] = True
    data: T
    metadata: Metadata = Field(default_factory=Metadata)


class Pagination(BaseModel):
    total: int = Field(description="Items matching the query across all pages.")
    page: int | None = Field(description="Page number when paging by `page`; null when paging by cursor.")
    limit: int
    has_next: bool
    has_prev: bool
    next_cursor: str | None = Field(None, description="Pass as `cursor` to fetch the following page.")


class Page(BaseModel, Generic[T]):
    success: Literal[True] = True
    data: list[T]
    pagination: Pagination
    metadata: Metadata = Field(default_factory=Metadata)


class ErrorBody(BaseModel):
    code: str = Field(examples=["VALIDATION_ERROR"])
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    model_config = ConfigDict(title="Error")

    success: Literal[False] = False
    error: ErrorBody
    metadata: Metadata = Field(default_factory=Metadata)
