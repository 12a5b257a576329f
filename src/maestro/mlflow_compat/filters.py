"""MLflow's search filters for experiments, logged models, registered models and model
versions, in the one search language (``tracking.search``): this module is only the
table of the fields each search takes and their types. ``tracking.search.parse_conditions``
reads a filter (conditions joined by AND, in time linear in its length) and checks each
condition against these types; a malformed filter is a ``FilterError``, which the API
answers as MLflow's ``INVALID_PARAMETER_VALUE``."""

from __future__ import annotations

from maestro.tracking.search import (
    MAX_FILTER_LENGTH,
    OPERATORS_FOR,
    FieldType,
)
from maestro.tracking.search import FieldCondition as Condition
from maestro.tracking.search import SearchError as FilterError
from maestro.tracking.search import parse_conditions as parse

EXPERIMENTS: dict[str, FieldType] = {"name": "text", "creation_time": "time", "last_update_time": "time"}
LOGGED_MODELS: dict[str, FieldType] = {
    "name": "text",
    "status": "text",
    "source_run_id": "text",
    "model_type": "text",
}  # and no tags
REGISTERED_MODELS: dict[str, FieldType] = {"name": "text"}
MODEL_VERSIONS: dict[str, FieldType] = {
    "name": "text",
    "run_id": "text",
    "source_path": "text",
    "version_number": "integer",
    "model_id": "text",
}

__all__ = [
    "EXPERIMENTS",
    "LOGGED_MODELS",
    "MAX_FILTER_LENGTH",
    "MODEL_VERSIONS",
    "OPERATORS_FOR",
    "REGISTERED_MODELS",
    "Condition",
    "FieldType",
    "FilterError",
    "parse",
]
