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
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query
from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from maestro.api.envelope import Page, Pagination
from maestro.api.errors import ValidationFailed

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

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


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"t"}:
            return datetime.fromisoformat(value["t"])
        if set(value) == {"d"}:
            return Decimal(value["d"])
        raise ValueError("unknown value")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError("unknown value")


def encode_cursor(sort_key: str, value: Any, row_id: str) -> str:
    raw = json.dumps([sort_key, _encode_value(value), row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort_key: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, value, row_id = json.loads(raw)
        if key != sort_key or not isinstance(row_id, str):
            raise ValueError("cursor belongs to another ordering")
        return _decode_value(value), row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid for this list; start again without it",
            details=[("cursor", "malformed or from a different sort order")],
        ) from exc


def paginate(
    session: Session,
    statement: Select[tuple[Row]],
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
        value, row_id = decode_cursor(params.cursor, sort_key)
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
