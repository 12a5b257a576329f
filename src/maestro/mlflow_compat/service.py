"""The MLflow REST API mapped onto Maestro's tracking and registry.

MLflow's experiments, runs, parameters, tags, metrics and artifacts are Maestro's own
rows (``maestro.tracking``), so Maestro's API shows everything an MLflow client logs, and
the other way round. Registered models and their versions are the registry's
(``maestro.registry``): MLflow's version N is the version whose ``number`` is N, stages
map None/Staging/Production/Archived to development/staging/production/archived, and
stage changes, aliases and tags go through the registry's own functions, so history,
audit and events are the same whichever API made the change.

The MLflow API has no projects: every request acts in one (``Scope``), named by the
``/mlflow/{project_id}`` prefix, the ``X-Maestro-Project`` header or the
``MAESTRO_MLFLOW_DEFAULT_PROJECT`` setting. Objects addressed by id must belong to that
project, and another tenant's ids answer exactly like unknown ones.

Functions here take a session, the principal and the scope, check access through the
tracking and registry services' own helpers, and return plain dictionaries in MLflow's
JSON shape. Errors are ``MlflowError`` (or Maestro's own, which the routes translate).
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import orjson
import yaml
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import bindparam, delete, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from maestro.api.errors import Conflict, NotFound, ValidationFailed
from maestro.api.pagination import TokenError, decode_token, encode_token
from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN
from maestro.db import flush_unique, run_after_commit, run_after_rollback, utcnow
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal
from maestro.mlflow_compat import filters
from maestro.mlflow_compat.errors import EXISTS, MlflowError, invalid, missing
from maestro.mlflow_compat.models import LoggedModel, LoggedModelFile
from maestro.projects.models import Project
from maestro.registry import service as registry
from maestro.registry.formats import ModelFormat, detect_format
from maestro.registry.models import ModelAlias, ModelTag, ModelType, ModelVersion, RegisteredModel, Stage
from maestro.registry.models import VersionTag as RegistryVersionTag
from maestro.registry.schemas import (
    ALIAS_PATTERN,
    Description,
    ModelCreate,
    ModelName,
    ModelUpdate,
    StageChange,
    TagKey,
    TagValue,
    VersionCreate,
)
from maestro.storage import ArtifactStore, StoredObject, delete_after_commit
from maestro.tracking import metrics as metric_store
from maestro.tracking import search as run_search
from maestro.tracking import service as tracking
from maestro.tracking.models import (
    ArtifactType,
    Experiment,
    ExperimentTag,
    LatestMetric,
    Lifecycle,
    MetricPoint,
    Run,
    RunArtifact,
    RunParam,
    RunStatus,
    RunTag,
)
from maestro.tracking.schemas import (
    INT64_MAX,
    INT64_MIN,
    NON_FINITE,
    ExperimentCreate,
    ExperimentName,
    ExperimentTagValue,
    ExperimentUpdate,
    Key,
    Params,
    RunCreate,
    RunName,
    Tags,
)

if TYPE_CHECKING:
    from maestro.config import Settings


# --- errors --------------------------------------------------------------------------------
def _validation_message(exc: ValidationError, what: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"Invalid value for {what}{f' ({where})' if where else ''}: {first.get('msg', 'invalid')}"


# --- request values ------------------------------------------------------------------------
_ID = re.compile(ID_PATTERN)


def text(body: dict[str, Any], name: str, *, required: bool = True, max_length: int = 5000) -> str | None:
    value = body.get(name)
    if value is None or (required and value == ""):
        if required:
            raise invalid(f"Missing value for required parameter '{name}'.")
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid value {str(value)[:100]!r} for parameter '{name}': expected a string.")
    if len(value) > max_length:
        raise invalid(f"Parameter '{name}' is longer than {max_length} characters.")
    if "\x00" in value:
        raise invalid(f"Parameter '{name}' contains a NUL character.")
    return value


def required_text(body: dict[str, Any], name: str, *, max_length: int = 5000) -> str:
    value = text(body, name, max_length=max_length)
    assert value is not None
    return value


def an_id(body: dict[str, Any], name: str) -> str:
    value = required_text(body, name, max_length=ID_MAX_LENGTH + 10)
    if len(value) > ID_MAX_LENGTH or not _ID.fullmatch(value):
        raise invalid(f"Invalid value {value[:100]!r} for parameter '{name}'.")
    return value


def integer(
    body: dict[str, Any],
    name: str,
    default: int | None = None,
    *,
    low: int = INT64_MIN,
    high: int = INT64_MAX,
) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for parameter '{name}': expected an integer.")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise invalid(
                f"Invalid value {value[:50]!r} for parameter '{name}': expected an integer."
            ) from None
    elif isinstance(value, float):
        if not value.is_integer():
            raise invalid(f"Invalid value {value!r} for parameter '{name}': expected an integer.")
        value = int(value)
    elif not isinstance(value, int):
        raise invalid(f"Invalid value for parameter '{name}': expected an integer.")
    if not low <= value <= high:
        raise invalid(f"Parameter '{name}' must lie between {low} and {high}.")
    return value


def boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def entries(body: dict[str, Any], name: str, *, limit: int) -> list[dict[str, Any]]:
    """A repeated message field, such as ``tags``: a list of objects."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or any(type(item) is not dict for item in value):
        raise invalid(f"Invalid value for parameter '{name}': expected a list of objects.")
    if len(value) > limit:
        raise invalid(f"At most {limit} entries in '{name}'; got {len(value)}.")
    return value


def key_values(items: list[dict[str, Any]], name: str) -> dict[str, str]:
    """``[{"key", "value"}]`` as a dict; a key given twice with two values is refused."""
    found: dict[str, str] = {}
    for item in items:
        key = item.get("key")
        value = item.get("value", "")
        if not isinstance(key, str) or not key:
            raise invalid(f"Every entry of '{name}' needs a 'key'.")
        if value is None:
            value = ""
        if not isinstance(value, str):
            value = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        if key in found and found[key] != value:
            raise invalid(f"Duplicate key {key[:100]!r} in '{name}' with different values.")
        found[key] = value
    return found


def strings(body: dict[str, Any], name: str, *, limit: int = 100) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(not isinstance(item, str) for item in value):
        raise invalid(f"Invalid value for parameter '{name}': expected a list of strings.")
    if len(value) > limit:
        raise invalid(f"At most {limit} values in '{name}'.")
    return value


_TAGS = TypeAdapter(Tags)
_PARAMS = TypeAdapter(Params)
_KEY = TypeAdapter(Key)
_EXPERIMENT_TAGS = TypeAdapter(dict[Key, ExperimentTagValue])
_EXPERIMENT_NAME = TypeAdapter(ExperimentName)
_RUN_NAME = TypeAdapter(RunName)
_MODEL_NAME = TypeAdapter(ModelName)
_REGISTRY_TAG_KEY = TypeAdapter(TagKey)
_REGISTRY_TAG_VALUE = TypeAdapter(TagValue)
_DESCRIPTION = TypeAdapter(Description)


def checked(adapter: TypeAdapter[Any], value: Any, what: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise invalid(_validation_message(exc, what)) from exc


# --- conversions ---------------------------------------------------------------------------
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RUN_STATUS = {
    RunStatus.running: "RUNNING",
    RunStatus.scheduled: "SCHEDULED",
    RunStatus.completed: "FINISHED",
    RunStatus.failed: "FAILED",
    RunStatus.killed: "KILLED",
}
FROM_MLFLOW_STATUS = {name: status for status, name in RUN_STATUS.items()}
STAGE_NAMES = {
    Stage.development: "None",
    Stage.staging: "Staging",
    Stage.production: "Production",
    Stage.archived: "Archived",
}
FROM_MLFLOW_STAGE = {name.lower(): stage for stage, name in STAGE_NAMES.items()}
VIEW_TYPES = {
    "ACTIVE_ONLY": "active_only",
    "DELETED_ONLY": "deleted_only",
    "ALL": "all",
    "1": "active_only",
    "2": "deleted_only",
    "3": "all",
}
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment: here, one per project
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
MAX_RESULTS = 50_000  # the largest max_results MLflow's server takes
PAGE_ROWS = 1_000  # items in one search page at most, whatever max_results asks
PAGE_BYTES = 8 * 1024 * 1024  # JSON in one search page at most, beyond its first item
ESTIMATED_FIXED_BYTES = 400  # a run's or experiment's JSON besides its tags, params and metrics
MAX_HISTORY = 25_000


def ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


def metric_json(value: float | None) -> float | str:
    """A stored value as MLflow's JSON carries doubles (NULL is how NaN is stored)."""
    if value is None or value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def pairs(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in values.items()]


def _encode_offset(offset: int) -> str:
    return encode_token(["o", offset])


def _decode_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        _, offset = decode_token(token, kind="o", length=2)
        if type(offset) is not int or not 0 <= offset <= 10_000_000:
            raise TokenError("out of range")
        return offset
    except TokenError as exc:
        raise invalid("Invalid page token; start again without it.") from exc


# --- scope ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """The project a request acts in (None: the request named none)."""

    project_id: str | None

    def required(self) -> str:
        if self.project_id is None:
            raise invalid(
                "This request needs a project: use the tracking URI http://<host>/mlflow/<project_id>, "
                "send the X-Maestro-Project header, or set MAESTRO_MLFLOW_DEFAULT_PROJECT."
            )
        return self.project_id

    def admits(self, project_id: str) -> bool:
        return self.project_id is None or self.project_id == project_id


def scope_of(project_id: str | None) -> Scope:
    if project_id is not None and (len(project_id) > ID_MAX_LENGTH or not _ID.fullmatch(project_id)):
        raise missing("No such project")
    return Scope(project_id)


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
    project = tracking.get_project_for_experiments(session, principal, scope.required(), "read")
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
        tracking.authorize_experiments(session, principal, action, project, missing=NO_EXPERIMENT)
    return experiment


def get_experiment_row(
    session: Session, principal: Principal, scope: Scope, experiment_id: str, action: Action
) -> Experiment:
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return _default_experiment(session, principal, scope, action)
    if len(experiment_id) > ID_MAX_LENGTH or not _ID.fullmatch(experiment_id):
        raise missing(NO_EXPERIMENT)
    experiment = tracking.get_visible_experiment(session, principal, experiment_id, action)
    if not scope.admits(experiment.project_id):
        raise missing(NO_EXPERIMENT)
    return experiment


def create_experiment(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    name = checked(_EXPERIMENT_NAME, required_text(body, "name", max_length=500), "name")
    tags = checked(_EXPERIMENT_TAGS, key_values(entries(body, "tags", limit=100), "tags"), "tags")
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
    project = tracking.get_project_for_experiments(session, principal, scope.required(), "read")
    experiment = session.scalar(
        select(Experiment).where(Experiment.project_id == project.id, Experiment.name == name)
    )
    if experiment is None:
        raise missing(f"Could not find experiment with name '{name[:200]}'")
    return {"experiment": experiment_dicts(session, [experiment])[0]}


def _filter(
    body: dict[str, Any], fields: dict[str, filters.FieldType], *, tags: bool = True
) -> list[filters.Condition]:
    """The conditions of the request's ``filter`` (``mlflow_compat.filters``), each fit
    for its field's type; a malformed one is ``INVALID_PARAMETER_VALUE``."""
    raw = text(body, "filter", required=False, max_length=filters.MAX_FILTER_LENGTH) or ""
    try:
        return filters.parse(raw, fields, tags=tags)
    except filters.FilterError as exc:
        raise invalid(f"Invalid filter: {exc}") from exc


def _compare(column: Any, operator: str, value: Any) -> Any:
    """``column operator value`` in SQL, for a condition ``filters.parse`` checked."""
    if operator == "=":
        return column == value
    if operator == "!=":
        return column != value
    if operator == "<":
        return column < value
    if operator == "<=":
        return column <= value
    if operator == ">":
        return column > value
    if operator == ">=":
        return column >= value
    if operator in ("IN", "NOT IN"):
        values = list(value) if isinstance(value, tuple) else [value]
        return column.in_(values) if operator == "IN" else column.not_in(values)
    negate = operator.startswith("NOT ")
    matched = column.ilike(value) if operator.endswith("ILIKE") else column.like(value)
    return ~matched if negate else matched


def _order(clauses: Sequence[str], columns: dict[str, Any], default: list[Any]) -> list[Any]:
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


def _page(body: dict[str, Any], default: int, high: int) -> tuple[int, int]:
    """(items on this page, offset). ``max_results`` may be up to ``high``, as MLflow's
    server takes it, but a page holds at most ``PAGE_ROWS``: a client asking for more
    gets a ``next_page_token`` sooner, which MLflow's client follows."""
    limit = integer(body, "max_results", default, low=1, high=high)
    assert limit is not None
    token = text(body, "page_token", required=False, max_length=1000)
    return min(limit, PAGE_ROWS), _decode_offset(token)


def _paged(rows: list[Any], limit: int, offset: int) -> tuple[list[Any], str | None]:
    if len(rows) > limit:
        return rows[:limit], _encode_offset(offset + limit)
    return rows, None


def _affordable(
    rows: list[Any], sizes: dict[str, int], offset: int, token: str | None
) -> tuple[list[Any], str | None]:
    """The first of ``rows`` (at least one) whose estimated JSON (``sizes`` by id, plus a
    fixed part) fits in ``PAGE_BYTES``, and the token of the page after them: so a page of
    runs with long tags is cut before its tags are even read."""
    used = 0
    for count, row in enumerate(rows):
        used += ESTIMATED_FIXED_BYTES + sizes.get(row.id, 0)
        if used > PAGE_BYTES and count:
            return rows[:count], _encode_offset(offset + count)
    return rows, token


def _within_budget(
    items: list[dict[str, Any]], offset: int, token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The first of ``items`` (at least one) whose JSON fits in ``PAGE_BYTES``, and the
    token of the page after them."""
    used = 0
    for count, item in enumerate(items):
        used += len(orjson.dumps(item)) + 1
        if used > PAGE_BYTES and count:
            return items[:count], _encode_offset(offset + count)
    return items, token


def _text_bytes(
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
    project = tracking.get_project_for_experiments(session, principal, scope.required(), "read")
    limit, offset = _page(body, 1000, MAX_RESULTS)
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
    for condition in _filter(body, filters.EXPERIMENTS):
        if condition.kind == "tag":
            statement = statement.where(
                select(ExperimentTag.experiment_id)
                .where(
                    ExperimentTag.experiment_id == Experiment.id,
                    ExperimentTag.key == condition.key,
                    _compare(ExperimentTag.value, condition.operator, condition.value),
                )
                .exists()
            )
        else:
            statement = statement.where(_compare(fields[condition.key], condition.operator, condition.value))
    columns = {
        "name": Experiment.name,
        "experiment_id": Experiment.id,
        "creation_time": Experiment.created_at,
        "last_update_time": Experiment.updated_at,
    }
    ordering = _order(
        strings(body, "order_by", limit=5), columns, [Experiment.created_at.desc(), Experiment.id.desc()]
    )
    rows = list(session.scalars(statement.order_by(*ordering).offset(offset).limit(limit + 1)))
    page, token = _paged(rows, limit, offset)
    tag_bytes = _text_bytes(
        session,
        [row.id for row in page],
        [(ExperimentTag.experiment_id, (ExperimentTag.key, ExperimentTag.value))],
    )
    page, token = _affordable(page, tag_bytes, offset, token)
    experiments, token = _within_budget(experiment_dicts(session, page), offset, token)
    answer: dict[str, Any] = {"experiments": experiments}
    if token:
        answer["next_page_token"] = token
    return answer


def update_experiment(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    name = checked(_EXPERIMENT_NAME, required_text(body, "new_name", max_length=500), "new_name")
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
    tags = checked(_EXPERIMENT_TAGS, {key: value}, "tag")
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


# --- runs ----------------------------------------------------------------------------------
NO_RUN = "No such run"


def run_uri(experiment_id: str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def get_run_row(
    session: Session, principal: Principal, scope: Scope, run_id: str, action: Action
) -> tuple[Experiment, Run]:
    """A run by its id alone, as MLflow addresses runs: one query for the run, its
    experiment and project, then the access check."""
    if len(run_id) > ID_MAX_LENGTH or not _ID.fullmatch(run_id):
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
    tracking.authorize_experiments(
        session, principal, action, project, missing=f"Run with id={run_id} not found"
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


def run_info(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_uuid": run.id,
        "run_id": run.id,
        "experiment_id": run.experiment_id,
        "run_name": run.name,
        "user_id": run.user_name or "",
        "status": RUN_STATUS.get(run.status, "RUNNING"),  # type: ignore[call-overload]
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
    return _text_bytes(
        session,
        ids,
        [
            (RunParam.run_id, (RunParam.key, RunParam.value)),
            (RunTag.run_id, (RunTag.key, RunTag.value)),
            (LatestMetric.run_id, (LatestMetric.key,)),
        ],
    )


def run_dicts(session: Session, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Runs in MLflow's shape with their latest metrics, parameters and tags: one query
    each for a whole page."""
    ids = [run.id for run in runs]
    metrics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    params: dict[str, list[dict[str, str]]] = defaultdict(list)
    tags: dict[str, list[dict[str, str]]] = defaultdict(list)
    if ids:
        for run_id, key, value, timestamp, step in session.execute(
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
                {"key": key, "value": metric_json(value), "timestamp": timestamp, "step": step}
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
        run_name = checked(_RUN_NAME, run_name, "run_name")
    start = _to_datetime(integer(body, "start_time"))
    created = tracking.create_run(
        session,
        principal,
        experiment.id,
        RunCreate(
            run_name=run_name,
            tags=checked(_TAGS, tags, "tags"),
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


def _run_id(body: dict[str, Any]) -> str:
    return text(body, "run_id", required=False) or required_text(body, "run_uuid")


def update_run(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    """Status, end time and name. MLflow lets a client resume an ended run (status
    RUNNING again) and end it anew; each ending records ``run.completed`` or
    ``run.failed`` as through Maestro's own API."""
    experiment, run = get_run_row(session, principal, scope, _run_id(body), "write")
    raw_status = text(body, "status", required=False, max_length=20)
    end_time = _to_datetime(integer(body, "end_time"))
    name = text(body, "run_name", required=False, max_length=250)
    if name:
        name = checked(_RUN_NAME, name, "run_name")
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
    experiment, run = get_run_row(session, principal, scope, _run_id(body), "delete")
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
                    value = float(value)
                except ValueError:
                    raise invalid(f"Invalid value {value[:50]!r} for '{where}.value'.") from None
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
    if len(run_id) > ID_MAX_LENGTH or not _ID.fullmatch(run_id):
        raise missing(message)
    row = session.connection().execute(_RUN_FOR_LOGGING, {"run_id": run_id}).first()
    if row is None or not scope.admits(row[4]):
        raise missing(message)
    project = ProjectRef(row[4], row[5], row[6])
    tracking.authorize_experiments(session, principal, "write", project, missing=message)  # type: ignore[arg-type]
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
    _store_points(session, run_for_logging(session, principal, scope, _run_id(body)), [point])
    return {}


def _log_params(
    session: Session, principal: Principal, experiment: Experiment, run: Run, params: dict[str, str]
) -> None:
    if not params:
        return
    values = checked(_PARAMS, params, "params")
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
    tracking.set_tags(session, principal, experiment.id, run.id, checked(_TAGS, tags, "tags"))
    if RUN_NAME_TAG in tags and tags[RUN_NAME_TAG] and tags[RUN_NAME_TAG] != run.name:
        tracking.rename_run(session, run, checked(_RUN_NAME, tags[RUN_NAME_TAG], "tags"))


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
    experiment, run = writable_run(session, principal, scope, _run_id(body))
    _log_params(session, principal, experiment, run, {key: value})
    return {}


def set_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    key = required_text(body, "key", max_length=250)
    value = text(body, "value", required=False, max_length=8000) or ""
    experiment, run = writable_run(session, principal, scope, _run_id(body))
    _set_tags(session, principal, experiment, run, {key: value})
    return {}


def delete_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    key = required_text(body, "key", max_length=250)
    _, run = writable_run(session, principal, scope, _run_id(body))
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
    writable_run(session, principal, scope, _run_id(body))
    return {}


def _searched_experiments(
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
    experiment_ids = _searched_experiments(session, principal, scope, strings(body, "experiment_ids"))
    limit, offset = _page(body, 1000, MAX_RESULTS)
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
    page, token = _paged(rows, limit, offset)
    page, token = _affordable(page, _run_text_bytes(session, [row.id for row in page]), offset, token)
    runs, token = _within_budget(run_dicts(session, page), offset, token)  # type: ignore[arg-type]
    answer: dict[str, Any] = {"runs": runs} if runs else {}
    if token:
        answer["next_page_token"] = token
    return answer


def metric_history(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    _, run = get_run_row(session, principal, scope, _run_id(body), "read")
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


# --- artifacts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactPlace:
    """Where an ``mlflow-artifacts`` path points: a run's artifacts or a logged model's
    files, and the path inside them ("" for the root)."""

    experiment_id: str
    run_id: str | None
    model_id: str | None
    path: str


_PLACE = re.compile(
    r"^(?P<experiment>[^/]+)/(?:models/(?P<model>[^/]+)|(?P<run>[^/]+))/artifacts(?:/(?P<rest>.*))?$"
)


def artifact_place(path: str, check_path: Any) -> ArtifactPlace | None:
    """The place of ``<experiment>/<run>/artifacts/<path>`` or
    ``<experiment>/models/<model_id>/artifacts/<path>``; None for paths above them.
    ``check_path`` refuses names that could ever be read as locations."""
    stripped = path.strip("/") if not path.startswith("/") else None
    if stripped is None:
        raise invalid("Invalid path: artifact paths are relative.")
    if "\\" in path or "\x00" in path:
        raise invalid("Invalid path.")
    if any(part in ("..", ".") for part in path.split("/")):
        raise invalid("Invalid path.")
    match = _PLACE.fullmatch(stripped)
    if match is None:
        return None
    inner = match["rest"] or ""
    if inner:
        try:
            inner = check_path(inner)
        except ValidationFailed as exc:
            raise invalid(f"Invalid path: {exc.details[0].message if exc.details else exc.message}") from exc
    for part in (match["experiment"], match["model"] or match["run"]):
        if len(part) > ID_MAX_LENGTH + 10 or not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            raise missing("No such artifact")
    return ArtifactPlace(match["experiment"], match["run"], match["model"], inner)


def artifact_owner(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace, action: Action
) -> tuple[Experiment, Run | None, LoggedModel | None]:
    if place.run_id is not None:
        experiment, run = (
            writable_run(session, principal, scope, place.run_id)
            if action == "write"
            else get_run_row(session, principal, scope, place.run_id, action)
        )
        if experiment.id != place.experiment_id:
            raise missing("No such artifact")
        return experiment, run, None
    assert place.model_id is not None
    model, experiment = get_logged_model_row(session, principal, scope, place.model_id, action)
    if experiment.id != place.experiment_id:
        raise missing("No such artifact")
    return experiment, None, model


def artifacts_prefix(experiment: Experiment) -> str:
    return tracking.artifacts_prefix(experiment)


def record_artifact(
    session: Session,
    principal: Principal,
    scope: Scope,
    place: ArtifactPlace,
    stored: StoredObject,
    content_type: str | None,
    store: ArtifactStore,
) -> None:
    """Record a stored upload at its place; a file already there is replaced."""
    experiment, run, model = artifact_owner(session, principal, scope, place, "write")
    if run is not None:
        tracking.record_artifact(
            session,
            principal,
            experiment.id,
            run.id,
            path=place.path,
            artifact_type=ArtifactType.model
            if place.path.split("/")[0] in ("model", "models")
            else ArtifactType.other,
            description=None,
            stored=stored,
            content_type=content_type,
            store=store,
        )
        return
    assert model is not None
    row = session.get(LoggedModelFile, (model.id, place.path))
    replaced = None
    if row is None:
        row = LoggedModelFile(model_id=model.id, path=place.path)
        session.add(row)
    else:
        replaced = row.storage_key
        row.created_at = utcnow()
    row.storage_key, row.size, row.sha256 = stored.key, stored.size, stored.sha256
    model.updated_at = utcnow()
    flush_unique(session, Conflict("A file was uploaded to this path at the same time; try again"))
    key = stored.key
    run_after_rollback(session, lambda: store.delete(key))
    if replaced is not None:
        run_after_commit(session, lambda: store.delete(replaced))
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        path=place.path,
        size=stored.size,
        sha256=stored.sha256,
    )


def _files_of(
    session: Session, run: Run | None, model: LoggedModel | None, prefix: str
) -> list[tuple[str, int, str]]:
    """(path, size, storage key) of the files at or under ``prefix``."""
    if run is not None:
        statement = select(RunArtifact.path, RunArtifact.size, RunArtifact.storage_key).where(
            RunArtifact.run_id == run.id
        )
        column = RunArtifact.path
    else:
        assert model is not None
        statement = select(LoggedModelFile.path, LoggedModelFile.size, LoggedModelFile.storage_key).where(
            LoggedModelFile.model_id == model.id
        )
        column = LoggedModelFile.path
    if prefix:
        statement = statement.where(or_(column == prefix, column.startswith(f"{prefix}/", autoescape=True)))
    return [tuple(row) for row in session.execute(statement.order_by(column))]  # type: ignore[misc]


def listing(files: Iterable[tuple[str, int, str]], prefix: str) -> list[dict[str, Any]]:
    """The immediate children of ``prefix``: files with their sizes, then directories,
    by name; a prefix naming a file lists nothing, as in MLflow."""
    children: dict[str, dict[str, Any]] = {}
    start = f"{prefix}/" if prefix else ""
    for path, size, _ in files:
        if path == prefix:
            return []
        rest = path[len(start) :]
        head, _, tail = rest.partition("/")
        if tail:
            children.setdefault(head, {"path": head, "is_dir": True})
        else:
            children[head] = {"path": head, "is_dir": False, "file_size": size}
    return [children[name] for name in sorted(children)]


def list_artifacts(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace | None
) -> dict[str, Any]:
    if place is None:
        return {}
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    files = listing(_files_of(session, run, model, place.path), place.path)
    return {"files": files} if files else {}


def list_run_artifacts(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], check_path: Any
) -> dict:
    """The older ``artifacts/list`` of a run: paths relative to the run's root."""
    experiment, run = get_run_row(session, principal, scope, _run_id(body), "read")
    path = text(body, "path", required=False, max_length=1000) or ""
    place = artifact_place(f"{experiment.id}/{run.id}/artifacts/{path}".rstrip("/"), check_path)
    assert place is not None
    files = listing(_files_of(session, run, None, place.path), place.path)
    for item in files:
        item["path"] = f"{place.path}/{item['path']}" if place.path else item["path"]
    answer: dict[str, Any] = {"root_uri": run_uri(experiment.id, run.id)}
    if files:
        answer["files"] = files
    return answer


def artifact_file(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace
) -> tuple[str, int]:
    """(storage key, size) of the file at ``place``."""
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    for path, size, key in _files_of(session, run, model, place.path):
        if path == place.path:
            return key, size
    raise missing(f"No such artifact: '{place.path[:200]}'")


def delete_artifacts(
    session: Session, principal: Principal, scope: Scope, place: ArtifactPlace, store: ArtifactStore
) -> dict:
    experiment, run, model = artifact_owner(session, principal, scope, place, "write")
    files = _files_of(session, run, model, place.path)
    paths = [path for path, _, _ in files]
    keys = [key for _, _, key in files]
    if run is not None:
        tracking.delete_run_artifacts(session, run, paths)
    else:
        assert model is not None
        session.execute(
            delete(LoggedModelFile).where(
                LoggedModelFile.model_id == model.id, LoggedModelFile.path.in_(paths)
            )
        )
    delete_after_commit(session, store, keys)
    audit.describe(
        session,
        resource_type="run_artifacts" if run is not None else "mlflow_logged_models",
        resource_id=run.id if run is not None else model.id if model is not None else None,
        organization_id=experiment.organization_id,
        deleted=len(paths),
        path=place.path,
    )
    return {}


# --- logged models -------------------------------------------------------------------------
NO_LOGGED_MODEL = "No such logged model"


def logged_model_uri(model: LoggedModel) -> str:
    return f"mlflow-artifacts:/{model.experiment_id}/models/{model.id}/artifacts"


def get_logged_model_row(
    session: Session, principal: Principal, scope: Scope, model_id: str, action: Action
) -> tuple[LoggedModel, Experiment]:
    if len(model_id) > 40 or not _ID.fullmatch(model_id):
        raise missing(f"Logged model with ID '{model_id[:100]}' not found.")
    row = session.execute(
        select(LoggedModel, Experiment, Project)
        .join(Experiment, Experiment.id == LoggedModel.experiment_id)
        .join(Project, Project.id == LoggedModel.project_id)
        .where(LoggedModel.id == model_id)
    ).first()
    message = f"Logged model with ID '{model_id}' not found."
    if row is None or not scope.admits(row[0].project_id):
        raise missing(message)
    model, experiment, project = row
    tracking.authorize_experiments(session, principal, action, project, missing=message)
    return model, experiment


def logged_model_dict(model: LoggedModel) -> dict[str, Any]:
    info: dict[str, Any] = {
        "model_id": model.id,
        "experiment_id": model.experiment_id,
        "name": model.name,
        "creation_timestamp_ms": ms(model.created_at),
        "last_updated_timestamp_ms": ms(model.updated_at),
        "artifact_uri": logged_model_uri(model),
        "status": model.status,
        "tags": pairs(model.tags or {}),
    }
    if model.model_type:
        info["model_type"] = model.model_type
    if model.source_run_id:
        info["source_run_id"] = model.source_run_id
    if model.status_message:
        info["status_message"] = model.status_message
    return {"info": info, "data": {"params": pairs(model.params or {})}}


def create_logged_model(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment = get_experiment_row(session, principal, scope, required_text(body, "experiment_id"), "write")
    name = text(body, "name", required=False, max_length=250) or "model"
    checked(_RUN_NAME, name, "name")
    run_id = text(body, "source_run_id", required=False)
    if run_id:
        run_experiment, _ = get_run_row(session, principal, scope, run_id, "write")
        if run_experiment.project_id != experiment.project_id:
            raise missing(f"Run with id={run_id} not found")
    params = checked(_PARAMS, key_values(entries(body, "params", limit=1000), "params"), "params")
    tags = checked(_TAGS, key_values(entries(body, "tags", limit=1000), "tags"), "tags")
    model = LoggedModel(
        organization_id=experiment.organization_id,
        project_id=experiment.project_id,
        experiment_id=experiment.id,
        source_run_id=run_id or None,
        name=name,
        model_type=text(body, "model_type", required=False, max_length=100),
        status="LOGGED_MODEL_PENDING",
        params=params,
        tags=tags,
        created_by_id=principal.user_id,
    )
    session.add(model)
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        experiment_id=experiment.id,
        name=name,
    )
    return {"model": logged_model_dict(model)}


def get_logged_model(session: Session, principal: Principal, scope: Scope, model_id: str) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "read")
    return {"model": logged_model_dict(model)}


LOGGED_MODEL_STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")


def finalize_logged_model(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    status = required_text(body, "status", max_length=40).upper()
    if status not in LOGGED_MODEL_STATUSES:
        raise invalid(f"Invalid status {status!r}; one of {', '.join(LOGGED_MODEL_STATUSES)}.")
    model.status = status
    model.status_message = text(body, "status_message", required=False, max_length=2000)
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        status=status,
    )
    return {"model": logged_model_dict(model)}


def _merge_into_logged_model(
    session: Session,
    principal: Principal,
    scope: Scope,
    model_id: str,
    body: dict[str, Any],
    field: Literal["tags", "params"],
    limits: TypeAdapter[Any],
) -> dict:
    """Add or replace a logged model's tags or params with the body's entries."""
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    values = checked(limits, key_values(entries(body, field, limit=1000), field), field)
    setattr(model, field, {**(getattr(model, field) or {}), **values})
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        **{field: sorted(values)[:50]},
    )
    return {}


def set_logged_model_tags(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    return _merge_into_logged_model(session, principal, scope, model_id, body, "tags", _TAGS)


def delete_logged_model_tag(
    session: Session, principal: Principal, scope: Scope, model_id: str, key: str
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "write")
    if key not in (model.tags or {}):
        raise missing(f"No tag with key {key[:100]!r} on logged model {model.id}")
    model.tags = {name: value for name, value in model.tags.items() if name != key}
    model.updated_at = utcnow()
    session.flush()
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        deleted_tag=key,
    )
    return {}


def log_logged_model_params(
    session: Session, principal: Principal, scope: Scope, model_id: str, body: dict[str, Any]
) -> dict:
    return _merge_into_logged_model(session, principal, scope, model_id, body, "params", _PARAMS)


def delete_logged_model(
    session: Session, principal: Principal, scope: Scope, model_id: str, store: ArtifactStore
) -> dict:
    model, _ = get_logged_model_row(session, principal, scope, model_id, "delete")
    keys = list(
        session.scalars(select(LoggedModelFile.storage_key).where(LoggedModelFile.model_id == model.id))
    )
    audit.describe(
        session,
        resource_type="mlflow_logged_models",
        resource_id=model.id,
        organization_id=model.organization_id,
        deleted=True,
    )
    session.delete(model)
    session.flush()
    delete_after_commit(session, store, keys)
    return {}


def search_logged_models(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    experiment_ids = _searched_experiments(session, principal, scope, strings(body, "experiment_ids"))
    limit, offset = _page(body, 100, MAX_RESULTS)
    statement = select(LoggedModel).where(LoggedModel.experiment_id.in_(experiment_ids))
    fields = {
        "name": LoggedModel.name,
        "status": LoggedModel.status,
        "source_run_id": LoggedModel.source_run_id,
        "model_type": LoggedModel.model_type,
    }
    for condition in _filter(body, filters.LOGGED_MODELS, tags=False):
        statement = statement.where(_compare(fields[condition.key], condition.operator, condition.value))
    rows = list(
        session.scalars(
            statement.order_by(LoggedModel.created_at.desc(), LoggedModel.id.desc())
            .offset(offset)
            .limit(limit + 1)
        )
    )
    page, token = _paged(rows, limit, offset)
    models, token = _within_budget([logged_model_dict(model) for model in page], offset, token)
    answer: dict[str, Any] = {"models": models}
    if token:
        answer["next_page_token"] = token
    return answer


# --- registered models ---------------------------------------------------------------------
def _model_name(body: dict[str, Any], field: str = "name") -> str:
    return required_text(body, field, max_length=500)


def registered_model_row(session: Session, principal: Principal, scope: Scope, name: str) -> RegisteredModel:
    try:
        return registry.get_model_by_name(session, principal, scope.required(), name)
    except NotFound as exc:
        raise missing(f"Registered Model with name={name[:200]} not found") from exc


def _version_extras(
    session: Session, version_ids: Sequence[str]
) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    aliases: dict[str, list[str]] = defaultdict(list)
    if version_ids:
        for version_id, key, value in session.execute(
            select(RegistryVersionTag.version_id, RegistryVersionTag.key, RegistryVersionTag.value)
            .where(RegistryVersionTag.version_id.in_(list(version_ids)))
            .order_by(RegistryVersionTag.key)
        ):
            tags[version_id][key] = value
        for version_id, alias in session.execute(
            select(ModelAlias.version_id, ModelAlias.alias)
            .where(ModelAlias.version_id.in_(list(version_ids)))
            .order_by(ModelAlias.alias)
        ):
            aliases[version_id].append(alias)
    return tags, aliases


def version_dicts(
    session: Session, model: RegisteredModel, rows: Sequence[ModelVersion]
) -> list[dict[str, Any]]:
    tags, aliases = _version_extras(session, [row.id for row in rows])
    return [_version_dict(row, model, tags, aliases) for row in rows]


def _version_dict(
    row: ModelVersion,
    model: RegisteredModel,
    tags: dict[str, dict[str, str]],
    aliases: dict[str, list[str]],
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": model.name,
        "version": str(row.number),
        "creation_timestamp": ms(row.created_at),
        "last_updated_timestamp": ms(row.created_at),  # versions keep no update time
        "current_stage": STAGE_NAMES.get(Stage(row.stage), "None"),
        "description": row.description or "",
        "source": row.source or "",
        "run_id": row.run_id or "",
        "status": "READY",
        "run_link": "",
        "tags": pairs(tags.get(row.id, {})),
        "aliases": aliases.get(row.id, []),
    }
    if row.logged_model_id:
        item["model_id"] = row.logged_model_id
    return item


def _latest_per_stage(
    session: Session, model: RegisteredModel, stages: Sequence[Stage] | None = None
) -> list[ModelVersion]:
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.number)
    )
    latest: dict[str, ModelVersion] = {}
    for row in rows:
        if stages is None or Stage(row.stage) in stages:
            latest[row.stage] = row
    return sorted(latest.values(), key=lambda row: row.number)


def registered_model_dict(session: Session, model: RegisteredModel) -> dict[str, Any]:
    tags = dict(
        session.execute(
            select(ModelTag.key, ModelTag.value).where(ModelTag.model_id == model.id).order_by(ModelTag.key)
        ).all()
    )
    aliases = session.execute(
        select(ModelAlias.alias, ModelVersion.number)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == model.id)
        .order_by(ModelAlias.alias)
    ).all()
    item: dict[str, Any] = {
        "name": model.name,
        "creation_timestamp": ms(model.created_at),
        "last_updated_timestamp": ms(model.updated_at),
        "description": model.description or "",
        "latest_versions": version_dicts(session, model, _latest_per_stage(session, model)),
        "tags": pairs(tags),
        "aliases": [{"alias": alias, "version": str(number)} for alias, number in aliases],
    }
    return item


def _registry_tag(key: Any, value: Any) -> tuple[str, str]:
    return checked(_REGISTRY_TAG_KEY, key, "tag key"), checked(_REGISTRY_TAG_VALUE, value or "", "tag value")


def create_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    name = checked(_MODEL_NAME, _model_name(body), "name")
    description = checked(
        _DESCRIPTION, text(body, "description", required=False, max_length=2000) or "", "description"
    )
    tags = [
        _registry_tag(key, value)
        for key, value in key_values(entries(body, "tags", limit=100), "tags").items()
    ]
    try:
        model = registry.create_model(
            session,
            principal,
            scope.required(),
            ModelCreate(name=name, description=description or None, model_type=ModelType.other),
        )
    except Conflict as exc:
        raise MlflowError(f"Registered Model (name={name}) already exists.", EXISTS) from exc
    for key, value in tags:
        registry.set_tag(session, principal, model.id, key, value)
    return {"registered_model": registered_model_dict(session, model)}


def get_registered_model(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    return {"registered_model": registered_model_dict(session, model)}


def update_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    if "description" in body:
        description = checked(
            _DESCRIPTION, text(body, "description", required=False, max_length=2000) or "", "description"
        )
        model = registry.update_model(
            session, principal, model.id, ModelUpdate(description=description or None)
        )
    return {"registered_model": registered_model_dict(session, model)}


def rename_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    new_name = checked(_MODEL_NAME, _model_name(body, "new_name"), "new_name")
    try:
        model = registry.update_model(session, principal, model.id, ModelUpdate(name=new_name))
    except Conflict as exc:
        raise MlflowError(f"Registered Model (name={new_name}) already exists.", EXISTS) from exc
    return {"registered_model": registered_model_dict(session, model)}


def delete_registered_model(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], store: ArtifactStore
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    registry.delete_model(session, principal, model.id, store)
    return {}


def search_registered_models(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    project = registry.get_project_for_models(session, principal, scope.required(), "read")
    limit, offset = _page(body, 100, 1000)
    statement = select(RegisteredModel).where(RegisteredModel.project_id == project.id)
    for condition in _filter(body, filters.REGISTERED_MODELS):
        if condition.kind == "tag":
            statement = statement.where(
                select(ModelTag.id)
                .where(
                    ModelTag.model_id == RegisteredModel.id,
                    ModelTag.key == condition.key,
                    _compare(ModelTag.value, condition.operator, condition.value),
                )
                .exists()
            )
        else:
            statement = statement.where(_compare(RegisteredModel.name, condition.operator, condition.value))
    columns = {
        "name": RegisteredModel.name,
        "timestamp": RegisteredModel.updated_at,
        "last_updated_timestamp": RegisteredModel.updated_at,
        "creation_timestamp": RegisteredModel.created_at,
    }
    ordering = _order(
        strings(body, "order_by", limit=5), columns, [RegisteredModel.name.asc(), RegisteredModel.id.asc()]
    )
    rows = list(session.scalars(statement.order_by(*ordering).offset(offset).limit(limit + 1)))
    page, token = _paged(rows, limit, offset)
    models, token = _within_budget([registered_model_dict(session, model) for model in page], offset, token)
    answer: dict[str, Any] = {"registered_models": models}
    if token:
        answer["next_page_token"] = token
    return answer


def latest_versions(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    stages = None
    if body.get("stages"):
        stages = [_stage(name) for name in strings(body, "stages", limit=10)]
    return {"model_versions": version_dicts(session, model, _latest_per_stage(session, model, stages))}


def _stage(name: str) -> Stage:
    stage = FROM_MLFLOW_STAGE.get(name.strip().lower())
    if stage is None:
        raise invalid(
            f"Invalid Model Version stage: {name[:50]}. "
            "Value must be one of None, Staging, Production, Archived."
        )
    return stage


def set_registered_model_tag(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    key, value = _registry_tag(body.get("key"), body.get("value"))
    registry.set_tag(session, principal, model.id, key, value)
    return {}


def delete_registered_model_tag(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    key = required_text(body, "key", max_length=250)
    try:
        registry.delete_tag(session, principal, model.id, key)
    except NotFound as exc:
        raise missing(f"No tag with key {key[:100]!r} on registered model {model.name}") from exc
    return {}


# --- model versions ------------------------------------------------------------------------
def _version_number(body: dict[str, Any]) -> int:
    raw = body.get("version")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if not isinstance(raw, str) or not raw.strip().isdigit() or len(raw) > 9:
        raise invalid(f"Parameter 'version' must be an integer, got {str(raw)[:50]!r}.")
    return int(raw)


def version_row(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any]
) -> tuple[RegisteredModel, ModelVersion]:
    model = registered_model_row(session, principal, scope, _model_name(body))
    number = _version_number(body)
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.number == number)
    )
    if row is None:
        raise missing(f"Model Version (name={model.name}, version={number}) not found")
    return model, row


def semantic_version(session: Session, model: RegisteredModel, number: int) -> str:
    """``N.0.0`` for MLflow's version N, or its next free patch when that is taken."""
    taken = set(
        session.scalars(
            select(ModelVersion.version).where(
                ModelVersion.model_id == model.id, ModelVersion.version.like(f"{number}.0.%")
            )
        )
    )
    patch = 0
    while f"{number}.0.{patch}" in taken:
        patch += 1
    return f"{number}.0.{patch}"


@dataclass
class PreparedVersion:
    """What registering needs, found (and the model file copied) before the write
    transaction, so no lock is held while a large file is copied."""

    model_id: str
    name: str
    source: str
    run_id: str | None
    logged_model_id: str | None
    description: str | None
    tags: list[tuple[str, str]]
    stored: StoredObject | None
    detected: ModelFormat | None
    framework: str | None


MAX_MLMODEL_BYTES = 1024 * 1024
FRAMEWORKS = {
    "sklearn": "scikit-learn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnx",
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
    "keras": "keras",
}


def main_model_file(mlmodel: bytes) -> tuple[str | None, str | None]:
    """(the model file's path, the framework) named in an ``MLmodel`` file: the
    ``python_function`` flavor's ``model_path``, else a flavor's own file field. Read as
    plain YAML data (``safe_load``); nothing in it is imported or run."""
    try:
        document = yaml.safe_load(mlmodel)
    except yaml.YAMLError:
        return None, None
    flavors = document.get("flavors") if isinstance(document, dict) else None
    if not isinstance(flavors, dict):
        return None, None
    framework = next((FRAMEWORKS[name] for name in flavors if name in FRAMEWORKS), None)
    candidates: list[Any] = []
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, dict):
        candidates.append(pyfunc.get("model_path"))
    for name, flavor in flavors.items():
        if isinstance(flavor, dict) and name != "python_function":
            candidates += [
                flavor.get("pickled_model"),
                flavor.get("model_path"),
                flavor.get("data"),
                flavor.get("model_data"),
            ]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return posixpath.normpath(candidate), framework
    return None, framework


def _source_files(
    session: Session,
    principal: Principal,
    scope: Scope,
    source: str,
    logged_model_id: str | None,
    run_id: str | None,
    check_path: Any,
) -> tuple[dict[str, tuple[str, int]], str | None, str | None]:
    """(files by path relative to the model directory, logged model id, run id) of a
    version's source: a logged model (``models:/<id>`` or ``model_id``), or a directory
    of run artifacts (``mlflow-artifacts:/<exp>/<run>/artifacts/<dir>`` or
    ``runs:/<run>/<dir>``). Other sources register without a file."""
    if logged_model_id is None and source.startswith("models:/"):
        candidate = source.removeprefix("models:/").strip("/")
        if "/" not in candidate and "@" not in candidate:
            logged_model_id = candidate
    if logged_model_id:
        model, _ = get_logged_model_row(session, principal, scope, logged_model_id, "read")
        files = {path: (key, size) for path, size, key in _files_of(session, None, model, "")}
        return files, model.id, run_id or model.source_run_id
    place = None
    if source.startswith("mlflow-artifacts:/"):
        place = artifact_place(source.removeprefix("mlflow-artifacts:").lstrip("/"), check_path)
    elif source.startswith("runs:/"):
        found_run, _, inner = source.removeprefix("runs:/").partition("/")
        experiment, _ = get_run_row(session, principal, scope, found_run, "read")
        place = artifact_place(f"{experiment.id}/{found_run}/artifacts/{inner}".rstrip("/"), check_path)
    if place is None:
        return {}, None, run_id
    _, run, model = artifact_owner(session, principal, scope, place, "read")
    prefix = f"{place.path}/" if place.path else ""
    files = {
        path[len(prefix) :]: (key, size)
        for path, size, key in _files_of(session, run, model, place.path)
        if path.startswith(prefix)
    }
    return files, model.id if model else None, run.id if run else run_id


SOURCE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_own_source(source: str) -> bool:
    """Whether ``source`` is a location this server hands out and serves itself: a
    logged or registered model (``models:/…``), a run's artifacts (``runs:/…``) or the
    artifact store behind this server (``mlflow-artifacts:/…``), never with a host
    (``scheme://host/…`` would send clients to another server)."""
    return source.startswith(SOURCE_PREFIXES) and not source.startswith(
        tuple(prefix + "/" for prefix in SOURCE_PREFIXES)
    )


def checked_source(source: str) -> str:
    """A version's ``source``, refused unless Maestro serves it (``is_own_source``): the
    MLflow client of whoever loads the version downloads from its source, so a file
    path, a bucket or another server there would make them read whatever it names.
    Maestro never reads a source itself; it only looks up the runs, artifacts and logged
    models its own URIs name, with the caller's access."""
    if source and not is_own_source(source):
        raise invalid(
            f"Invalid source {source[:100]!r}: a model version's source is a models:/, runs:/ or "
            "mlflow-artifacts:/ URI of this server."
        )
    return source


def prepare_version(
    session: Session,
    principal: Principal,
    scope: Scope,
    body: dict[str, Any],
    store: ArtifactStore,
    max_bytes: int,
    check_path: Any,
) -> PreparedVersion:
    model = registered_model_row(session, principal, scope, _model_name(body))
    model = registry.get_visible_model(session, principal, model.id, "write")
    source = checked_source(text(body, "source", required=False, max_length=1000) or "")
    run_id = text(body, "run_id", required=False, max_length=ID_MAX_LENGTH)
    if run_id:
        get_run_row(session, principal, scope, run_id, "read")
    description = checked(
        _DESCRIPTION, text(body, "description", required=False, max_length=2000) or "", "description"
    )
    tags = [
        _registry_tag(key, value)
        for key, value in key_values(entries(body, "tags", limit=100), "tags").items()
    ]
    files, logged_model_id, run_id = _source_files(
        session,
        principal,
        scope,
        source,
        text(body, "model_id", required=False, max_length=40),
        run_id,
        check_path,
    )
    stored = detected = framework = None
    if "MLmodel" in files:
        key, size = files["MLmodel"]
        if size <= MAX_MLMODEL_BYTES:
            main, framework = main_model_file(store.read_bytes(key))
            if main is not None and main in files:
                stored, detected = copy_model_file(
                    store, files[main][0], registry.model_files_prefix(model), max_bytes
                )
    return PreparedVersion(
        model.id,
        model.name,
        source,
        run_id,
        logged_model_id,
        description or None,
        tags,
        stored,
        detected,
        framework,
    )


def copy_model_file(
    store: ArtifactStore, key: str, prefix: str, max_bytes: int
) -> tuple[StoredObject, ModelFormat]:
    """A copy of the model file for the registry (which owns it from then on), with its
    format recognised from its bytes alone."""
    stored = store.put_stream(prefix, store.iter_bytes(key), max_bytes=max_bytes)
    try:
        with store.open(stored.key) as file:
            head = file.read(64 * 1024)
            detected = detect_format(head, file, stored.size)
    except BaseException:
        store.delete(stored.key)
        raise
    return stored, detected


def create_version(
    session: Session,
    principal: Principal,
    scope: Scope,
    prepared: PreparedVersion,
    store: ArtifactStore,
    settings: Settings | None = None,
) -> dict:
    # The file is loaded in an isolated process first, before this transaction reads or
    # writes anything: the check takes seconds, and a refused file is refused (422) here.
    load_check = None
    if settings is not None and prepared.stored is not None:
        load_check = registry.check_model_file(settings, store, prepared.stored, prepared.detected)
    model = registry.get_visible_model(session, principal, prepared.model_id, "write")
    session.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    number = registry.next_number(session, model)
    version = semantic_version(session, model, number)
    if prepared.stored is not None:
        key = prepared.stored.key
        run_after_rollback(session, lambda: store.delete(key))
    row = registry.create_version(
        session,
        principal,
        model.id,
        VersionCreate(version=version, description=prepared.description),
        prepared.stored,
        prepared.detected,
        number=number,
        lineage={
            "source": prepared.source or None,
            "run_id": prepared.run_id,
            "logged_model_id": prepared.logged_model_id,
        },
        settings=settings,
        store=store,
        load_check=load_check,
    )
    if prepared.framework and not model.framework:
        model.framework = prepared.framework
    for key, value in prepared.tags:
        registry.set_version_tag(session, principal, model.id, row.version, key, value)
    session.flush()
    return {"model_version": version_dicts(session, model, [row])[0]}


def get_version(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    return {"model_version": version_dicts(session, model, [row])[0]}


def update_version(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry.get_visible_model(session, principal, model.id, "write")
    if "description" in body:
        description = checked(
            _DESCRIPTION, text(body, "description", required=False, max_length=2000) or "", "description"
        )
        row.description = description or None
        session.flush()
        audit.describe(
            session,
            resource_type="model_versions",
            resource_id=row.id,
            organization_id=model.organization_id,
            changed=["description"],
        )
    return {"model_version": version_dicts(session, model, [row])[0]}


def delete_version(
    session: Session, principal: Principal, scope: Scope, body: dict[str, Any], store: ArtifactStore
) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry.delete_version(session, principal, model.id, row.version, store)
    return {}


def transition_stage(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    stage = _stage(required_text(body, "stage", max_length=50))
    row = registry.change_stage(
        session,
        principal,
        model.id,
        row.version,
        StageChange(stage=stage, archive_existing_versions=boolean(body, "archive_existing_versions")),
    )
    return {"model_version": version_dicts(session, model, [row])[0]}


def download_uri(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    _, row = version_row(session, principal, scope, body)
    if row.logged_model_id:
        logged = session.get(LoggedModel, row.logged_model_id)
        if logged is not None:
            return {"artifact_uri": logged_model_uri(logged)}
    source = row.source or ""
    if source.startswith("runs:/"):
        found_run, _, inner = source.removeprefix("runs:/").partition("/")
        run = session.get(Run, found_run)
        if run is not None and run.organization_id == row.organization_id:
            return {"artifact_uri": f"{run_uri(run.experiment_id, run.id)}/{inner}".rstrip("/")}
    if not source:
        raise missing(
            f"Version {row.number} was uploaded through Maestro's API and has no MLflow model directory; "
            f"download its file from /api/v1/models/{row.model_id}/versions/{row.version}/file"
        )
    if not is_own_source(source):
        # Stored before sources were checked: never send a client to another location.
        raise missing(
            f"Version {row.number} names a source this server does not serve; "
            f"download its file from /api/v1/models/{row.model_id}/versions/{row.version}/file"
        )
    return {"artifact_uri": source}


def search_versions(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    project = registry.get_project_for_models(session, principal, scope.required(), "read")
    limit, offset = _page(body, 10_000, 200_000)
    statement = (
        select(ModelVersion, RegisteredModel)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(RegisteredModel.project_id == project.id)
    )
    fields = {
        "name": RegisteredModel.name,
        "run_id": ModelVersion.run_id,
        "source_path": ModelVersion.source,
        "version_number": ModelVersion.number,
        "model_id": ModelVersion.logged_model_id,
    }
    for condition in _filter(body, filters.MODEL_VERSIONS):
        if condition.kind == "tag":
            statement = statement.where(
                select(RegistryVersionTag.id)
                .where(
                    RegistryVersionTag.version_id == ModelVersion.id,
                    RegistryVersionTag.key == condition.key,
                    _compare(RegistryVersionTag.value, condition.operator, condition.value),
                )
                .exists()
            )
        else:
            statement = statement.where(_compare(fields[condition.key], condition.operator, condition.value))
    ordering = _order(
        strings(body, "order_by", limit=5),
        {
            "name": RegisteredModel.name,
            "version_number": ModelVersion.number,
            "creation_timestamp": ModelVersion.created_at,
        },
        [RegisteredModel.name.asc(), ModelVersion.number.desc()],
    )
    rows = session.execute(statement.order_by(*ordering).offset(offset).limit(limit + 1)).all()
    page, token = _paged(list(rows), limit, offset)
    tags, aliases = _version_extras(session, [version.id for version, _ in page])
    versions, token = _within_budget(
        [_version_dict(version, model, tags, aliases) for version, model in page], offset, token
    )
    answer: dict[str, Any] = {"model_versions": versions}
    if token:
        answer["next_page_token"] = token
    return answer


def set_version_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    key, value = _registry_tag(body.get("key"), body.get("value"))
    registry.set_version_tag(session, principal, model.id, row.version, key, value)
    return {}


def delete_version_tag(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    key = required_text(body, "key", max_length=250)
    try:
        registry.delete_version_tag(session, principal, model.id, row.version, key)
    except NotFound as exc:
        raise missing(f"No tag with key {key[:100]!r} on version {row.number} of {model.name}") from exc
    return {}


def _alias(body: dict[str, Any]) -> str:
    alias = required_text(body, "alias", max_length=60)
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise invalid(
            f"Invalid alias {alias[:60]!r}: lowercase letters, digits, '_' and '-', starting with a letter."
        )
    return alias


def set_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model, row = version_row(session, principal, scope, body)
    registry.set_alias(session, principal, model.id, _alias(body), row.version)
    return {}


def get_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    alias = _alias(body)
    try:
        _, row = registry.resolve_alias(session, principal, model.id, alias)
    except NotFound as exc:
        raise missing(f"Registered model alias {alias} not found.") from exc
    return {"model_version": version_dicts(session, model, [row])[0]}


def delete_alias(session: Session, principal: Principal, scope: Scope, body: dict[str, Any]) -> dict:
    model = registered_model_row(session, principal, scope, _model_name(body))
    alias = _alias(body)
    try:
        registry.delete_alias(session, principal, model.id, alias)
    except NotFound as exc:
        raise missing(f"Registered model alias {alias} not found.") from exc
    return {}
