"""MLflow's experiments on tracking's (experiment "0" is each project's experiment named
Default), and the paging and filtering every MLflow search shares."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from maestro.api.mlflow_errors import EXISTS, MlflowError, invalid, missing
from maestro.api.params import ID_MAX_LENGTH
from maestro.errors import Conflict
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.mlflow_compat import filters
from maestro.mlflow_compat.common import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    ESTIMATED_FIXED_BYTES,
    EXPERIMENT_NAME_TYPE,
    EXPERIMENT_TAGS_TYPE,
    ID_RE,
    MAX_RESULTS,
    PAGE_BYTES,
    PAGE_ROWS,
    VIEW_TYPES,
    Scope,
    checked,
    decode_offset,
    encode_offset,
    entries,
    integer,
    key_values,
    ms,
    pairs,
    required_text,
    strings,
    text,
)
from maestro.projects import service as projects_service
from maestro.tracking import search
from maestro.tracking import service as tracking
from maestro.tracking.models import (
    Experiment,
    ExperimentTag,
    Lifecycle,
)
from maestro.tracking.schemas import (
    ExperimentCreate,
    ExperimentUpdate,
)

# --- experiments ---------------------------------------------------------------------------
NO_EXPERIMENT = "No such experiment"


def experiment_uri(experiment_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}"


def _experiment_tags(session: Session, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = defaultdict(dict)
    if ids:
        for experiment_id, key, value in session.execute(
            select(ExperimentTag.experiment_id, ExperimentTag.key, ExperimentTag.value)
            .where(ExperimentTag.experiment_id.in_(list(ids)))
            .order_by(ExperimentTag.key)
        ):
            found[experiment_id][key] = value
    return found


def experiment_dicts(session: Session, experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    tags = _experiment_tags(session, [experiment.id for experiment in experiments])
    return [
        {
            "experiment_id": experiment.id,
            "name": experiment.name,
            "artifact_location": experiment_uri(experiment.id),
            "lifecycle_stage": experiment.lifecycle_stage,
            "last_update_time": ms(experiment.updated_at),
            "creation_time": ms(experiment.created_at),
            "tags": pairs(tags.get(experiment.id, {})),
        }
        for experiment in experiments
    ]


def _default_experiment(session: Session, principal: Principal, scope: Scope, action: Action) -> Experiment:
    """MLflow's experiment "0" is the project's experiment named Default, created the first
    time a client logs to it."""
    project = projects_service.project_for(session, principal, "experiments", scope.required(), "read")
    experiment = session.scalar(
        select(Experiment).where(
            Experiment.project_id == project.id, Experiment.name == DEFAULT_EXPERIMENT_NAME
        )
    )
    if experiment is None:
        if action == "read":
            raise missing(NO_EXPERIMENT)
        experiment = tracking.create_experiment(
            session, principal, project.id, ExperimentCreate(name=DEFAULT_EXPERIMENT_NAME)
        )
    else:
        projects_service.authorize_in_project(
            session, principal, "experiments", action, project, missing=NO_EXPERIMENT
        )
    return experiment


def get_experiment_row(
    session: Session, principal: Principal, scope: Scope, experiment_id: str, action: Action
) -> Experiment:
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return _default_experiment(session, principal, scope, action)
    if len(experiment_id) > ID_MAX_LENGTH or not ID_RE.fullmatch(experiment_id):
        raise missing(NO_EXPERIMENT)
    experiment = tracking.get_visible_experiment(session, principal, experiment_id, action)
    if not scope.admits(experiment.project_id):
        raise missing(NO_EXPERIMENT)
    return experiment


def create_experiment(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    name = checked(EXPERIMENT_NAME_TYPE, required_text(body, "name", max_length=500), "name")
    tags = checked(EXPERIMENT_TAGS_TYPE, key_values(entries(body, "tags", limit=100), "tags"), "tags")
    try:
        experiment = tracking.create_experiment(
            session, principal, scope.required(), ExperimentCreate(name=name, tags=tags)
        )
    except Conflict as exc:
        raise MlflowError(f"Experiment(name={name}) already exists.", EXISTS) from exc
    return {"experiment_id": experiment.id}


def get_experiment(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "read")
    return {"experiment": experiment_dicts(session, [experiment])[0]}


def get_experiment_by_name(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    name = required_text(body, "experiment_name", max_length=500)
    project = projects_service.project_for(session, principal, "experiments", scope.required(), "read")
    experiment = session.scalar(
        select(Experiment).where(Experiment.project_id == project.id, Experiment.name == name)
    )
    if experiment is None:
        raise missing(f"Could not find experiment with name '{name[:200]}'")
    return {"experiment": experiment_dicts(session, [experiment])[0]}


def filter_conditions(
    body: dict[str, Any], fields: dict[str, filters.FieldType], *, tags: bool = True
) -> list[filters.Condition]:
    """The conditions of the request's ``filter`` (``mlflow_compat.filters``), each fit
    for its field's type; a malformed one is ``INVALID_PARAMETER_VALUE``."""
    raw = text(body, "filter", required=False, max_length=filters.MAX_FILTER_LENGTH) or ""
    try:
        return filters.parse(raw, fields, tags=tags)
    except filters.FilterError as exc:
        raise invalid(f"Invalid filter: {exc}") from exc


@dataclass(frozen=True)
class TagColumns:
    """Where a searched row's tags are: the tag's column naming its row, its key and
    value, and the searched row's id."""

    owner: Any
    key: Any
    value: Any
    row_id: Any


def where_filter(
    statement: Any,
    body: dict[str, Any],
    fields: dict[str, filters.FieldType],
    columns: dict[str, Any],
    tags: TagColumns | None = None,
) -> Any:
    """``statement`` narrowed by the request's ``filter``: a field's condition on its
    column, a tag's as "the row has a tag of that key whose value matches" (a search
    without ``tags`` refuses tag conditions)."""
    for condition in filter_conditions(body, fields, tags=tags is not None):
        if condition.kind == "tag":
            assert tags is not None  # filter_conditions refused it otherwise
            matching_tag = select(tags.owner).where(
                tags.owner == tags.row_id,
                tags.key == condition.key,
                search.compare(tags.value, condition.operator, condition.value),
            )
            statement = statement.where(matching_tag.exists())
        else:
            statement = statement.where(
                search.compare(columns[condition.key], condition.operator, condition.value)
            )
    return statement


def order_by_clauses(clauses: Sequence[str], columns: dict[str, Any], default: list[Any]) -> list[Any]:
    ordering = []
    for clause in clauses[:5]:
        words = clause.strip().split()
        if not words or len(words) > 2:
            raise invalid(f"Invalid order_by clause {clause[:100]!r}.")
        field = words[0].removeprefix("attributes.").removeprefix("attribute.")
        direction = words[1].upper() if len(words) == 2 else "ASC"
        if field not in columns or direction not in ("ASC", "DESC"):
            raise invalid(f"Invalid order_by clause {clause[:100]!r}.")
        ordering.append(columns[field].desc() if direction == "DESC" else columns[field].asc())
    return ordering + default


def page_window(body: dict[str, Any], default: int, high: int) -> tuple[int, int]:
    """(items on this page, offset). ``max_results`` may be up to ``high``, as MLflow's
    server takes it, but a page holds at most ``PAGE_ROWS``: a client asking for more
    gets a ``next_page_token`` sooner, which MLflow's client follows."""
    limit = integer(body, "max_results", default, low=1, high=high)
    assert limit is not None
    token = text(body, "page_token", required=False, max_length=1000)
    return min(limit, PAGE_ROWS), decode_offset(token)


class Identified(Protocol):
    """A model, or a row of a model's columns, with its id."""

    @property
    def id(self) -> str: ...


Item = TypeVar("Item")
Row = TypeVar("Row", bound=Identified)


def paged(rows: Sequence[Item], limit: int, offset: int) -> tuple[Sequence[Item], str | None]:
    if len(rows) > limit:
        return rows[:limit], encode_offset(offset + limit)
    return rows, None


def affordable(
    rows: Sequence[Row], sizes: dict[str, int], offset: int, token: str | None
) -> tuple[Sequence[Row], str | None]:
    """The first of ``rows`` (at least one) whose estimated JSON (``sizes`` by id, plus a
    fixed part) fits in ``PAGE_BYTES``, and the token of the page after them: so a page of
    runs with long tags is cut before its tags are even read."""
    used = 0
    for count, row in enumerate(rows):
        used += ESTIMATED_FIXED_BYTES + sizes.get(row.id, 0)
        if used > PAGE_BYTES and count:
            return rows[:count], encode_offset(offset + count)
    return rows, token


def within_budget(
    items: list[dict[str, Any]], offset: int, token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The first of ``items`` (at least one) whose JSON fits in ``PAGE_BYTES``, and the
    token of the page after them."""
    used = 0
    for count, item in enumerate(items):
        used += len(orjson.dumps(item)) + 1
        if used > PAGE_BYTES and count:
            return items[:count], encode_offset(offset + count)
    return items, token


def text_bytes(
    session: Session, ids: Sequence[str], parts: Sequence[tuple[Any, Sequence[Any]]]
) -> dict[str, int]:
    """An estimate of the JSON bytes the text of each of ``ids`` takes: ``parts`` are
    (owner id column, its text columns) of the tables holding it, summed by owner in
    the database, with a few bytes of punctuation per row."""
    if not ids:
        return {}
    rows = union_all(
        *(
            select(
                owner.label("owner"),
                sum((func.coalesce(func.length(column), 0) for column in columns), literal(32)).label("size"),
            ).where(owner.in_(list(ids)))
            for owner, columns in parts
        )
    ).subquery()
    return {
        owner: int(size)
        for owner, size in session.execute(select(rows.c.owner, func.sum(rows.c.size)).group_by(rows.c.owner))
    }


def search_experiments(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    project = projects_service.project_for(session, principal, "experiments", scope.required(), "read")
    limit, offset = page_window(body, 1000, MAX_RESULTS)
    view = VIEW_TYPES.get(str(body.get("view_type") or "ACTIVE_ONLY").upper())
    if view is None:
        raise invalid("view_type is one of ACTIVE_ONLY, DELETED_ONLY, ALL.")
    statement = select(Experiment).where(Experiment.project_id == project.id)
    if view != "all":
        statement = statement.where(
            Experiment.lifecycle_stage == (Lifecycle.active if view == "active_only" else Lifecycle.deleted)
        )
    fields = {
        "name": Experiment.name,
        "creation_time": Experiment.created_at,
        "last_update_time": Experiment.updated_at,
    }
    tag_columns = TagColumns(
        ExperimentTag.experiment_id, ExperimentTag.key, ExperimentTag.value, Experiment.id
    )
    statement = where_filter(statement, body, filters.EXPERIMENTS, fields, tag_columns)
    columns = {
        "name": Experiment.name,
        "experiment_id": Experiment.id,
        "creation_time": Experiment.created_at,
        "last_update_time": Experiment.updated_at,
    }
    ordering = order_by_clauses(
        strings(body, "order_by", limit=5), columns, [Experiment.created_at.desc(), Experiment.id.desc()]
    )
    rows = list(session.scalars(statement.order_by(*ordering).offset(offset).limit(limit + 1)))
    page, token = paged(rows, limit, offset)
    tag_bytes = text_bytes(
        session,
        [row.id for row in page],
        [(ExperimentTag.experiment_id, (ExperimentTag.key, ExperimentTag.value))],
    )
    page, token = affordable(page, tag_bytes, offset, token)
    experiments, token = within_budget(experiment_dicts(session, page), offset, token)
    answer: dict[str, Any] = {"experiments": experiments}
    if token:
        answer["next_page_token"] = token
    return answer


def update_experiment(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    name = checked(EXPERIMENT_NAME_TYPE, required_text(body, "new_name", max_length=500), "new_name")
    try:
        tracking.update_experiment(session, principal, experiment.id, ExperimentUpdate(name=name))
    except Conflict as exc:
        raise MlflowError(f"Experiment(name={name}) already exists.", EXISTS) from exc
    return {}


def set_experiment_lifecycle(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], stage: Lifecycle
) -> dict:
    """MLflow deletes experiments softly (a deleted one can be restored); Maestro's own
    API lists active experiments only."""
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "delete")
    tracking.set_experiment_lifecycle(session, experiment, stage)
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        lifecycle_stage=str(stage),
    )
    return {}


def set_experiment_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    key = required_text(body, "key", max_length=250)
    value = text(body, "value", required=False, max_length=5000) or ""
    tags = checked(EXPERIMENT_TAGS_TYPE, {key: value}, "tag")
    tracking.set_experiment_tag(session, experiment, key, tags[key])
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        tag=key,
    )
    return {}


def delete_experiment_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    key = required_text(body, "key", max_length=250)
    if not tracking.delete_experiment_tag(session, experiment, key):
        raise missing(f"No tag with name: {key[:100]} in experiment with id {experiment.id}")
    audit.describe(
        session,
        resource_type="experiments",
        resource_id=experiment.id,
        organization_id=experiment.organization_id,
        deleted_tag=key,
    )
    return {}
