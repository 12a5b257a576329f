"""Keyset (cursor) pagination with offset paging as an alternative.

A list route takes ``PageParams`` and hands the filtered select to ``paginate``
with the column it sorts by. The order is always (sort column, id), so pages are
stable even when many rows share a sort value. The cursor is opaque to clients:
URL-safe base64 of the sort key name, the last row's sort value and its id.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query
from sqlalchemy import Select, TypeDecorator, func, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from maestro.api.envelope import Page, Pagination
from maestro.api.params import ID_MAX_LENGTH
from maestro.errors import ValidationFailed

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ROW_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{ID_MAX_LENGTH}}}")

Row = TypeVar("Row")
Item = TypeVar("Item")


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
        ] = None,
        page: Annotated[
            int | None,
            Query(ge=1, le=100_000, description="Page number, for offset paging instead of a cursor."),
        ] = None,
    ) -> None:
        if cursor is not None and page is not None:
            raise ValidationFailed(
                "Use either `cursor` or `page`, not both",
                details=[("cursor", "cannot be combined with page")],
            )
        self.limit = limit
        self.cursor = cursor
        self.page = page


PageParamsDep = Annotated[PageParams, Depends()]


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    return value


def _sort_type(column: InstrumentedAttribute[Any]) -> type | None:
    """The Python type of a sort column's values, which a cursor's value must have."""
    column_type = column.type
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    try:
        kind = column_type.python_type
    except NotImplementedError:
        return None
    return None if kind is object else kind


def _decode_value(value: Any, kind: type | None) -> Any:
    """A cursor's sort value, refused unless it is a value of the sort column's type
    that the database can compare with: a client may send any JSON in its place."""
    if value is None:
        return None
    if isinstance(value, dict) and set(value) == {"t"} and kind in (datetime, None):
        moment = datetime.fromisoformat(value["t"])
        if moment.tzinfo is None:
            raise ValueError("a time without a time zone")
        return moment.astimezone(UTC)
    if isinstance(value, dict) and set(value) == {"d"} and kind in (Decimal, None):
        number = Decimal(value["d"])
        if not number.is_finite():
            raise ValueError("not a finite number")
        return number
    if isinstance(value, str) and kind in (str, None):
        if "\x00" in value:
            raise ValueError("a NUL character")
        value.encode()  # a lone surrogate (JSON's "\ud800") is no text a database takes
        return value
    if type(value) is bool and kind in (bool, None):
        return value
    if type(value) is int and kind in (int, float, Decimal, None):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("out of range")
        return value
    if type(value) is float and kind in (float, Decimal, None):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    raise ValueError("not a value of this list's sort order")


class TokenError(ValueError):
    """A cursor or page token this server did not issue: garbled, forged or for another
    list. Each API answers it in its own error shape."""


def encode_token(parts: Sequence[Any]) -> str:
    """The one encoding of every cursor and page token (Maestro's lists, a metric's
    history, run search, the MLflow facade's ``page_token``): a JSON array, in URL-safe
    base64 without padding. Opaque to clients; whoever reads it checks every part."""
    raw = json.dumps(list(parts), separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, *, kind: Any = None, length: int | None = None) -> list[Any]:
    """The JSON array ``token`` carries (padding optional), of ``length`` items whose
    first is ``kind`` when they are given; anything else, however it was crafted, is a
    ``TokenError``. The items themselves are the caller's to check."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, RecursionError, binascii.Error) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors.
        raise TokenError("not a token") from exc
    if type(decoded) is not list:
        raise TokenError("not a token")
    if length is not None and len(decoded) != length:
        raise TokenError("a token of another kind")
    if kind is not None and (not decoded or decoded[0] != kind):
        raise TokenError("a token of another kind")
    return decoded


def encode_cursor(sort_key: str, value: Any, row_id: str) -> str:
    return encode_token([sort_key, _encode_value(value), row_id])


def decode_cursor(cursor: str, sort_key: str, kind: type | None = None) -> tuple[Any, str]:
    """The sort value and id a cursor carries; ``kind`` is the sort column's Python type.
    Anything else, however it was crafted, is a 422 naming ``cursor``."""
    try:
        key, value, row_id = decode_token(cursor, length=3)
        if key != sort_key or type(row_id) is not str or not _ROW_ID.fullmatch(row_id):
            raise ValueError("cursor belongs to another ordering")
        return _decode_value(value, kind), row_id
    except (ValueError, TypeError, ArithmeticError, RecursionError, binascii.Error) as exc:
        # UnicodeDecodeError is a ValueError; decimal.InvalidOperation and OverflowError
        # (a time zone that moves the date past year 1 or 9999) are ArithmeticErrors.
        raise ValidationFailed(
            "The cursor is not valid for this list; start again without it",
            details=[("cursor", "malformed or from a different sort order")],
        ) from exc


def paginate(
    session: Session,
    statement: Select[Row],
    params: PageParams,
    *,
    sort_column: InstrumentedAttribute[Any],
    id_column: InstrumentedAttribute[str],
    order: Literal["asc", "desc"] = "desc",
    to_item: Callable[[Sequence[Row]], Sequence[Item]],
) -> Page[Item]:
    """Run ``statement`` one page at a time and build the ``Page`` response.

    ``to_item`` receives the whole page of rows at once so it can load related
    data for all of them in one query.
    """
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery())) or 0
    sort_key = sort_column.key
    descending = order == "desc"
    ordering = (sort_column.desc(), id_column.desc()) if descending else (sort_column.asc(), id_column.asc())
    query = statement.order_by(*ordering).limit(params.limit + 1)

    if params.cursor is not None:
        value, row_id = decode_cursor(params.cursor, sort_key, _sort_type(sort_column))
        boundary = tuple_(sort_column, id_column)
        query = query.where(boundary < (value, row_id) if descending else boundary > (value, row_id))
    elif params.page is not None:
        query = query.offset((params.page - 1) * params.limit)

    rows = list(session.scalars(query).all())
    has_next = len(rows) > params.limit
    rows = rows[: params.limit]
    next_cursor = None
    if has_next and rows:
        last = rows[-1]
        next_cursor = encode_cursor(sort_key, getattr(last, sort_key), getattr(last, id_column.key))

    return Page(
        data=list(to_item(rows)),
        pagination=Pagination(
            total=total,
            page=(params.page or 1) if params.cursor is None else None,
            limit=params.limit,
            has_next=has_next,
            has_prev=params.cursor is not None or (params.page or 1) > 1,
            next_cursor=next_cursor,
        ),
    )
