"""Run search over experiments, paged by an offset cursor tied to the search."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from maestro.api.pagination import TokenError, decode_token, encode_token
from maestro.errors import ValidationFailed
from maestro.identity.rbac import Principal
from maestro.projects import service as projects_service
from maestro.tracking import search
from maestro.tracking.models import (
    Experiment,
    Lifecycle,
    Run,
)
from maestro.tracking.schemas import RunSearch


# --- search --------------------------------------------------------------------------------
def _search_error(exc: search.SearchError, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid {field}: {exc.message} at position {exc.position}",
        details=[(field, f"{exc.message} (position {exc.position})")],
    )


def _fingerprint(experiment_ids: Sequence[str], body: RunSearch) -> str:
    text = json.dumps([sorted(experiment_ids), body.filter, body.order_by, body.run_view_type])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_offset(offset: int, fingerprint: str) -> str:
    return encode_token(["s", offset, fingerprint])


def _decode_offset(cursor: str, fingerprint: str) -> int:
    try:
        _, offset, seen = decode_token(cursor, kind="s", length=3)
        if type(offset) is not int or not 0 <= offset <= 10_000_000 or seen != fingerprint:
            raise TokenError("not a cursor of this search")
        return offset
    except TokenError as exc:
        raise ValidationFailed(
            "The cursor does not belong to this search; start again without it",
            details=[("cursor", "malformed or from a different search")],
        ) from exc


def search_runs(
    session: Session, experiment_ids: Sequence[str], body: RunSearch
) -> tuple[list[Run], int, int, str | None]:
    """(runs of the page, total matching, offset, next cursor): one query, joining the
    latest-metric table for metric filters and orders and counting the matches with a
    window function."""
    if body.cursor is not None and body.page is not None:
        raise ValidationFailed(
            "Use either `cursor` or `page`, not both", details=[("cursor", "cannot be combined with page")]
        )
    try:
        node = search.parse_filter(body.filter)
    except search.SearchError as exc:
        raise _search_error(exc, "filter") from exc
    try:
        order = search.parse_order_by(body.order_by)
    except search.SearchError as exc:
        raise _search_error(exc, "order_by") from exc
    fingerprint = _fingerprint(experiment_ids, body)
    if body.cursor is not None:
        offset = _decode_offset(body.cursor, fingerprint)
    else:
        offset = ((body.page or 1) - 1) * body.limit
    where = _search_where(session, experiment_ids, node, body)
    statement = _search_statement(where, order).offset(offset).limit(body.limit + 1)
    rows = session.execute(statement).all()
    if rows:
        total = rows[0].total
    else:  # past the last page: the window had no rows to count
        total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    runs = [row[0] for row in rows]
    next_cursor = _encode_offset(offset + body.limit, fingerprint) if len(runs) > body.limit else None
    return runs[: body.limit], total, offset, next_cursor


def _search_where(
    session: Session, experiment_ids: Sequence[str], node: search.Node | None, body: RunSearch
) -> list[Any]:
    dialect = session.get_bind().dialect.name
    where = [Run.experiment_id.in_(experiment_ids), search.filter_sql(node, dialect)]
    if body.run_view_type == "active_only":
        where.append(Run.lifecycle_stage == Lifecycle.active)
    elif body.run_view_type == "deleted_only":
        where.append(Run.lifecycle_stage == Lifecycle.deleted)
    return where


def _search_statement(where: Sequence[Any], order: Sequence[search.OrderKey]) -> Select[Run, int]:
    """One query for a page and the number of matches (a window count)."""
    joins, ordering = search.order_sql(order)
    statement = select(Run, func.count().over().label("total"))
    for alias, on in joins:
        statement = statement.outerjoin(alias, on)
    return statement.where(*where).order_by(*ordering)


def search_statement_for_plan(
    session: Session, experiment_ids: Sequence[str], body: RunSearch
) -> Select[Run, int]:
    """The page query ``search_runs`` runs, for reading its query plan."""
    node = search.parse_filter(body.filter)
    where = _search_where(session, experiment_ids, node, body)
    return _search_statement(where, search.parse_order_by(body.order_by)).limit(body.limit + 1)


def searchable_experiments(
    session: Session, principal: Principal, project_id: str, experiment_ids: Sequence[str] | None
) -> list[str]:
    """The experiments of a readable project to search: those named (each must be in the
    project, else 422 naming it), or all of them."""
    project = projects_service.project_for(session, principal, "experiments", project_id, "read")
    statement = select(Experiment.id).where(Experiment.project_id == project.id)
    if experiment_ids is None:
        return list(session.scalars(statement.where(Experiment.lifecycle_stage == Lifecycle.active)))
    wanted = list(dict.fromkeys(experiment_ids))
    found = set(session.scalars(statement.where(Experiment.id.in_(wanted))))
    missing = [experiment_id for experiment_id in wanted if experiment_id not in found]
    if missing:
        raise ValidationFailed(
            "Every experiment searched must belong to the project",
            details=[
                ("experiment_ids", f"no such experiment in this project: {experiment_id}")
                for experiment_id in missing
            ],
        )
    return wanted
