"""XGBoost JSON and LightGBM text models: their trees are checked in pure Python first
(``tree_checks``), then the libraries' own parsers read them from memory. Servers run
them in isolated processes (``isolation``)."""

from __future__ import annotations

import json
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from maestro.runtimes.base import Runtime, brief, check_classes, memory_estimate, resolve_schema
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import (
    Feature,
    InputSchema,
)

if TYPE_CHECKING:
    pass

# scikit-learn warns on every call when a model fitted on a data frame gets a matrix; the
# matrix's columns are already in the model's order (the input schema guarantees it).
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)

# --- XGBoost ----------------------------------------------------------------------------------------
_XGB_FEATURE_TYPES = {"int": "integer", "i": "boolean"}


class XGBoostRuntime(Runtime):
    format = ModelFormat.xgboost_json
    serving_form = "xgboost"

    def __init__(
        self, data: bytes, *, declared: InputSchema | None, classes: list[Any] | None, threads: int = 1
    ) -> None:
        import xgboost

        booster = xgboost.Booster()
        try:
            booster.load_model(bytearray(data))
            config = json.loads(booster.save_config())
        except (xgboost.core.XGBoostError, ValueError, KeyError) as exc:
            raise ModelLoadError("corrupt", f"The file is not a valid XGBoost model ({brief(exc)})") from None
        booster.set_param({"nthread": threads})
        self._booster = booster
        self.memory_bytes = memory_estimate(len(data), self.format)
        learner = config.get("learner", {})
        self._objective = str(learner.get("objective", {}).get("name", ""))
        num_class = int(learner.get("learner_model_param", {}).get("num_class", "0") or 0)
        types = [_XGB_FEATURE_TYPES.get(t, "float") for t in booster.feature_types or []] or None
        self.input_schema = resolve_schema(declared, booster.num_features(), booster.feature_names, types)
        if self._objective.startswith("binary:"):
            self.classes = check_classes(classes, 2)
            self.supports_proba = self._objective != "binary:hinge"
        elif self._objective.startswith("multi:"):
            self.classes = check_classes(classes, num_class)
            self.supports_proba = True
        self._labels = np.asarray(self.classes) if self.classes is not None else None

    def _raw(self, matrix: np.ndarray, margin: bool = False) -> np.ndarray:
        return self._booster.inplace_predict(
            matrix, predict_type="margin" if margin else "value", validate_features=False
        )

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        values = self._raw(matrix)
        if self._labels is None:
            return values
        if self._objective in ("binary:logistic", "binary:logitraw"):
            threshold = 0.0 if self._objective == "binary:logitraw" else 0.5
            return self._labels[(values > threshold).astype(np.intp)]
        if values.ndim == 2:
            return self._labels[np.argmax(values, axis=1)]
        return self._labels[values.astype(np.intp)]

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if self._objective == "binary:logitraw":
            positive = 1.0 / (1.0 + np.exp(-self._raw(matrix)))
        elif self._objective == "multi:softmax":
            margins = self._raw(matrix, margin=True)
            shifted = np.exp(margins - margins.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        else:
            values = self._raw(matrix)
            if values.ndim == 2:
                return values
            positive = values
        return np.column_stack([1.0 - positive, positive])


# --- LightGBM ---------------------------------------------------------------------------------------
def _lightgbm_header(text: str) -> dict[str, str]:
    header = {}
    for line in text.split("\n", 200)[:200]:
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    return header


def _lightgbm_ranges(header: dict[str, str]) -> list[tuple[float, float] | None]:
    """Each feature's training range, from ``feature_infos`` (``[min:max]`` per feature)."""
    ranges: list[tuple[float, float] | None] = []
    for info in header.get("feature_infos", "").split():
        low, sep, high = info.strip("[]").partition(":")
        try:
            bounds = (float(low), float(high)) if sep and info.startswith("[") else None
        except ValueError:
            bounds = None
        ranges.append(bounds if bounds and all(map(math.isfinite, bounds)) else None)
    return ranges


class LightGBMRuntime(Runtime):
    format = ModelFormat.lightgbm_txt
    serving_form = "lightgbm"

    def __init__(
        self, data: bytes, *, declared: InputSchema | None, classes: list[Any] | None, threads: int = 1
    ) -> None:
        import lightgbm

        try:
            text = data.decode("utf-8")
            booster = lightgbm.Booster(model_str=text)
        except (UnicodeDecodeError, lightgbm.basic.LightGBMError, ValueError) as exc:
            raise ModelLoadError(
                "corrupt", f"The file is not a valid LightGBM model ({brief(exc)})"
            ) from None
        self._booster = booster
        self._threads = threads
        self.memory_bytes = memory_estimate(len(data), self.format)
        header = _lightgbm_header(text)
        objective = header.get("objective", "").split(" ")[0]
        found: list[str] = booster.feature_name()
        # LightGBM's own placeholders mean the model has no names.
        names = None if found == [f"Column_{i}" for i in range(len(found))] else found
        width = booster.num_feature()
        self.input_schema = resolve_schema(declared, width, names)
        if self.input_schema.source == "generated":
            ranges = _lightgbm_ranges(header)
            features = [
                Feature(
                    f.name, f.type, *(bounds if i < len(ranges) and (bounds := ranges[i]) else (None, None))
                )
                for i, f in enumerate(self.input_schema.features)
            ]
            self.input_schema = InputSchema(features, "generated")
        self._binary = objective == "binary"
        if self._binary:
            self.classes = check_classes(classes, 2)
        elif objective in ("multiclass", "multiclassova"):
            self.classes = check_classes(classes, int(header.get("num_class", "1")))
        self.supports_proba = self.classes is not None
        self._labels = np.asarray(self.classes) if self.classes is not None else None

    def _raw(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.predict(matrix, num_threads=self._threads))

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        values = self._raw(matrix)
        if self._labels is None:
            return values
        if self._binary:
            return self._labels[(values > 0.5).astype(np.intp)]
        return self._labels[np.argmax(values, axis=1)]

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        values = self._raw(matrix)
        return np.column_stack([1.0 - values, values]) if self._binary else values
