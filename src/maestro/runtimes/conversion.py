"""Serving scikit-learn models as ONNX when that is safe to do.

onnxruntime answers a one-row request hundreds of times faster than scikit-learn on a
random forest (the scikit-learn cost is per-call overhead), so a loaded estimator is
converted with skl2onnx. The converted model is served only if it agrees with the
original on a validation sample: the same labels, probabilities within 1e-5, regression
values within 1e-5 relative. Otherwise the original serves, and the runtime says why
(``conversion = {"status": "failed" | "disagreed", "reason": …}``).

Missing values are judged apart: when the original answers rows with NaN, the
converted form must answer them alike too, or it serves with NaN refused (the reason
says so). Tree converters route missing values differently from scikit-learn, and a
silent difference would be worse than a clear error; ``convert=False`` keeps the
original for a model whose callers rely on NaN.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import numpy as np

from maestro.runtimes.base import Runtime, memory_estimate
from maestro.runtimes.errors import ServingError
from maestro.runtimes.estimators import EstimatorRuntime
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import InputSchema, sample_matrix, to_matrix
from maestro.runtimes.onnx import OnnxRuntime

logger = logging.getLogger("maestro.serving")

VALIDATION_ROWS = 256
MIN_COMPLETE_ROWS = 64  # fewer complete rows in a caller's sample are topped up with generated ones
PROBABILITY_TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 1e-5
_MAX_TREES_FOR_RANGES = 50
# skl2onnx is not written for hostile input: a conversion that has not finished by then is
# abandoned (its thread left to finish on its own) and the original model serves.
CONVERSION_TIMEOUT = 120.0
T = TypeVar("T")


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


# --- plausible ranges of the inputs, from what the model itself reveals --------------------------
def _trees(estimator: Any) -> list[Any]:
    if hasattr(estimator, "tree_"):
        return [estimator]
    members = getattr(estimator, "estimators_", None)
    if members is None:
        return []
    flat = np.ravel(np.asarray(members, dtype=object)).tolist()
    return [tree for tree in flat[:_MAX_TREES_FOR_RANGES] if hasattr(tree, "tree_")]


def feature_ranges(estimator: Any, width: int) -> list[tuple[float, float] | None]:
    """Per feature, a range where the model's behaviour varies: a leading scaler's
    statistics, or the span of a tree ensemble's split thresholds."""
    first = estimator
    steps = getattr(estimator, "steps", None)
    if steps:
        first = steps[0][1]
    ranges: list[tuple[float, float] | None] = [None] * width
    try:
        if hasattr(first, "mean_") and hasattr(first, "scale_") and first.scale_ is not None:
            centre, spread = np.asarray(first.mean_, float), np.asarray(first.scale_, float)
            return [(float(c - 3 * s), float(c + 3 * s)) for c, s in zip(centre, spread, strict=False)]
        if hasattr(first, "data_min_") and hasattr(first, "data_max_"):
            return [
                (float(low), float(high)) for low, high in zip(first.data_min_, first.data_max_, strict=False)
            ]
        low, high = np.full(width, np.inf), np.full(width, -np.inf)
        for tree in _trees(first):
            split = tree.tree_.feature >= 0
            features, thresholds = tree.tree_.feature[split], tree.tree_.threshold[split]
            np.minimum.at(low, features, thresholds)
            np.maximum.at(high, features, thresholds)
        for j in range(width):
            if np.isfinite(low[j]) and np.isfinite(high[j]):
                margin = max((high[j] - low[j]) * 0.1, 1e-3)
                ranges[j] = (float(low[j] - margin), float(high[j] + margin))
    except Exception:  # noqa: S110 - ranges are a hint; the default range serves without one
        pass
    return ranges


# --- agreement ------------------------------------------------------------------------------------
def _relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """Relative to each value, but never tighter than relative to the values' typical
    size, so a prediction near zero is not held to an absolute precision of 1e-300."""
    scale = np.maximum(np.abs(expected), float(np.mean(np.abs(expected))) or 1.0)
    return float(np.max(np.abs(got - expected) / scale))


def _disagreement(original: Runtime, candidate: Runtime, matrix: np.ndarray) -> str | None:
    """Why ``candidate`` does not answer like ``original``, or None when it does."""
    expected = np.asarray(original.predict(matrix))
    got = np.asarray(candidate.predict(matrix))
    if original.classes is not None:
        if got.shape != expected.shape or got.tolist() != expected.tolist():
            differing = (
                int(np.sum(got.reshape(expected.shape) != expected)) if got.size == expected.size else -1
            )
            return f"labels differ on {differing} of {len(matrix)} validation rows"
        if original.supports_proba:
            want, have = original.predict_proba(matrix), candidate.predict_proba(matrix)
            if want.shape != have.shape:
                return f"probabilities have shape {have.shape}, expected {want.shape}"
            worst = float(np.max(np.abs(want - have)))
            if not worst <= PROBABILITY_TOLERANCE:
                return f"probabilities differ by up to {worst:.2e} (tolerance {PROBABILITY_TOLERANCE:g})"
        return None
    expected, got = expected.astype(np.float64), got.astype(np.float64)
    if got.shape != expected.shape:
        return f"predictions have shape {got.shape}, expected {expected.shape}"
    worst = _relative_difference(got, expected)
    if not worst <= RELATIVE_TOLERANCE:
        return f"predictions differ by up to {worst:.2e} relative (tolerance {RELATIVE_TOLERANCE:g})"
    return None


def _agrees(original: Runtime, candidate: Runtime, matrix: np.ndarray) -> bool:
    try:
        return _disagreement(original, candidate, matrix) is None
    except ServingError:
        return False


def _detail(original: Runtime, candidate: Runtime, matrix: np.ndarray) -> str:
    if original.supports_proba:
        worst = float(np.max(np.abs(original.predict_proba(matrix) - candidate.predict_proba(matrix))))
        return f"labels equal, probabilities within {worst:.1e}"
    if original.classes is not None:
        return "labels equal"
    expected = np.asarray(original.predict(matrix), dtype=np.float64)
    got = np.asarray(candidate.predict(matrix), dtype=np.float64)
    return f"values within {_relative_difference(got, expected):.1e} relative"


def _fitted_trees(estimator: Any, depth: int = 0, seen: set[int] | None = None) -> list[Any]:
    """Every fitted decision tree inside ``estimator`` (ensembles, pipelines, meta-estimators)."""
    seen = seen if seen is not None else set()
    if depth > 6 or id(estimator) in seen:
        return []
    seen.add(id(estimator))
    if hasattr(estimator, "tree_") and hasattr(estimator.tree_, "threshold"):
        return [estimator]
    found = []
    for value in getattr(estimator, "__dict__", {}).values():
        items = value if isinstance(value, list | tuple) else [value]
        if isinstance(value, np.ndarray) and value.dtype == object:
            items = value.ravel().tolist()
        for item in items:
            if isinstance(item, tuple) and len(item) >= 2:  # (name, step) in pipelines
                item = item[1]
            if hasattr(item, "get_params"):
                found.extend(_fitted_trees(item, depth + 1, seen))
    return found


def _has_unbounded_splits(estimator: Any) -> bool:
    """Trees fitted on data with missing values split at ±inf; skl2onnx's double-precision
    threshold search never ends on those, so such a model is converted in float32 only."""
    for tree in _fitted_trees(estimator):
        nodes = tree.tree_
        if not np.isfinite(nodes.threshold[nodes.feature >= 0]).all():
            return True
    return False


def _bounded(task: Callable[[], T], timeout: float) -> T:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = task()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="maestro-onnx-conversion", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        logger.error("ONNX conversion still running after %.0f s; abandoned", timeout)
        raise TimeoutError(f"the conversion did not finish within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _validation_rows(original: EstimatorRuntime, sample: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Complete rows, and rows with missing values when the original answers those:
    the caller's sample split in two, or rows generated within plausible ranges (plus a
    copy with holes)."""
    schema = original.input_schema
    if sample is not None:
        matrix = to_matrix(sample, schema, allow_nan=True)
        holes = np.isnan(matrix).any(axis=1)
        complete, holed = matrix[~holes], matrix[holes]
        if len(complete) < MIN_COMPLETE_ROWS:
            generated = sample_matrix(
                schema, VALIDATION_ROWS, ranges=feature_ranges(original.model, schema.width)
            )
            complete = np.vstack([complete, generated])
        return complete, holed if len(holed) and original.accepts_missing else None
    complete = sample_matrix(schema, VALIDATION_ROWS, ranges=feature_ranges(original.model, schema.width))
    if not original.accepts_missing:
        return complete, None
    holed = complete.copy()
    holed[np.random.default_rng(1).random(holed.shape) < 0.2] = np.nan
    return complete, holed


def _to_onnx(estimator: Any, example: np.ndarray) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.base import is_classifier

    options = {"zipmap": False} if is_classifier(estimator) else None
    try:
        model = to_onnx(estimator, example, options=options)
    except NameError:  # a classifier-like model without the zipmap option
        model = to_onnx(estimator, example)
    return model.SerializeToString()


def convert_estimator(
    original: EstimatorRuntime,
    *,
    validation_sample: Any = None,
    threads: int = 1,
    inter_op_threads: int = 1,
    timeout: float = CONVERSION_TIMEOUT,
) -> tuple[OnnxRuntime | None, dict[str, str]]:
    """The ONNX form of ``original`` if it converts and agrees, and the verdict."""
    if original.serving_form != "sklearn":
        return None, {"status": "failed", "reason": "not a scikit-learn model; only those are converted"}
    schema: InputSchema = original.input_schema
    matrix, holed = _validation_rows(original, validation_sample)
    failures: list[str] = []
    disagreement: str | None = None
    # float32 first (the fast, common form); double where float32 rounding changes answers.
    dtypes = [np.float32] if _has_unbounded_splits(original.model) else [np.float32, np.float64]
    for dtype in dtypes:
        example = matrix[:1].astype(dtype)
        try:
            candidate = OnnxRuntime(
                _bounded(partial(_to_onnx, original.model, example), timeout),
                fmt=original.format,
                declared=schema,
                classes=original.classes,
                supports_proba=original.supports_proba,
                intra_op_threads=threads,
                inter_op_threads=inter_op_threads,
            )
            disagreement = _disagreement(original, candidate, matrix)
            if disagreement is None:
                detail = _detail(original, candidate, matrix)
                reason = f"agrees with the original on {len(matrix)} validation rows ({detail})"
                # NaN is answered only where both forms answer it alike; tree converters
                # route missing values differently from scikit-learn.
                candidate.accepts_missing = holed is not None and _agrees(original, candidate, holed)
                if holed is not None:
                    reason += (
                        "; missing values agree too"
                        if candidate.accepts_missing
                        else "; missing values (NaN) are refused, as the ONNX form answers them differently"
                    )
                return candidate, {"status": "converted", "reason": reason}
        except ServingError as exc:
            failures.append(exc.message)
        except Exception as exc:
            failures.append(_reason(exc))
    if disagreement is not None:
        return None, {"status": "disagreed", "reason": disagreement}
    return None, {"status": "failed", "reason": failures[0] if failures else "conversion failed"}


def serve_estimator(
    model: Any,
    *,
    fmt: ModelFormat,
    declared: InputSchema | None,
    file_size: int,
    convert: bool = True,
    validation_sample: Any = None,
    threads: int = 1,
    inter_op_threads: int = 1,
) -> Runtime:
    """The runtime for a loaded estimator: its ONNX form when conversion agrees, else itself."""
    original = EstimatorRuntime(
        model, fmt=fmt, declared=declared, memory_bytes=memory_estimate(file_size, fmt)
    )
    if not convert:
        return original
    converted, verdict = convert_estimator(
        original, validation_sample=validation_sample, threads=threads, inter_op_threads=inter_op_threads
    )
    if converted is None:
        logger.info("serving %s as it is: ONNX conversion %s (%s)", fmt, verdict["status"], verdict["reason"])
        original.conversion = verdict
        return original
    converted.conversion = verdict
    return converted
