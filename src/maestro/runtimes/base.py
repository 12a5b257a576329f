"""The interface every loaded model answers (``Runtime``), and what all formats share:
the input schema a runtime resolves, its class list and its memory estimate."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from maestro.runtimes.class_labels import ClassLabels
from maestro.runtimes.errors import InputError, ModelLoadError, PredictionError, ServingError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import (
    Feature,
    InputSchema,
    sample_matrix,
    to_matrix,
)

if TYPE_CHECKING:
    pass

# scikit-learn warns on every call when a model fitted on a data frame gets a matrix; the
# matrix's columns are already in the model's order (the input schema guarantees it).
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


HEAD_BYTES = 4096  # what format recognition reads of a file's start
FLOAT32_MAX = float(np.finfo(np.float32).max)
MIN_MEMORY_BYTES = 64 * 1024
# In-memory size of a loaded model relative to its file: text formats shrink, arrays
# unpacked from archives and Python objects grow.
MEMORY_FACTORS = {
    ModelFormat.onnx: 2.0,
    ModelFormat.skops: 3.0,
    ModelFormat.joblib: 3.0,
    ModelFormat.pickle: 3.0,
    ModelFormat.xgboost_json: 1.0,
    ModelFormat.lightgbm_txt: 1.0,
}
WARM_UP_ROWS = 64  # the warm-up batch
BYTE_LIMIT_MESSAGE = "The model file is {size:,} bytes; at most {limit:,} bytes can be loaded"


def memory_estimate(size: int, fmt: ModelFormat) -> int:
    return max(int(size * MEMORY_FACTORS.get(fmt, 3.0)), MIN_MEMORY_BYTES)


def brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


# --- the interface ---------------------------------------------------------------------------
class Runtime(ABC):
    """A loaded model. Thread-safe: many requests may predict at once."""

    format: ModelFormat  # the file's format
    serving_form: str  # what answers: onnx, sklearn, python, xgboost or lightgbm
    input_schema: InputSchema
    classes: list[Any] | None = None  # labels of a classifier; None for a regressor
    class_labels: ClassLabels | None = None  # what answers call the classes (``name_classes``)
    supports_proba: bool = False
    accepts_missing: bool = True  # whether NaN in the input is answered (as the model defines)
    conversion: dict[str, str] | None = None  # {"status", "reason"} when ONNX conversion was tried
    memory_bytes: int = MIN_MEMORY_BYTES
    load_seconds: float = 0.0

    @property
    def n_features(self) -> int:
        return self.input_schema.width

    @property
    def serving(self) -> str:
        """What is answering, e.g. ``onnx (converted from skops)`` or ``sklearn (from joblib)``."""
        if self.conversion and self.conversion.get("status") == "converted":
            return f"{self.serving_form} (converted from {self.format})"
        if self.serving_form == _NATIVE_FORM.get(self.format):
            return self.serving_form
        return f"{self.serving_form} (from {self.format})"

    def name_classes(self, model_schema: Any) -> None:
        """Name the classes as the version's ``model_schema`` declares (see
        ``class_labels``); loading calls it once the classes are known."""
        self.class_labels = ClassLabels.of(self.classes, model_schema)

    def to_matrix(self, rows: Any, **options: Any) -> np.ndarray:
        return to_matrix(rows, self.input_schema, **options)

    def _check(self, matrix: np.ndarray) -> None:
        if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
            raise InputError("shape", f"Expected a 2-D matrix of (rows, {self.n_features} features)")
        if matrix.shape[1] != self.n_features:
            raise InputError(
                "width", f"Rows have {matrix.shape[1]} values; the model takes {self.n_features} features"
            )
        if matrix.shape[0] == 0:
            raise InputError("empty", "At least one row is needed")
        if not self.accepts_missing:
            missing = np.isnan(matrix)
            if missing.any():
                i, j = (int(v) for v in np.argwhere(missing)[0])
                name = self.input_schema.names[j]
                raise InputError(
                    "nan",
                    f"Row {i}, feature {name!r}: this model takes no missing values (NaN)",
                    row=i,
                    feature=name,
                    field=f"{i}.{name}",
                )

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        self._check(matrix)
        try:
            return self._predict(matrix)
        except ServingError:
            raise
        except Exception as exc:
            raise PredictionError("prediction_failed", f"The model could not predict: {brief(exc)}") from exc

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if not self.supports_proba:
            raise PredictionError(
                "proba_not_supported",
                "This model gives no probabilities"
                + (" (it is a regressor)" if self.classes is None else "; ask for predictions only"),
            )
        self._check(matrix)
        try:
            return np.asarray(self._predict_proba(matrix), dtype=np.float64)
        except ServingError:
            raise
        except Exception as exc:
            raise PredictionError("prediction_failed", f"The model could not predict: {brief(exc)}") from exc

    def predict_with_proba(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, where supported, probabilities (one pass where the runtime can)."""
        labels = self.predict(matrix)
        return labels, self.predict_proba(matrix) if self.supports_proba else None

    def warm_up(self) -> None:
        """The first predictions, so the first request pays no first-call costs: one row,
        then a batch of ``WARM_UP_ROWS`` (a batch takes paths a single row does not), on
        plausible rows, or on zeros or ones for a model whose inputs have a narrower
        domain (counts, categories)."""
        plausible = sample_matrix(self.input_schema, WARM_UP_ROWS)
        failure: ServingError | None = None
        for rows in (plausible, np.zeros_like(plausible), np.ones_like(plausible)):
            try:
                self.predict_with_proba(rows[:1])
                self.predict_with_proba(rows)
                return
            except ServingError as exc:
                failure = failure or exc
        assert failure is not None
        raise ModelLoadError(
            "warm_up_failed", f"The warm-up prediction failed: {failure.message}"
        ) from failure

    def describe(self) -> dict[str, Any]:
        return {
            "format": str(self.format),
            "serving_form": self.serving_form,
            "serving": self.serving,
            "conversion": self.conversion,
            "n_features": self.n_features,
            "input_schema": self.input_schema.to_dict(),
            "classes": self.classes,
            "supports_proba": self.supports_proba,
            "accepts_missing": self.accepts_missing,
            "memory_bytes": self.memory_bytes,
            "load_seconds": round(self.load_seconds, 4),
        }

    def close(self) -> None:  # noqa: B027 - most runtimes hold nothing outside the process
        """Let go of what the runtime holds outside this process (an isolated process);
        called when the model cache drops it."""

    @abstractmethod
    def _predict(self, matrix: np.ndarray) -> np.ndarray: ...

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:  # pragma: no cover - guarded
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.serving}, {self.n_features} features>"


_NATIVE_FORM = {
    ModelFormat.onnx: "onnx",
    ModelFormat.xgboost_json: "xgboost",
    ModelFormat.lightgbm_txt: "lightgbm",
}


def resolve_schema(
    declared: InputSchema | None,
    width: int | None,
    names: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
) -> InputSchema:
    """The version's declared schema when there is one (checked against the model's
    width), else the model's own feature names, else ``f0..fN``."""
    if declared is not None:
        if width is not None and declared.width != width:
            raise ModelLoadError(
                "schema_mismatch",
                f"The version's model_schema lists {declared.width} inputs; the model takes {width} features",
            )
        return declared
    if width is None and names is None:
        raise ModelLoadError(
            "invalid_schema",
            "The model does not say how many features it takes; declare them in the version's "
            'model_schema as {"inputs": [{"name": …, "type": …}, …]}',
        )
    types = list(types) if types is not None else None
    if names is not None and len(set(names)) == len(names):
        return InputSchema.from_names([str(name) for name in names], types)
    width = width if width is not None else len(names or ())
    kinds = types or ["float"] * width
    return InputSchema([Feature(f"f{i}", kinds[i]) for i in range(width)], "generated")


def class_list(values: Any) -> list[Any]:
    return np.asarray(values).tolist()


def check_classes(declared: list[Any] | None, count: int) -> list[Any]:
    if declared is None:
        return list(range(count))
    if len(declared) != count:
        raise ModelLoadError(
            "schema_mismatch",
            f"The version's model_schema lists {len(declared)} classes; the model has {count}",
        )
    return declared
