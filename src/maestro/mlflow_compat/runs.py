"""MLflow's runs, their parameters, tags and metrics, on tracking's runs: every change
goes through ``tracking.service``."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from maestro.api.mlflow_errors import MlflowError, invalid, missing
from maestro.api.params import ID_MAX_LENGTH
from maestro.errors import Conflict, ValidationFailed
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.mlflow_compat.common import (
    DEFAULT_EXPERIMENT_ID,
    FROM_MLFLOW_STATUS,
    ID_RE,
    MAX_HISTORY,
    MAX_RESULTS,
    PARAMS_TYPE,
    RUN_NAME_TAG,
    RUN_NAME_TYPE,
    RUN_STATUS,
    TAGS_TYPE,
    VIEW_TYPES,
    Scope,
    checked,
    entries,
    integer,
    key_values,
    metric_json,
    required_text,
    strings,
    text,
)
from maestro.mlflow_compat.experiments import (
    affordable,
    get_experiment_row,
    page_window,
    paged,
    text_bytes,
    within_budget,
)
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.tracking import metrics as metric_store
from maestro.tracking import search as run_search
from maestro.tracking import service as tracking
from maestro.tracking.models import (
    Experiment,
    LatestMetric,
    Lifecycle,
    MetricPoint,
    Run,
    RunParam,
    RunTag,
)
from maestro.tracking.schemas import (
    INT64_MAX,
    INT64_MIN,
    NON_FINITE,
    RunCreate,
)

# --- runs ----------------------------------------------------------------------------------
NO_RUN = "No such run"


def run_uri(experiment_id: str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def get_run_row(
    session: Session, principal: Principal, scope: Scope, run_id: str, action: Action
) -> tuple[Experiment, Run]:
    """A run by its id alone, as MLflow addresses runs: one query for the run, its
    experiment and project, then the access check."""
    if len(run_id) > ID_MAX_LENGTH or not ID_RE.fullmatch(run_id):
        raise missing(f"Run with id={run_id[:100]} not found")
    row = session.execute(
        select(Run, Experiment, Project)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .join(Project, Project.id == Experiment.project_id)
        .where(Run.id == run_id)
    ).first()
    if row is None or not scope.admits(row[1].project_id):
        raise missing(f"Run with id={run_id} not found")
    run, experiment, project = row
    projects_service.authorize_in_project(
        session, principal, "experiments", action, project, missing=f"Run with id={run_id} not found"
    )
    return experiment, run


def writable_run(session: Session, principal: Principal, scope: Scope, run_id: str) -> tuple[Experiment, Run]:
    experiment, run = get_run_row(session, principal, scope, run_id, "write")
    if run.lifecycle_stage != Lifecycle.active:
        raise MlflowError(
            f"The run {run_id} must be in the 'active' state. Current state is {run.lifecycle_stage}.",
            "INVALID_STATE",
        )
    return experiment, run


class RunColumns(Protocol):
    """What ``run_info`` reads: a ``Run``, or a row of ``_RUN_COLUMNS`` (a search page
    loads no ORM objects)."""

    @property
    def id(self) -> str: ...
    @property
    def experiment_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def user_name(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def start_time(self) -> int | None: ...
    @property
    def end_time(self) -> int | None: ...
    @property
    def lifecycle_stage(self) -> str: ...


def run_info(run: RunColumns) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_uuid": run.id,
        "run_id": run.id,
        "experiment_id": run.experiment_id,
        "run_name": run.name,
        "user_id": run.user_name or "",
        "status": RUN_STATUS.get(run.status, "RUNNING"),
        "start_time": run.start_time,
        "artifact_uri": run_uri(run.experiment_id, run.id),
        "lifecycle_stage": run.lifecycle_stage,
    }
    if run.end_time is not None:
        info["end_time"] = run.end_time
    if run.start_time is None:
        del info["start_time"]
    return info


def _run_text_bytes(session: Session, ids: Sequence[str]) -> dict[str, int]:
    return text_bytes(
        session,
        ids,
        [
            (RunParam.run_id, (RunParam.key, RunParam.value)),
            (RunTag.run_id, (RunTag.key, RunTag.value)),
            (LatestMetric.run_id, (LatestMetric.key,)),
        ],
    )


def run_dicts(session: Session, runs: Sequence[RunColumns]) -> list[dict[str, Any]]:
    """Runs in MLflow's shape with their latest metrics, parameters and tags: one query
    each for a whole page."""
    ids = [run.id for run in runs]
    metrics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    params: dict[str, list[dict[str, str]]] = defaultdict(list)
    tags: dict[str, list[dict[str, str]]] = defaultdict(list)
    if ids:
        for run_id, key, number, timestamp, step in session.execute(
            select(
                LatestMetric.run_id,
                LatestMetric.key,
                LatestMetric.value,
                LatestMetric.timestamp,
                LatestMetric.step,
            )
            .where(LatestMetric.run_id.in_(ids))
            .order_by(LatestMetric.key)
        ):
            metrics[run_id].append(
                {"key": key, "value": metric_json(number), "timestamp": timestamp, "step": step}
            )
        for run_id, key, value in session.execute(
            select(RunParam.run_id, RunParam.key, RunParam.value)
            .where(RunParam.run_id.in_(ids))
            .order_by(RunParam.key)
        ):
            params[run_id].append({"key": key, "value": value})
        for run_id, key, value in session.execute(
            select(RunTag.run_id, RunTag.key, RunTag.value).where(RunTag.run_id.in_(ids)).order_by(RunTag.key)
        ):
            tags[run_id].append({"key": key, "value": value})
    return [
        {
            "info": run_info(run),
            "data": {"metrics": metrics[run.id], "params": params[run.id], "tags": tags[run.id]},
            "inputs": {},
            "outputs": {},
        }
        for run in runs
    ]


def _to_datetime(value: int | None) -> datetime | None:
    moment = tracking.to_datetime(value)
    if value is not None and (moment is None or not 0 <= value <= 253_402_300_799_999):
        raise invalid("Times are epoch milliseconds between 1970 and 9999.")
    return moment


def create_run(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment_id = text(body, "experiment_id", required=False) or DEFAULT_EXPERIMENT_ID
    experiment = get_experiment_row(session, principal, scope, experiment_id, "write")
    if experiment.lifecycle_stage != Lifecycle.active:
        raise MlflowError(f"The experiment {experiment.id} must be in the 'active' state.", "INVALID_STATE")
    tags = key_values(entries(body, "tags", limit=1000), "tags")
    run_name = text(body, "run_name", required=False, max_length=250) or tags.get(RUN_NAME_TAG) or None
    if run_name is not None:
        run_name = checked(RUN_NAME_TYPE, run_name, "run_name")
    start = _to_datetime(integer(body, "start_time"))
    created = tracking.create_run(
        session,
        principal,
        experiment.id,
        RunCreate(
            run_name=run_name,
            tags=checked(TAGS_TYPE, tags, "tags"),
            start_time=start,
        ),
    )
    if RUN_NAME_TAG not in tags:
        tracking.set_run_tag(session, created, RUN_NAME_TAG, created.name)
    return {"run": run_dicts(session, [created])[0]}


def get_run(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    run_id = text(body, "run_id", required=False) or required_text(body, "run_uuid")
    _, run = get_run_row(session, principal, scope, run_id, "read")
    return {"run": run_dicts(session, [run])[0]}


def run_id_of(body: dict[str, Any]) -> str:
    return text(body, "run_id", required=False) or required_text(body, "run_uuid")


def update_run(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    """Status, end time and name. MLflow lets a client resume an ended run (status
    RUNNING again) and end it anew; each ending records ``run.completed`` or
    ``run.failed`` as through Maestro's own API."""
    experiment, run = get_run_row(session, principal, scope, run_id_of(body), "write")
    raw_status = text(body, "status", required=False, max_length=20)
    end_time = _to_datetime(integer(body, "end_time"))
    name = text(body, "run_name", required=False, max_length=250)
    if name:
        name = checked(RUN_NAME_TYPE, name, "run_name")
        if tracking.rename_run(session, run, name, name_tag=RUN_NAME_TAG):
            audit.describe(
                session,
                resource_type="runs",
                resource_id=run.id,
                organization_id=run.organization_id,
                run_name=name,
            )
    if raw_status:
        target = FROM_MLFLOW_STATUS.get(raw_status.upper())
        if target is None:
            raise invalid(f"Invalid run status {raw_status[:20]!r}; one of {', '.join(FROM_MLFLOW_STATUS)}.")
        tracking.resume_or_change_run_status(session, principal, experiment, run, target, end_time)
    return {"run_info": run_info(run)}


def set_run_lifecycle(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], stage: Lifecycle
) -> dict:
    experiment, run = get_run_row(session, principal, scope, run_id_of(body), "delete")
    tracking.set_run_lifecycle(session, experiment, run, stage)
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        lifecycle_stage=str(stage),
    )
    return {}


class Point:
    """One metric value as ``tracking.metrics.log_points`` reads it, without a model per point."""

    __slots__ = ("name", "step", "timestamp", "value")

    def __init__(self, name: str, value: float | str, timestamp: int, step: int) -> None:
        self.name = name
        self.value = value
        self.timestamp = timestamp
        self.step = step


def _int64(value: Any, what: str) -> int:
    if value.__class__ is int and INT64_MIN <= value <= INT64_MAX:
        return value
    if isinstance(value, str) or value.__class__ is float:
        try:
            number = int(value)
        except (ValueError, OverflowError):
            raise invalid(f"Invalid value {str(value)[:50]!r} for '{what}': expected an integer.") from None
        if number == value or isinstance(value, str):
            return _int64(number, what)
    raise invalid(f"Invalid value {str(value)[:50]!r} for '{what}': expected a 64-bit integer.")


def points(raw: Any, now: int, max_points: int) -> list[Point]:
    """MLflow metrics (``{"key", "value", "timestamp", "step"}``) checked field by field."""
    if not isinstance(raw, list):
        raise invalid("Invalid value for parameter 'metrics': expected a list.")
    if len(raw) > max_points:
        raise invalid(
            f"A batch logging request can contain at most {max_points} metrics. Got {len(raw)} metrics."
        )
    found = []
    for index, item in enumerate(raw):
        if item.__class__ is not dict:
            raise invalid(f"metrics[{index}] is not an object.")
        found.append(metric_point(item, now, f"metrics[{index}]"))
    return found


def metric_point(item: dict[str, Any], now: int, where: str = "metric") -> Point:
    key = item.get("key")
    if key.__class__ is not str or not key:
        raise invalid(f"Missing value for required parameter '{where}.key'.")
    if len(key) > 250:
        raise invalid(f"The metric name of {where} is longer than 250 characters.")
    value = item.get("value")
    if value.__class__ is not float:
        if value is None:
            raise invalid(f"Missing value for required parameter '{where}.value'.")
        if value.__class__ is int:
            value = float(value) if abs(value) < 2**1023 else math.copysign(math.inf, value)
        elif value.__class__ is str:
            if value not in NON_FINITE:
                try:
                    number = float(value)
                except ValueError:
                    raise invalid(f"Invalid value {value[:50]!r} for '{where}.value'.") from None
                value = number
        else:
            raise invalid(f"Invalid value for '{where}.value': expected a number.")
    timestamp = item.get("timestamp")
    step = item.get("step")
    return Point(
        key,
        value,
        now if timestamp is None else _int64(timestamp, f"{where}.timestamp"),
        0 if step is None else _int64(step, f"{where}.step"),
    )


@dataclass(frozen=True)
class RunRef:
    """What logging metrics needs of a run, read without loading ORM objects."""

    id: str
    experiment_id: str
    organization_id: str


@dataclass(frozen=True)
class ProjectRef:
    """What ``authorize`` reads of a project."""

    id: str
    organization_id: str
    visibility: str


_RUN_FOR_LOGGING = (
    select(
        Run.id,
        Run.experiment_id,
        Run.organization_id,
        Run.lifecycle_stage,
        Project.id,
        Project.organization_id,
        Project.visibility,
    )
    .join(Experiment, Experiment.id == Run.experiment_id)
    .join(Project, Project.id == Experiment.project_id)
    .where(Run.id == bindparam("run_id"))
)


def run_for_logging(session: Session, principal: Principal, scope: Scope, run_id: str) -> RunRef:
    """``writable_run`` for the metric hot path: one prepared Core query of the few
    columns needed, then the same access check."""
    message = f"Run with id={run_id[:100]} not found"
    if len(run_id) > ID_MAX_LENGTH or not ID_RE.fullmatch(run_id):
        raise missing(message)
    row = session.connection().execute(_RUN_FOR_LOGGING, {"run_id": run_id}).first()
    if row is None or not scope.admits(row[4]):
        raise missing(message)
    project = ProjectRef(row[4], row[5], row[6])
    projects_service.authorize_in_project(
        session, principal, "experiments", "write", project, missing=message
    )
    if row[3] != Lifecycle.active:
        raise MlflowError(
            f"The run {run_id} must be in the 'active' state. Current state is {row[3]}.", "INVALID_STATE"
        )
    return RunRef(row[0], row[1], row[2])


def _store_points(session: Session, run: Run | RunRef, batch: list[Point]) -> None:
    if not batch:
        return
    try:
        names = tracking.log_metric_points(session, run, batch)
    except ValidationFailed as exc:
        raise invalid(exc.details[0].message if exc.details else exc.message) from exc
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        experiment_id=run.experiment_id,
        points=len(batch),
        metrics=names[:50],
    )


def log_metric(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    point = metric_point(body, metric_store.now_ms())
    _store_points(session, run_for_logging(session, principal, scope, run_id_of(body)), [point])
    return {}


def _log_params(
    session: Session, principal: Principal, experiment: Experiment, run: Run, params: dict[str, str]
) -> None:
    if not params:
        return
    values = checked(PARAMS_TYPE, params, "params")
    try:
        tracking.log_params(session, principal, experiment.id, run.id, values)
    except Conflict as exc:
        key = exc.details[0].field.removeprefix("params.") if exc.details and exc.details[0].field else ""
        raise invalid(
            f"Changing param values is not allowed. Param with key='{key}' was already logged "
            f"with another value for run ID='{run.id}'."
        ) from exc


def _set_tags(
    session: Session, principal: Principal, experiment: Experiment, run: Run, tags: dict[str, str]
) -> None:
    if not tags:
        return
    tracking.set_tags(session, principal, experiment.id, run.id, checked(TAGS_TYPE, tags, "tags"))
    if RUN_NAME_TAG in tags and tags[RUN_NAME_TAG] and tags[RUN_NAME_TAG] != run.name:
        tracking.rename_run(session, run, checked(RUN_NAME_TYPE, tags[RUN_NAME_TAG], "tags"))


def log_batch(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], max_points: int
) -> dict:
    """Parameters, tags and metrics in one request; the metrics in one bulk insert."""
    batch = points(body.get("metrics") or [], metric_store.now_ms(), max_points)
    params = key_values(entries(body, "params", limit=1000), "params")
    tags = key_values(entries(body, "tags", limit=1000), "tags")
    run_id = required_text(body, "run_id")
    if not params and not tags:  # the common case: metrics only
        run: Run | RunRef = run_for_logging(session, principal, scope, run_id)
    else:
        experiment, run = writable_run(session, principal, scope, run_id)
        _log_params(session, principal, experiment, run, params)
        _set_tags(session, principal, experiment, run, tags)
    linked = [item.get("model_id") is not None for item in body.get("metrics") or ()]
    if any(linked):
        batch = _without_repeats(session, run, batch, linked)
    _store_points(session, run, batch)
    return {}


def _without_repeats(
    session: Session, run: Run | RunRef, batch: list[Point], linked: list[bool]
) -> list[Point]:
    """After ``log_model`` the client sends the run's points again with the logged
    model's id, to link them to it; MLflow keeps one point per (key, step, timestamp,
    value), so an exact repeat of a stored point is not stored twice."""
    keys = {point.name for point, link in zip(batch, linked, strict=True) if link}
    stored = {
        (key, step, timestamp, metric_json(value))
        for key, step, timestamp, value in session.execute(
            select(MetricPoint.key, MetricPoint.step, MetricPoint.timestamp, MetricPoint.value).where(
                MetricPoint.run_id == run.id, MetricPoint.key.in_(keys)
            )
        )
    }
    return [
        point
        for point, link in zip(batch, linked, strict=True)
        if not link
        or (point.name, point.step, point.timestamp, metric_json(float(point.value))) not in stored
    ]


def log_param(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    key = required_text(body, "key", max_length=250)
    value = text(body, "value", required=False, max_length=6000) or ""
    experiment, run = writable_run(session, principal, scope, run_id_of(body))
    _log_params(session, principal, experiment, run, {key: value})
    return {}


def set_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    key = required_text(body, "key", max_length=250)
    value = text(body, "value", required=False, max_length=8000) or ""
    experiment, run = writable_run(session, principal, scope, run_id_of(body))
    _set_tags(session, principal, experiment, run, {key: value})
    return {}


def delete_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    key = required_text(body, "key", max_length=250)
    _, run = writable_run(session, principal, scope, run_id_of(body))
    if not tracking.delete_run_tag(session, run, key):
        raise missing(f"No tag with name: {key[:100]} in run with id {run.id}")
    audit.describe(
        session,
        resource_type="runs",
        resource_id=run.id,
        organization_id=run.organization_id,
        deleted_tag=key,
    )
    return {}


def accept_run_io(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    """Datasets (log-inputs), model outputs and legacy log-model: the run must exist and
    be writable; what is sent is accepted and not kept, so no client fails on it."""
    writable_run(session, principal, scope, run_id_of(body))
    return {}


def searched_experiments(
    session: Session, principal: Principal, scope: Scope, experiment_ids: list[str]
) -> list[str]:
    if not experiment_ids:
        raise invalid("Search needs at least one experiment id.")
    return [
        get_experiment_row(session, principal, scope, experiment_id, "read").id
        for experiment_id in dict.fromkeys(experiment_ids)
    ]


_RUN_COLUMNS = (
    Run.id,
    Run.experiment_id,
    Run.name,
    Run.user_name,
    Run.status,
    Run.start_time,
    Run.end_time,
    Run.lifecycle_stage,
)


def search_runs(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    """MLflow's filter language is what Maestro's run search understands (``metrics.``,
    ``params.``, ``tags.``, ``attributes.``; ``tracking.search``): one query for the page,
    selecting the run columns the answer needs rather than ORM objects, one that
    estimates each run's size, then one query each for the page's latest metrics,
    parameters and tags. A page holds at most ``PAGE_ROWS`` runs and ``PAGE_BYTES``."""
    experiment_ids = searched_experiments(session, principal, scope, strings(body, "experiment_ids"))
    limit, offset = page_window(body, 1000, MAX_RESULTS)
    view = VIEW_TYPES.get(str(body.get("run_view_type") or "ACTIVE_ONLY").upper())
    if view is None:
        raise invalid("run_view_type is one of ACTIVE_ONLY, DELETED_ONLY, ALL.")
    try:
        node = run_search.parse_filter(text(body, "filter", required=False, max_length=4000) or "")
        order = run_search.parse_order_by(strings(body, "order_by", limit=5))
    except run_search.SearchError as exc:
        raise invalid(f"Invalid search: {exc}") from exc
    where = [
        Run.experiment_id.in_(experiment_ids),
        run_search.filter_sql(node, session.get_bind().dialect.name),
    ]
    if view != "all":
        where.append(
            Run.lifecycle_stage == (Lifecycle.active if view == "active_only" else Lifecycle.deleted)
        )
    joins, ordering = run_search.order_sql(order)
    statement = select(*_RUN_COLUMNS)
    for alias, on in joins:
        statement = statement.outerjoin(alias, on)
    rows = session.execute(statement.where(*where).order_by(*ordering).offset(offset).limit(limit + 1)).all()
    page, token = paged(rows, limit, offset)
    page, token = affordable(page, _run_text_bytes(session, [row.id for row in page]), offset, token)
    runs, token = within_budget(run_dicts(session, page), offset, token)
    answer: dict[str, Any] = {"runs": runs} if runs else {}
    if token:
        answer["next_page_token"] = token
    return answer


def metric_history(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    _, run = get_run_row(session, principal, scope, run_id_of(body), "read")
    key = required_text(body, "metric_key", max_length=250)
    limit = integer(body, "max_results", MAX_HISTORY, low=1, high=MAX_HISTORY)
    assert limit is not None
    token = text(body, "page_token", required=False, max_length=200)
    try:
        page = metric_store.history(session, run.id, key, limit=limit, cursor=token)
    except ValidationFailed as exc:
        raise invalid(exc.message) from exc
    answer: dict[str, Any] = {
        "metrics": [
            {"key": key, "value": metric_json(point.value), "timestamp": point.timestamp, "step": point.step}
            for point in page.points
        ]
    }
    if page.next_cursor:
        answer["next_page_token"] = page.next_cursor
    return answer
