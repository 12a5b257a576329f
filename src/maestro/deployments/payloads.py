"""The stored form of an answered request's prediction log (``PredictionLog.payload``),
and the shape of a request's answers, which the response and the log's reader share.

The inputs are float64 already and the probabilities are arrays: kept as their raw
bytes they take about a third of the room JSON did (a 1,000-row, 4-feature request
with two classes: about 50 KB against 170 KB), and the writer copies them instead of
formatting a number at a time. Layout, little-endian::

    b"MPL1"                      magic and format version
    uint32                       length of the header
    header                       JSON: {"columns": [feature, ...], "rows": n,
                                        "predictions": [value, ...] (n of them, as answered),
                                        "classes": [name, ...] or null}
    n x len(columns) float64     the input matrix, C order, a missing value as NaN
    n x len(classes) float64     the probabilities, when ``classes`` is not null

A row's confidence is its largest probability, so it is not stored. ``decode`` trusts
nothing it reads: the magic, the header and every size are checked, and the arrays are
read with an explicit dtype.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

MAGIC = b"MPL1"
_PREFIX = struct.Struct("<4sI")
_FLOAT = np.dtype("<f8")


def answers(values: list[Any], probabilities: np.ndarray | None, classes: Sequence[str] | None) -> list[Any]:
    """One answer per row, as inference responds: ``{"prediction": v}``, and for a
    classifier with probabilities ``"probabilities"`` keyed by class name in class order
    and ``"confidence"``, the largest of them."""
    if probabilities is None or not classes:
        return [{"prediction": value} for value in values]
    rows = probabilities.tolist()
    if len(classes) == 2 and rows and len(rows[0]) == 2:  # a binary classifier: literal dicts, twice as fast
        no, yes = classes
        return [
            {"prediction": value, "probabilities": {no: a, yes: b}, "confidence": b if b > a else a}
            for value, (a, b) in zip(values, rows, strict=True)
        ]
    return [
        {"prediction": value, "probabilities": dict(zip(classes, row, strict=True)), "confidence": top}
        for value, row, top in zip(values, rows, map(max, rows), strict=True)
    ]


@dataclass(frozen=True, slots=True)
class LoggedArrays:
    """A logged request's rows as arrays: what monitoring reads without building a dict
    per row. ``matrix`` holds NaN for a missing value; ``probabilities`` is None for a
    model that gives none (and then ``classes`` too). Decoded arrays are read-only views
    of the stored bytes."""

    columns: tuple[str, ...]
    matrix: np.ndarray  # rows x len(columns), float64
    predictions: list[Any]
    classes: tuple[str, ...] | None
    probabilities: np.ndarray | None  # rows x len(classes), float64

    def inputs(self) -> list[dict[str, Any]]:
        """The rows as records of named features, a missing value as None."""
        rows = self.matrix.tolist()
        if np.isnan(self.matrix).any():
            rows = [[None if value != value else value for value in row] for row in rows]
        return [dict(zip(self.columns, row, strict=True)) for row in rows]

    def outputs(self) -> list[Any]:
        """The answers as the response had them (a value JSON cannot hold as null)."""
        found = answers(self.predictions, self.probabilities, self.classes)
        if self.probabilities is not None and not np.isfinite(self.probabilities).all():
            return orjson.loads(orjson.dumps(found))  # as the response wrote NaN: null
        return found


def encode(
    columns: Sequence[str],
    matrix: np.ndarray,
    predictions: list[Any],
    classes: Sequence[str] | None = None,
    probabilities: np.ndarray | None = None,
) -> bytes:
    """The payload of one answered request (its rows already cut to what is logged)."""
    rows = len(matrix)
    inputs = np.ascontiguousarray(matrix, dtype=_FLOAT)
    if inputs.shape != (rows, len(columns)) or len(predictions) != rows:
        raise ValueError(f"{rows} rows of {len(columns)} features do not match the matrix or the predictions")
    parts: list[Any] = [b"", b"", inputs.data]
    if classes is not None and probabilities is not None:
        probabilities = np.ascontiguousarray(probabilities, dtype=_FLOAT)
        if probabilities.shape != (rows, len(classes)):
            raise ValueError(
                f"probabilities of shape {probabilities.shape} for {rows} rows of {len(classes)} classes"
            )
        parts.append(probabilities.data)
    else:
        classes = None
    header = orjson.dumps(
        {
            "columns": list(columns),
            "rows": rows,
            "predictions": predictions,
            "classes": list(classes) if classes is not None else None,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    parts[0], parts[1] = _PREFIX.pack(MAGIC, len(header)), header
    return b"".join(parts)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"prediction log payload: {what} is not a list of names")
    return tuple(value)


def decode(payload: bytes) -> LoggedArrays:
    """The arrays of a payload ``encode`` wrote; ValueError for anything else."""
    data = memoryview(payload)
    if len(data) < _PREFIX.size:
        raise ValueError(f"prediction log payload: {len(data)} bytes is too short")
    magic, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"prediction log payload: unknown format {bytes(magic)!r}")
    start = _PREFIX.size + header_length
    if start > len(data):
        raise ValueError(f"prediction log payload: a {header_length}-byte header in {len(data)} bytes")
    try:
        header = orjson.loads(data[_PREFIX.size : start])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"prediction log payload: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("prediction log payload: the header is not an object")
    columns = _names(header.get("columns"), "columns")
    classes = None if header.get("classes") is None else _names(header["classes"], "classes")
    rows, predictions = header.get("rows"), header.get("predictions")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError("prediction log payload: the row count is not a count")
    if not isinstance(predictions, list) or len(predictions) != rows:
        raise ValueError(f"prediction log payload: predictions are not a list of {rows}")
    inputs = rows * len(columns)
    outputs = rows * len(classes) if classes is not None else 0
    expected = start + (inputs + outputs) * _FLOAT.itemsize
    if expected != len(data):
        shape = f"{rows} rows of {len(columns)} features" + (
            f" and {len(classes)} classes" if classes else ""
        )
        raise ValueError(f"prediction log payload: {shape} take {expected} bytes, not {len(data)}")
    matrix = np.frombuffer(payload, dtype=_FLOAT, count=inputs, offset=start).reshape(rows, len(columns))
    probabilities = None
    if classes is not None:
        offset = start + inputs * _FLOAT.itemsize
        probabilities = np.frombuffer(payload, dtype=_FLOAT, count=outputs, offset=offset).reshape(
            rows, len(classes)
        )
    return LoggedArrays(columns, matrix, predictions, classes, probabilities)


def from_json(inputs: Any, outputs: Any) -> LoggedArrays:
    """The arrays of a log written as JSON (before the payload): inputs as columns and
    rows or as records, outputs as the response's answers."""
    if isinstance(inputs, dict):
        columns = tuple(str(name) for name in inputs.get("columns") or [])
        rows = inputs.get("rows") or []
    else:
        records = [record for record in inputs or [] if isinstance(record, dict)]
        columns = tuple(dict.fromkeys(name for record in records for name in record))
        rows = [[record.get(name) for name in columns] for record in records]
    matrix = np.array(rows, dtype=_FLOAT).reshape(len(rows), len(columns))
    answered = [output for output in outputs or [] if isinstance(output, dict)]
    predictions = [output.get("prediction") for output in answered]
    first = answered[0].get("probabilities") if answered else None
    classes = tuple(first) if isinstance(first, dict) else None
    probabilities = None
    if classes is not None:
        probabilities = np.array(
            [[_number(output.get("probabilities"), name) for name in classes] for output in answered],
            dtype=_FLOAT,
        ).reshape(len(answered), len(classes))
    return LoggedArrays(columns, matrix, predictions, classes, probabilities)


def _number(probabilities: Any, name: str) -> float:
    value = probabilities.get(name) if isinstance(probabilities, dict) else None
    return float(value) if isinstance(value, int | float) else math.nan
