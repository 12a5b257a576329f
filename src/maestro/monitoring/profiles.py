"""Mergeable profiles of one column over one window.

A window's profile is built once from the values logged in it and later merged with
other windows' (hours into days, workers into one) without the raw values, so each
profile keeps only what merges exactly or within a stated error:

- ``NumericProfile``: row and null counts, sum, sum of squares, min and max (exact up to
  float rounding), the exact value counts while a column has at most
  ``SMALL_DISTINCT_LIMIT`` distinct values, and a KLL quantile sketch (datasketches,
  ``KLL_K`` = 400: normalised rank error 0.68 % at 99 % confidence for a rank or a CDF
  value, 0.86 % for a PMF bin; it shrinks about as 1/k).
- ``CategoricalProfile``: exact counts of up to ``CATEGORY_CAP`` distinct values, then one
  ``OTHER`` bucket. Merging two profiles whose union passes the cap keeps the most
  frequent values, so a merge equals the profile of all data only below the cap.
- ``LatencyProfile``: a DDSketch store with 1 % relative accuracy: a p99 is within 1 % of
  the true value, where KLL's rank error would put it anywhere between p98.3 and p99.7.

Missing values (None, NaN, ±inf) are counted as nulls and kept out of every sketch.
``to_bytes`` writes a magic, a version, the fields and a CRC32; ``from_bytes`` checks all
of them and the sketch's own layout before the sketch library reads a byte (its
deserialiser reads past the end of a truncated buffer), and raises ``ValueError`` on any
mismatch; nothing is ever unpickled.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
from datasketches import kll_doubles_sketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

KLL_K = 400
CATEGORY_CAP = 1_000
SMALL_DISTINCT_LIMIT = 5  # the drift rules treat a numeric column with at most 5 values as categorical
LATENCY_RELATIVE_ACCURACY = 0.01
OTHER = "__other__"

ColumnKind = Literal["numeric", "categorical"]

_NUMERIC_MAGIC = b"MXNP"
_CATEGORICAL_MAGIC = b"MXCP"
_LATENCY_MAGIC = b"MXLP"
_FORMAT_VERSION = 1
_CRC = struct.Struct("<I")
# count, null count, sum, sum of squares, min, max, number of small values (-1: more than the limit)
_NUMERIC_HEADER = struct.Struct("<QQddddb")
_SMALL_VALUE = struct.Struct("<dQ")
_SKETCH_LENGTH = struct.Struct("<I")


def _seal(magic: bytes, body: bytes) -> bytes:
    data = magic + bytes([_FORMAT_VERSION]) + body
    return data + _CRC.pack(zlib.crc32(data))


def _unseal(magic: bytes, data: bytes, what: str) -> bytes:
    """The body of a sealed record, after its magic, version and checksum were checked."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"{what}: expected bytes")
    data = bytes(data)
    if len(data) < len(magic) + 1 + _CRC.size:
        raise ValueError(f"{what}: truncated ({len(data)} bytes)")
    if data[: len(magic)] != magic:
        raise ValueError(f"{what}: not a {what} (wrong magic)")
    if data[len(magic)] != _FORMAT_VERSION:
        raise ValueError(f"{what}: unsupported format version {data[len(magic)]}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise ValueError(f"{what}: checksum mismatch (corrupt or truncated)")
    return data[len(magic) + 1 : -_CRC.size]


def _unseal_document(magic: bytes, data: bytes, what: str, fields: set[str]) -> dict[str, Any]:
    """A sealed JSON document with exactly ``fields``, or ValueError."""
    try:
        document = orjson.loads(_unseal(magic, data, what))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{what}: not JSON") from exc
    if not isinstance(document, dict) or set(document) != fields:
        raise ValueError(f"{what}: unexpected fields")
    return document


# -- KLL layout (datasketches' serial versions 1 and 2 for 8-byte items) -------------------
_KLL_FAMILY = 15
_KLL_M = 8
_KLL_MIN_K, _KLL_MAX_K = 8, 65_535
_KLL_FLAG_EMPTY, _KLL_FLAG_SINGLE = 1, 4
_KLL_ITEM = 8


def _kll_level_capacity(k: int, depth: int) -> int:
    def cap(k: int, depth: int) -> int:
        return ((2 * k << depth) // 3**depth + 1) >> 1

    if depth <= 30:
        return cap(k, depth)
    return cap(cap(k, depth // 2), depth - depth // 2)


def _kll_total_capacity(k: int, num_levels: int) -> int:
    return sum(max(_KLL_M, _kll_level_capacity(k, num_levels - h - 1)) for h in range(num_levels))


def _check_kll_layout(data: bytes) -> None:
    """Raise ValueError unless ``data`` has exactly the size its own preamble describes."""
    if len(data) < 8:
        raise ValueError("quantile sketch: truncated preamble")
    preamble_ints, serial_version, family, flags, k, m = struct.unpack_from("<BBBBHB", data)
    if family != _KLL_FAMILY or m != _KLL_M or not _KLL_MIN_K <= k <= _KLL_MAX_K:
        raise ValueError("quantile sketch: not a KLL sketch of doubles")
    if flags & _KLL_FLAG_EMPTY:
        expected = 8
    elif flags & _KLL_FLAG_SINGLE:
        expected = 8 + _KLL_ITEM
    else:
        if preamble_ints != 5 or serial_version != 1 or len(data) < 20:
            raise ValueError("quantile sketch: bad preamble")
        num_levels = data[18]
        if not 1 <= num_levels <= 60 or len(data) < 20 + 4 * num_levels:
            raise ValueError("quantile sketch: bad level count")
        levels = struct.unpack_from(f"<{num_levels}I", data, 20)
        capacity = _kll_total_capacity(k, num_levels)
        if any(b < a for a, b in itertools.pairwise(levels)) or levels[-1] > capacity:
            raise ValueError("quantile sketch: bad levels")
        expected = 20 + 4 * num_levels + 2 * _KLL_ITEM + _KLL_ITEM * (capacity - levels[0])
    if preamble_ints not in (2, 5) or len(data) != expected:
        raise ValueError(f"quantile sketch: {len(data)} bytes where its preamble describes {expected}")


def finite_values(values: Any) -> tuple[np.ndarray, int]:
    """The finite values of a numeric batch as float64, and how many were missing."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    return finite, array.size - finite.size


class NumericProfile:
    """Counts, moments and a KLL sketch of a numeric column; see the module docstring."""

    __slots__ = ("count", "max", "min", "null_count", "sketch", "small_values", "sum", "sum_sq")

    def __init__(self, k: int = KLL_K) -> None:
        self.count = 0
        self.null_count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.sketch = kll_doubles_sketch(k)
        # exact value -> count while the column has few distinct values; None once it has more
        self.small_values: dict[float, int] | None = {}

    kind: ColumnKind = "numeric"

    @property
    def non_null(self) -> int:
        return self.count - self.null_count

    @property
    def null_rate(self) -> float:
        return self.null_count / self.count if self.count else 0.0

    def std(self) -> float:
        """Sample standard deviation from the sums (cancellation matters only when the
        spread is below about 1e-7 of the mean)."""
        n = self.non_null
        if n < 2:
            return 0.0
        variance = (self.sum_sq - self.sum * self.sum / n) / (n - 1)
        return math.sqrt(max(variance, 0.0))

    def update(self, values: Any) -> NumericProfile:
        finite, missing = finite_values(values)
        self.count += finite.size + missing
        self.null_count += missing
        if finite.size:
            self.sum += float(finite.sum())
            self.sum_sq += float(np.dot(finite, finite))
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
            self.sketch.update(finite)
            if self.small_values is not None:
                distinct, counts = np.unique(finite, return_counts=True)
                self._add_small(zip(distinct.tolist(), counts.tolist(), strict=True))
        return self

    def _add_small(self, pairs: Iterable[tuple[float, int]]) -> None:
        assert self.small_values is not None
        for value, count in pairs:
            self.small_values[value] = self.small_values.get(value, 0) + count
            if len(self.small_values) > SMALL_DISTINCT_LIMIT:
                self.small_values = None
                return

    def merge(self, other: NumericProfile) -> NumericProfile:
        self.count += other.count
        self.null_count += other.null_count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sketch.merge(other.sketch)
        if self.small_values is not None:
            if other.small_values is None:
                self.small_values = None
            else:
                self._add_small(other.small_values.items())
        return self

    def to_bytes(self) -> bytes:
        small = self.small_values
        parts = [
            _NUMERIC_HEADER.pack(
                self.count,
                self.null_count,
                self.sum,
                self.sum_sq,
                self.min,
                self.max,
                -1 if small is None else len(small),
            )
        ]
        if small is not None:
            parts.extend(_SMALL_VALUE.pack(value, count) for value, count in sorted(small.items()))
        sketch = self.sketch.serialize()
        parts += [_SKETCH_LENGTH.pack(len(sketch)), sketch]
        return _seal(_NUMERIC_MAGIC, b"".join(parts))

    @classmethod
    def from_bytes(cls, data: bytes) -> NumericProfile:
        body = _unseal(_NUMERIC_MAGIC, data, "numeric profile")
        if len(body) < _NUMERIC_HEADER.size:
            raise ValueError("numeric profile: truncated header")
        count, null_count, total, total_sq, low, high, n_small = _NUMERIC_HEADER.unpack_from(body)
        offset = _NUMERIC_HEADER.size
        small: dict[float, int] | None = None
        if n_small >= 0:
            if n_small > SMALL_DISTINCT_LIMIT or len(body) < offset + n_small * _SMALL_VALUE.size:
                raise ValueError("numeric profile: bad small-value table")
            small = dict(_SMALL_VALUE.iter_unpack(body[offset : offset + n_small * _SMALL_VALUE.size]))
            offset += n_small * _SMALL_VALUE.size
        if len(body) < offset + _SKETCH_LENGTH.size:
            raise ValueError("numeric profile: truncated sketch length")
        (length,) = _SKETCH_LENGTH.unpack_from(body, offset)
        offset += _SKETCH_LENGTH.size
        if len(body) != offset + length:
            raise ValueError("numeric profile: sketch length does not match the data")
        sketch_bytes = body[offset:]
        _check_kll_layout(sketch_bytes)
        sketch = kll_doubles_sketch.deserialize(sketch_bytes)
        non_null = count - null_count
        if null_count > count or sketch.n != non_null:
            raise ValueError("numeric profile: counts disagree with the sketch")
        if small is not None and sum(small.values()) != non_null:
            raise ValueError("numeric profile: small-value counts disagree with the count")
        if non_null and not low <= high:
            raise ValueError("numeric profile: min above max")
        profile = cls(sketch.k)
        profile.count, profile.null_count = count, null_count
        profile.sum, profile.sum_sq, profile.min, profile.max = total, total_sq, low, high
        profile.sketch, profile.small_values = sketch, small
        return profile


def _categorical_values(values: Any) -> tuple[np.ndarray, int]:
    """The non-missing values of a categorical batch as strings, and how many were missing."""
    array = np.asarray(values)
    if array.dtype.kind == "U":
        return array.ravel(), 0
    array = np.asarray(values, dtype=object).ravel()
    present = np.fromiter(
        (v is not None and not (isinstance(v, float) and math.isnan(v)) for v in array),
        dtype=bool,
        count=array.size,
    )
    return array[present].astype(str), int(array.size - present.sum())


_CATEGORICAL_FIELDS = {"cap", "count", "null_count", "other", "counts"}
_LATENCY_FIELDS = {"count", "null_count", "zero_count", "sum", "min", "max", "bins"}


class CategoricalProfile:
    """Exact value counts up to ``cap`` distinct values, then the ``other`` bucket."""

    __slots__ = ("cap", "count", "counts", "null_count", "other")

    kind: ColumnKind = "categorical"

    def __init__(self, cap: int = CATEGORY_CAP) -> None:
        self.cap = cap
        self.count = 0
        self.null_count = 0
        self.counts: dict[str, int] = {}
        self.other = 0

    @property
    def non_null(self) -> int:
        return self.count - self.null_count

    @property
    def null_rate(self) -> float:
        return self.null_count / self.count if self.count else 0.0

    @property
    def overflowed(self) -> bool:
        return self.other > 0

    def update(self, values: Any) -> CategoricalProfile:
        present, missing = _categorical_values(values)
        self.count += present.size + missing
        self.null_count += missing
        if present.size:
            distinct, counts = np.unique(present, return_counts=True)
            self._add(zip(distinct.tolist(), counts.tolist(), strict=True))
        return self

    def _add(self, pairs: Iterable[tuple[str, int]]) -> None:
        counts = self.counts
        for value, count in pairs:
            if value in counts:
                counts[value] += count
            elif len(counts) < self.cap:
                counts[value] = count
            else:
                self.other += count

    def merge(self, other: CategoricalProfile) -> CategoricalProfile:
        self.count += other.count
        self.null_count += other.null_count
        self.other += other.other
        combined = dict(self.counts)
        for value, count in other.counts.items():
            combined[value] = combined.get(value, 0) + count
        if len(combined) > self.cap:
            kept = sorted(combined.items(), key=lambda item: (-item[1], item[0]))
            self.other += sum(count for _, count in kept[self.cap :])
            combined = dict(kept[: self.cap])
        self.counts = combined
        return self

    def to_bytes(self) -> bytes:
        document = {
            "cap": self.cap,
            "count": self.count,
            "null_count": self.null_count,
            "other": self.other,
            "counts": self.counts,
        }
        return _seal(_CATEGORICAL_MAGIC, orjson.dumps(document))

    @classmethod
    def from_bytes(cls, data: bytes) -> CategoricalProfile:
        document = _unseal_document(_CATEGORICAL_MAGIC, data, "categorical profile", _CATEGORICAL_FIELDS)
        numbers = [document[key] for key in ("cap", "count", "null_count", "other")]
        counts = document["counts"]
        if not all(type(value) is int and value >= 0 for value in numbers) or not isinstance(counts, dict):
            raise ValueError("categorical profile: bad field types")
        if not all(type(value) is int and value > 0 for value in counts.values()):
            raise ValueError("categorical profile: bad counts")
        profile = cls(document["cap"])
        profile.count, profile.null_count, profile.other = numbers[1:]
        profile.counts = counts
        if len(counts) > profile.cap or sum(counts.values()) + profile.other != profile.non_null:
            raise ValueError("categorical profile: counts disagree with the totals")
        return profile


class LatencyProfile:
    """Latencies (seconds, or any non-negative unit) in a DDSketch store: quantiles within
    ``LATENCY_RELATIVE_ACCURACY`` of the true value, mergeable, and serialised as the store's
    bins in JSON. Bucket keys are computed with numpy from the sketch's own mapping."""

    __slots__ = ("bins", "count", "max", "min", "null_count", "sum", "zero_count")

    def __init__(self) -> None:
        self.count = 0
        self.null_count = 0
        self.zero_count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.bins: dict[int, int] = {}

    _mapping = LogarithmicMapping(LATENCY_RELATIVE_ACCURACY)

    def update(self, values: Any) -> LatencyProfile:
        finite, missing = finite_values(values)
        if finite.size and finite.min() < 0:
            raise ValueError("latency profile: negative latency")
        self.count += finite.size + missing
        self.null_count += missing
        if not finite.size:
            return self
        self.sum += float(finite.sum())
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        positive = finite[finite > self._mapping.min_possible]
        self.zero_count += finite.size - positive.size
        keys = np.ceil(np.log(positive) / math.log(self._mapping.gamma)).astype(np.int64)
        distinct, counts = np.unique(keys, return_counts=True)
        for key, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            self.bins[key] = self.bins.get(key, 0) + count
        return self

    def merge(self, other: LatencyProfile) -> LatencyProfile:
        self.count += other.count
        self.null_count += other.null_count
        self.zero_count += other.zero_count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        for key, count in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + count
        return self

    def sketch(self) -> BaseDDSketch:
        store = DenseStore()
        for key, count in self.bins.items():
            store.add(key, count)
        return BaseDDSketch(self._mapping, store, DenseStore(), self.zero_count)

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """The values at quantiles ``qs`` (each within 1 % of the true one, clamped to the
        exact min and max); None for every q when the profile holds no value."""
        if self.count == self.null_count:
            return [None for _ in qs]
        sketch = self.sketch()
        values = (sketch.get_quantile_value(q) for q in qs)
        return [min(max(float(v), self.min), self.max) if v is not None else None for v in values]

    def to_bytes(self) -> bytes:
        document = {
            "count": self.count,
            "null_count": self.null_count,
            "zero_count": self.zero_count,
            "sum": self.sum,
            "min": self.min if self.count > self.null_count else None,
            "max": self.max if self.count > self.null_count else None,
            "bins": [[key, count] for key, count in sorted(self.bins.items())],
        }
        return _seal(_LATENCY_MAGIC, orjson.dumps(document))

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencyProfile:
        document = _unseal_document(_LATENCY_MAGIC, data, "latency profile", _LATENCY_FIELDS)
        counts = [document[key] for key in ("count", "null_count", "zero_count")]
        bins = document["bins"]
        if not all(type(value) is int and value >= 0 for value in counts) or not isinstance(bins, list):
            raise ValueError("latency profile: bad field types")
        if not all(
            isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair) and pair[1] > 0
            for pair in bins
        ):
            raise ValueError("latency profile: bad bins")
        profile = cls()
        profile.count, profile.null_count, profile.zero_count = counts
        profile.bins = {key: count for key, count in bins}
        has_values = profile.count > profile.null_count
        bounds = [document["sum"], document["min"], document["max"]]
        if has_values and not all(isinstance(v, int | float) for v in bounds):
            raise ValueError("latency profile: bad bounds")
        profile.sum = float(document["sum"])
        profile.min = float(document["min"]) if has_values else math.inf
        profile.max = float(document["max"]) if has_values else -math.inf
        if profile.null_count > profile.count or (
            sum(profile.bins.values()) + profile.zero_count != profile.count - profile.null_count
        ):
            raise ValueError("latency profile: counts disagree with the totals")
        return profile


ColumnProfile = NumericProfile | CategoricalProfile


def new_profile(kind: ColumnKind) -> ColumnProfile:
    if kind == "numeric":
        return NumericProfile()
    if kind == "categorical":
        return CategoricalProfile()
    raise ValueError(f"unknown column kind {kind!r}")


def profile_columns(
    names: Sequence[str],
    data: np.ndarray | Sequence[Any] | Mapping[str, Any],
    kinds: Sequence[ColumnKind],
) -> dict[str, ColumnProfile]:
    """One profile per column of a batch. ``data`` is a 2-D array (one column per name), a
    sequence of columns in the order of ``names``, or a mapping from name to column;
    categorical columns are sequences of strings with None for missing."""
    if len(names) != len(kinds):
        raise ValueError("names and kinds differ in length")
    if isinstance(data, Mapping):
        columns = [data[name] for name in names]
    elif isinstance(data, np.ndarray) and data.ndim == 2:
        if data.shape[1] != len(names):
            raise ValueError(f"{data.shape[1]} columns for {len(names)} names")
        columns = [data[:, i] for i in range(data.shape[1])]
    else:
        columns = list(data)
        if len(columns) != len(names):
            raise ValueError(f"{len(columns)} columns for {len(names)} names")
    return {
        name: new_profile(kind).update(column)
        for name, kind, column in zip(names, kinds, columns, strict=True)
    }
