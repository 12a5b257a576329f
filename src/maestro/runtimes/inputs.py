"""Input schemas and the turning of request rows into the float matrix every runtime takes.

Rows arrive as a list of objects of named features, a list of lists, a flat tensor
with a shape, or a 2-D numpy array. Validation is vectorised: the common case (every
row well formed) costs a few C-level passes over the values, and only a body that is
wrong is walked value by value, to name the first offending row and feature. Nothing
here builds a pydantic model per row; a 1,000-row body would otherwise spend most of
its time in validation.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from maestro.runtimes.errors import InputError, ModelLoadError

MAX_MAGNITUDE = 1e300  # larger values are refused: no real feature is that big, and they overflow
MAX_FEATURES = 100_000
MAX_FEATURE_NAME = 200
FEATURE_TYPES = ("float", "integer", "boolean")
_TYPE_ALIASES = {
    **dict.fromkeys(("float", "double", "number", "float16", "float32", "float64", "fp16", "fp32"), "float"),
    **dict.fromkeys(("fp64", "real", "numeric"), "float"),
    **dict.fromkeys(("integer", "int", "long", "int8", "int16", "int32", "int64"), "integer"),
    **dict.fromkeys(("uint8", "uint16", "uint32", "uint64"), "integer"),
    **dict.fromkeys(("boolean", "bool"), "boolean"),
}
_FLOATS = frozenset({float, np.float64, np.float32, np.float16})
_INTEGERS = frozenset({int, np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8})
_BOOLS = frozenset({bool, np.bool_})
_NUMBERS = _FLOATS | _INTEGERS
_NONE = frozenset({type(None)})
_NUMERIC_KINDS = frozenset("fiub")


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    type: str = "float"
    minimum: float | None = None  # plausible range, used to build validation samples
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type}


class InputSchema:
    """The named, typed features a model takes, in the order its matrix columns take them."""

    __slots__ = ("_getter", "bool_columns", "features", "int_columns", "names", "source", "width")

    def __init__(self, features: Sequence[Feature], source: str) -> None:
        if not features:
            raise ValueError("a model takes at least one feature")
        self.features = tuple(features)
        self.source = source  # "model_schema", "model" or "generated"
        self.names = tuple(feature.name for feature in self.features)
        self.width = len(self.features)
        self.int_columns = np.array(
            [i for i, f in enumerate(self.features) if f.type == "integer"], dtype=np.intp
        )
        self.bool_columns = np.array(
            [i for i, f in enumerate(self.features) if f.type == "boolean"], dtype=np.intp
        )
        if self.width == 1:
            only = self.names[0]
            self._getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] = lambda row: (row[only],)
        else:
            self._getter = operator.itemgetter(*self.names)

    @classmethod
    def generated(cls, width: int) -> InputSchema:
        return cls([Feature(f"f{i}") for i in range(width)], "generated")

    @classmethod
    def from_names(
        cls, names: Sequence[str], types: Sequence[str] | None = None, source: str = "model"
    ) -> InputSchema:
        types = types or ["float"] * len(names)
        return cls([Feature(str(name), kind) for name, kind in zip(names, types, strict=True)], source)

    @property
    def has_booleans(self) -> bool:
        return self.bool_columns.size > 0

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [feature.to_dict() for feature in self.features], "source": self.source}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InputSchema) and self.features == other.features

    def __hash__(self) -> int:
        return hash(self.features)

    def __repr__(self) -> str:
        return f"InputSchema({self.width} features from {self.source})"


# --- the version's declared schema --------------------------------------------------------
def _invalid_schema(message: str) -> ModelLoadError:
    return ModelLoadError("invalid_schema", f"The version's model_schema is not usable: {message}")


def _bound(entry: Mapping[str, Any], key: str, name: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) not in _NUMBERS or not math.isfinite(value):
        raise _invalid_schema(f"feature {name!r}: {key} must be a finite number")
    return float(value)


def parse_model_schema(model_schema: Mapping[str, Any] | None) -> InputSchema | None:
    """The input schema a version declares in ``model_schema["inputs"]``
    (``[{"name": "age", "type": "integer"}, …]``), or None when it declares none.
    Types are float (double, number), integer (int, long) or boolean; optional ``min``
    and ``max`` give a plausible range."""
    if not model_schema or model_schema.get("inputs") is None:
        return None
    inputs = model_schema["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise _invalid_schema('"inputs" must be a non-empty list of {"name", "type"} objects')
    if len(inputs) > MAX_FEATURES:
        raise _invalid_schema(f"at most {MAX_FEATURES} inputs")
    features, seen = [], set()
    for position, entry in enumerate(inputs):
        if not isinstance(entry, dict):
            raise _invalid_schema(f"input {position} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_FEATURE_NAME:
            raise _invalid_schema(f"input {position} needs a name of 1 to {MAX_FEATURE_NAME} characters")
        if name in seen:
            raise _invalid_schema(f"feature {name!r} appears twice")
        seen.add(name)
        declared = entry.get("type", "float")
        kind = _TYPE_ALIASES.get(declared.lower()) if isinstance(declared, str) else None
        if kind is None:
            raise _invalid_schema(
                f"feature {name!r} has type {declared!r}; served models take numeric features only "
                f"({', '.join(FEATURE_TYPES)})"
            )
        minimum, maximum = _bound(entry, "min", name), _bound(entry, "max", name)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise _invalid_schema(f"feature {name!r}: min is greater than max")
        features.append(Feature(name, kind, minimum, maximum))
    return InputSchema(features, "model_schema")


def schema_classes(model_schema: Mapping[str, Any] | None) -> list[Any] | None:
    """Class labels a version declares (``model_schema["classes"]``), for formats whose
    file stores only class indices (XGBoost, LightGBM)."""
    classes = (model_schema or {}).get("classes")
    if classes is None:
        return None
    if not isinstance(classes, list) or not classes or len(classes) != len({str(c) for c in classes}):
        raise _invalid_schema('"classes" must be a non-empty list of distinct labels')
    if not all(type(c) in (str, int) for c in classes):
        raise _invalid_schema('"classes" must hold strings or integers')
    return classes


# --- rows to a matrix ----------------------------------------------------------------------
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) in _BOOLS:
        return "true/false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if type(value) in _INTEGERS and abs(value) > MAX_MAGNITUDE:
        return "a number beyond the accepted magnitude"  # and too long to print
    if type(value) in _NUMBERS:
        return repr(value)
    return f"a {type(value).__name__}"


_EXPECTED = {"float": "a number", "integer": "an integer", "boolean": "true or false"}


def _acceptable(value: Any, kind: str, allow_nan: bool) -> bool:
    kind_of = type(value)
    if value is None:
        return allow_nan
    if kind == "boolean":
        return kind_of in _BOOLS or kind_of in _NUMBERS
    return kind_of in _NUMBERS


class _Rows:
    """Where an error is: the field path ``<prefix><row>.<feature>`` routes report."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def error(
        self, reason: str, message: str, row: int | None = None, feature: str | None = None
    ) -> InputError:
        if row is None:
            field = self.prefix.rstrip(".") or None
        else:
            field = f"{self.prefix}{row}" + (f".{feature}" if feature is not None else "")
        return InputError(reason, message, row=row, feature=feature, field=field)


def _name(feature: str) -> str:
    return repr(feature if len(feature) <= 100 else feature[:100] + "…")


def _bad_type(
    values: Sequence[Sequence[Any]], schema: InputSchema, allow_nan: bool, where: _Rows
) -> InputError:
    types = [feature.type for feature in schema.features]
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not _acceptable(value, types[j], allow_nan):
                name = schema.names[j]
                return where.error(
                    "wrong_type",
                    f"Row {i}, feature {_name(name)}: expected {_EXPECTED[types[j]]}, got {_describe(value)}",
                    i,
                    name,
                )
    return where.error("wrong_type", "The rows hold values that are not numbers")


def _values_from_objects(rows: Sequence[Mapping[str, Any]], schema: InputSchema, where: _Rows) -> list[tuple]:
    width = schema.width
    if set(map(len, rows)) == {width}:
        try:
            return list(map(schema._getter, rows))
        except KeyError:
            pass
    known = set(schema.names)
    for i, row in enumerate(rows):
        missing = next((name for name in schema.names if name not in row), None)
        if missing is not None:
            raise where.error("missing", f"Row {i}: feature {_name(missing)} is missing", i, missing)
        extra = next((key for key in row if key not in known), None)
        if extra is not None:
            raise where.error(
                "extra", f"Row {i}: {_name(str(extra))} is not a feature of this model", i, str(extra)
            )
    raise where.error("missing", "The rows do not match the model's features")  # pragma: no cover


def _check_widths(rows: Sequence[Sequence[Any]], schema: InputSchema, where: _Rows) -> None:
    if set(map(len, rows)) == {schema.width}:
        return
    for i, row in enumerate(rows):
        if len(row) != schema.width:
            raise where.error(
                "width", f"Row {i} has {len(row)} values; the model takes {schema.width} features", i
            )


def check_values(
    matrix: np.ndarray, schema: InputSchema, *, allow_nan: bool = False, prefix: str = ""
) -> None:
    """Refuse NaN (unless allowed), ±inf, magnitudes over 1e300, non-integral values of
    integer features and anything but 0/1 for boolean features: vectorised, naming the
    first offending row and feature."""
    where = _Rows(prefix)
    ok = np.abs(matrix) <= MAX_MAGNITUDE
    if allow_nan:
        ok |= np.isnan(matrix)
    if not ok.all():
        i, j = (int(v) for v in np.argwhere(~ok)[0])
        value, name = float(matrix[i, j]), schema.names[j]
        if math.isnan(value):
            reason, what = "nan", "NaN is not accepted; every feature needs a finite number"
        elif math.isinf(value):
            reason, what = "infinite", "infinite values are not accepted"
        else:
            reason, what = "too_large", f"{value:g} is beyond the accepted magnitude ({MAX_MAGNITUDE:g})"
        raise where.error(reason, f"Row {i}, feature {_name(name)}: {what}", i, name)
    for columns, reason, test, what in (
        (schema.int_columns, "not_integer", lambda c: c == np.round(c), "expected an integer"),
        (schema.bool_columns, "not_boolean", lambda c: (c == 0) | (c == 1), "expected true or false"),
    ):
        if columns.size:
            block = matrix[:, columns]
            good = test(block) | np.isnan(block)
            if not good.all():
                i, k = (int(v) for v in np.argwhere(~good)[0])
                name = schema.names[int(columns[k])]
                raise where.error(
                    reason, f"Row {i}, feature {_name(name)}: {what}, got {block[i, k]:g}", i, name
                )


def _finish(
    values: Sequence[Sequence[Any]], schema: InputSchema, allow_nan: bool, where: _Rows
) -> np.ndarray:
    seen = set(map(type, itertools.chain.from_iterable(values)))
    allowed = _NUMBERS | (_NONE if allow_nan else frozenset())
    if not seen <= allowed:
        if not schema.has_booleans or not seen <= allowed | _BOOLS:
            raise _bad_type(values, schema, allow_nan, where)
        bool_columns = set(schema.bool_columns.tolist())
        for j, column in enumerate(zip(*values, strict=True)):
            if j not in bool_columns and not _BOOLS.isdisjoint(map(type, column)):
                raise _bad_type(values, schema, allow_nan, where)
    try:
        matrix = np.array(values, dtype=np.float64)
    except OverflowError:
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if type(value) in _INTEGERS and abs(value) > MAX_MAGNITUDE:
                    name = schema.names[j]
                    raise where.error(
                        "too_large",
                        f"Row {i}, feature {_name(name)}: the value is beyond the accepted magnitude",
                        i,
                        name,
                    ) from None
        raise
    check_values(matrix, schema, allow_nan=allow_nan, prefix=where.prefix)
    return matrix


def _from_array(
    array: np.ndarray, schema: InputSchema, allow_nan: bool, max_rows: int | None, where: _Rows
) -> np.ndarray:
    if array.ndim != 2:
        raise where.error(
            "shape", f"Expected a 2-D array of (rows, {schema.width} features), got {array.ndim}-D"
        )
    if array.shape[0] == 0:
        raise where.error("empty", "At least one row is needed")
    if max_rows is not None and array.shape[0] > max_rows:
        raise where.error("too_many_rows", f"At most {max_rows} rows per request, got {array.shape[0]}")
    if array.shape[1] != schema.width:
        raise where.error(
            "width", f"Rows have {array.shape[1]} values; the model takes {schema.width} features"
        )
    if array.dtype.kind not in _NUMERIC_KINDS:
        return _finish(array.tolist(), schema, allow_nan, where)
    matrix = np.ascontiguousarray(array, dtype=np.float64)
    check_values(matrix, schema, allow_nan=allow_nan, prefix=where.prefix)
    return matrix


def to_matrix(
    rows: Any,
    schema: InputSchema,
    *,
    allow_nan: bool = False,
    max_rows: int | None = None,
    prefix: str = "",
) -> np.ndarray:
    """A C-contiguous float64 matrix of ``rows``: a list of objects keyed by feature
    name, a list of lists in the schema's order, or a 2-D numpy array. Raises
    ``InputError`` naming the row and feature of the first problem; ``prefix`` is put
    before ``<row>.<feature>`` in the error's field (e.g. ``"instances."``)."""
    where = _Rows(prefix)
    if isinstance(rows, np.ndarray):
        return _from_array(rows, schema, allow_nan, max_rows, where)
    if not isinstance(rows, list | tuple):
        raise where.error("not_rows", "Expected a list of rows")
    if not rows:
        raise where.error("empty", "At least one row is needed")
    if max_rows is not None and len(rows) > max_rows:
        raise where.error("too_many_rows", f"At most {max_rows} rows per request, got {len(rows)}")
    row_types = set(map(type, rows))
    if row_types == {dict}:
        values: Sequence[Sequence[Any]] = _values_from_objects(rows, schema, where)
    elif row_types <= {list, tuple}:
        _check_widths(rows, schema, where)
        values = rows
    else:
        raise _odd_row(rows, schema, where)
    return _finish(values, schema, allow_nan, where)


def _odd_row(rows: Sequence[Any], schema: InputSchema, where: _Rows) -> InputError:
    """The first row that is neither an object nor a list, else the first whose form
    differs from row 0's: one request's rows all take the same form."""
    for i, row in enumerate(rows):
        if type(row) not in (dict, list, tuple):
            return where.error(
                "not_a_row",
                f"Row {i} must be an object of named features or a list of {schema.width} numbers, "
                f"got {_describe(row)}",
                i,
            )
    objects = type(rows[0]) is dict
    i = next(i for i, row in enumerate(rows) if (type(row) is dict) != objects)
    return where.error(
        "mixed_rows",
        f"Row {i} is {_describe(rows[i])} but row 0 is {_describe(rows[0])}; every row of a request "
        "must be an object of named features, or every row a list of values",
        i,
    )


def matrix_from_json(
    body: bytes | str,
    schema: InputSchema,
    *,
    key: str | None = None,
    allow_nan: bool = False,
    max_rows: int | None = None,
) -> np.ndarray:
    """The fast path from a request body: orjson straight to the rows (under ``key``
    when given, e.g. ``"instances"``) and on to the matrix, without pydantic."""
    where = _Rows("")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise where.error("invalid_json", f"The body is not valid JSON: {exc}") from None
    if key is not None:
        if not isinstance(parsed, dict) or key not in parsed:
            raise InputError("missing", f"The body needs a {key!r} field", field=key)
        parsed = parsed[key]
    return to_matrix(parsed, schema, allow_nan=allow_nan, max_rows=max_rows, prefix=f"{key}." if key else "")


def columns_to_matrix(
    columns: Any,
    data: Any,
    schema: InputSchema,
    *,
    allow_nan: bool = False,
    max_rows: int | None = None,
    prefix: str = "data.",
) -> np.ndarray:
    """A table given as column names plus rows (MLflow's ``dataframe_split``): the
    columns may come in any order but must be exactly the model's features."""
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InputError("not_rows", "columns must be a list of feature names", field="columns")
    known = {feature.name: feature for feature in schema.features}
    extra = next((c for c in columns if c not in known), None)
    if extra is not None:
        raise InputError(
            "extra", f"{_name(extra)} is not a feature of this model", feature=extra, field="columns"
        )
    position: dict[str, int] = {}
    for index, column in enumerate(columns):
        if column in position:
            raise InputError(
                "extra", f"Column {_name(column)} appears twice", feature=column, field="columns"
            )
        position[column] = index
    missing = next((name for name in schema.names if name not in position), None)
    if missing is not None:
        raise InputError("missing", f"Feature {_name(missing)} is missing", feature=missing, field="columns")
    given = InputSchema([known[c] for c in columns], schema.source)
    matrix = to_matrix(data, given, allow_nan=allow_nan, max_rows=max_rows, prefix=prefix)
    order = [position[name] for name in schema.names]
    return np.ascontiguousarray(matrix[:, order])


def tensor_to_matrix(
    data: Any,
    shape: Any,
    schema: InputSchema,
    *,
    allow_nan: bool = False,
    max_rows: int | None = None,
    prefix: str = "data.",
) -> np.ndarray:
    """A tensor as the Open Inference Protocol sends it: ``data`` flat (or nested) in
    row-major order and ``shape`` ``[rows, features]``."""
    if not isinstance(shape, list) or len(shape) != 2 or not all(type(n) is int and n >= 0 for n in shape):
        raise InputError("shape", "shape must be [rows, features]", field="shape")
    rows, width = shape
    if width != schema.width:
        raise InputError(
            "width", f"shape has {width} features; the model takes {schema.width}", field="shape"
        )
    if not isinstance(data, list):
        raise InputError("not_rows", "data must be a list of numbers", field=prefix.rstrip("."))
    if data and isinstance(data[0], list):
        matrix = to_matrix(data, schema, allow_nan=allow_nan, max_rows=max_rows, prefix=prefix)
        if matrix.shape[0] != rows:
            raise InputError("shape", f"data holds {matrix.shape[0]} rows; shape says {rows}", field="shape")
        return matrix
    if len(data) != rows * width:
        raise InputError(
            "shape", f"data holds {len(data)} values; shape {shape} needs {rows * width}", field="shape"
        )
    return to_matrix(
        [data[start : start + width] for start in range(0, len(data), width)],
        schema,
        allow_nan=allow_nan,
        max_rows=max_rows,
        prefix=prefix,
    )


# --- validation and warm-up samples -------------------------------------------------------------
def sample_matrix(
    schema: InputSchema,
    rows: int,
    *,
    ranges: Sequence[tuple[float, float] | None] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Random rows within plausible ranges: a feature's declared min/max, else the hint
    in ``ranges`` (what the model itself reveals, such as split thresholds), else ±3."""
    rng = np.random.default_rng(seed)
    columns = []
    for j, feature in enumerate(schema.features):
        hint = ranges[j] if ranges is not None and j < len(ranges) else None
        low, high = hint if hint is not None else (-3.0, 3.0)
        low = feature.minimum if feature.minimum is not None else low
        high = feature.maximum if feature.maximum is not None else high
        if feature.type == "boolean":
            columns.append(rng.integers(0, 2, rows).astype(np.float64))
        elif feature.type == "integer":
            columns.append(rng.integers(math.floor(low), math.floor(high) + 1, rows).astype(np.float64))
        else:
            columns.append(rng.uniform(low, high, rows) if high > low else np.full(rows, low))
    return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)
