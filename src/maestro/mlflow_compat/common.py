"""What every MLflow endpoint shares: reading request values, converting to MLflow's
units and names, the project a request acts in (``Scope``), and page tokens."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from maestro.api.mlflow_errors import invalid, missing
from maestro.api.pagination import TokenError, decode_token, encode_token
from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN
from maestro.registry.models import Stage
from maestro.registry.schemas import (
    Description,
    ModelName,
    TagKey,
    TagValue,
)
from maestro.tracking.models import RunStatus
from maestro.tracking.schemas import (
    INT64_MAX,
    INT64_MIN,
    ExperimentName,
    ExperimentTagValue,
    Key,
    Params,
    RunName,
    Tags,
)


# --- errors --------------------------------------------------------------------------------
def _validation_message(exc: ValidationError, what: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"Invalid value for {what}{f' ({where})' if where else ''}: {first.get('msg', 'invalid')}"


# --- request values ------------------------------------------------------------------------
ID_RE = re.compile(ID_PATTERN)


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
    if len(value) > ID_MAX_LENGTH or not ID_RE.fullmatch(value):
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
            number = int(value.strip())
        except ValueError:
            raise invalid(
                f"Invalid value {value[:50]!r} for parameter '{name}': expected an integer."
            ) from None
        value = number
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


TAGS_TYPE = TypeAdapter(Tags)
PARAMS_TYPE = TypeAdapter(Params)
_KEY = TypeAdapter(Key)
EXPERIMENT_TAGS_TYPE = TypeAdapter(dict[Key, ExperimentTagValue])
EXPERIMENT_NAME_TYPE = TypeAdapter(ExperimentName)
RUN_NAME_TYPE = TypeAdapter(RunName)
MODEL_NAME_TYPE = TypeAdapter(ModelName)
REGISTRY_TAG_KEY_TYPE = TypeAdapter(TagKey)
REGISTRY_TAG_VALUE_TYPE = TypeAdapter(TagValue)
DESCRIPTION_TYPE = TypeAdapter(Description)


def checked(adapter: TypeAdapter[Any], value: Any, what: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise invalid(_validation_message(exc, what)) from exc


# --- conversions ---------------------------------------------------------------------------
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Keyed by a run's stored status, which reads back as plain text.
RUN_STATUS: dict[str, str] = {
    RunStatus.running: "RUNNING",
    RunStatus.scheduled: "SCHEDULED",
    RunStatus.completed: "FINISHED",
    RunStatus.failed: "FAILED",
    RunStatus.killed: "KILLED",
}
FROM_MLFLOW_STATUS = {name: RunStatus(status) for status, name in RUN_STATUS.items()}
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


def encode_offset(offset: int) -> str:
    return encode_token(["o", offset])


def decode_offset(token: str | None) -> int:
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
    if project_id is not None and (len(project_id) > ID_MAX_LENGTH or not ID_RE.fullmatch(project_id)):
        raise missing("No such project")
    return Scope(project_id)
