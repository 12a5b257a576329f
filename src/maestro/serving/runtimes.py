"""Loading a model file by its format into a ``Runtime``: one interface for every format.

A runtime takes a 2-D float matrix (``inputs.to_matrix`` builds one from request rows)
and answers ``predict`` and, where the model has them, ``predict_proba``; it knows its
``input_schema``, ``classes`` and what it is actually serving.

What may be loaded, and how:

- **skops**: the types in the file are checked against an allow-list kept here (the
  scikit-learn internals a fitted estimator legitimately holds, beside the estimators
  skops itself trusts); never one taken from the file. Anything else is refused unless
  an organisation admin trusted the version.
- **ONNX**: parsed as plain protobuf first; any tensor stored as external data, in any
  graph or subgraph, refuses the model before onnxruntime sees it, so a model can never
  make the server read a path of its choosing. The session is built from bytes with
  explicit thread counts (default threads degrade badly under contention).
- **XGBoost JSON** and **LightGBM text**: their trees are checked in pure Python first
  (``tree_checks``: the libraries trust every index in the file), then their own parsers
  read them from memory. Servers run these in isolated processes (``isolation``).
- **pickle / joblib**: run code when loaded, so only for a version an admin trusted;
  otherwise refused before a byte of the file is read.

scikit-learn models (from skops or a trusted pickle) are converted to ONNX when the
conversion agrees with the original on a validation sample; see ``conversion.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import time
import warnings
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from maestro.api.errors import NotFound
from maestro.registry.formats import CODE_EXECUTING_FORMATS, ModelFormat, detect_format
from maestro.serving.errors import InputError, ModelLoadError, PredictionError, ServingError
from maestro.serving.inputs import (
    Feature,
    InputSchema,
    parse_model_schema,
    sample_matrix,
    schema_classes,
    to_matrix,
)
from maestro.serving.tree_checks import check_tree_model

if TYPE_CHECKING:
    import onnx

    from maestro.config import Settings
    from maestro.storage import ArtifactStore

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
_BYTE_LIMIT_MESSAGE = "The model file is {size:,} bytes; at most {limit:,} bytes can be loaded"


def memory_estimate(size: int, fmt: ModelFormat) -> int:
    return max(int(size * MEMORY_FACTORS.get(fmt, 3.0)), MIN_MEMORY_BYTES)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


# --- the interface ---------------------------------------------------------------------------
class Runtime(ABC):
    """A loaded model. Thread-safe: many requests may predict at once."""

    format: ModelFormat  # the file's format
    serving_form: str  # what answers: onnx, sklearn, python, xgboost or lightgbm
    input_schema: InputSchema
    classes: list[Any] | None = None  # labels of a classifier; None for a regressor
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
            raise PredictionError("prediction_failed", f"The model could not predict: {_short(exc)}") from exc

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
            raise PredictionError("prediction_failed", f"The model could not predict: {_short(exc)}") from exc

    def predict_with_proba(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, where supported, probabilities (one pass where the runtime can)."""
        labels = self.predict(matrix)
        return labels, self.predict_proba(matrix) if self.supports_proba else None

    def warm_up(self) -> None:
        """One prediction, so the first request pays no first-call costs: on a plausible
        row, or on zeros or ones for a model whose inputs have a narrower domain (counts,
        categories)."""
        plausible = sample_matrix(self.input_schema, 1)
        failure: ServingError | None = None
        for row in (plausible, np.zeros_like(plausible), np.ones_like(plausible)):
            try:
                self.predict_with_proba(row)
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


def _class_list(values: Any) -> list[Any]:
    return np.asarray(values).tolist()


def _check_classes(declared: list[Any] | None, count: int) -> list[Any]:
    if declared is None:
        return list(range(count))
    if len(declared) != count:
        raise ModelLoadError(
            "schema_mismatch",
            f"The version's model_schema lists {len(declared)} classes; the model has {count}",
        )
    return declared


# --- scikit-learn estimators (and other Python models from trusted pickles) ----------------------
def _single_threaded(estimator: Any) -> None:
    """A served model must not fan out its own worker pool per request."""
    try:
        params = estimator.get_params(deep=True)
        updates = {
            key: None for key, value in params.items() if key.endswith("n_jobs") and value not in (None, 1)
        }
        if updates:
            estimator.set_params(**updates)
    except Exception:  # noqa: S110 - a model without sklearn's parameter API keeps its own
        pass


class EstimatorRuntime(Runtime):
    """A scikit-learn estimator or pipeline, or any object with ``predict`` from a trusted pickle."""

    def __init__(
        self, model: Any, *, fmt: ModelFormat, declared: InputSchema | None, memory_bytes: int
    ) -> None:
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(
                "not_a_model", f"The file holds a {type(model).__name__}, which has no predict method"
            )
        from sklearn.base import BaseEstimator

        self.model = model
        self.format = fmt
        self.serving_form = "sklearn" if isinstance(model, BaseEstimator) else "python"
        self.memory_bytes = memory_bytes
        _single_threaded(model)
        width = getattr(model, "n_features_in_", None)
        names = getattr(model, "feature_names_in_", None)
        model_names = [str(name) for name in names] if names is not None else None
        self.input_schema = resolve_schema(declared, int(width) if width is not None else None, model_names)
        classes = getattr(model, "classes_", None)
        self.classes = _class_list(classes) if classes is not None else None
        self.supports_proba = callable(getattr(model, "predict_proba", None))
        # A model whose columns are picked by name (a ColumnTransformer fitted on a data
        # frame) needs a frame; anything else is faster on the bare matrix.
        self._frame_columns: list[str] | None = None
        probe = sample_matrix(self.input_schema, 1)
        if model_names is not None and not self._answers(probe):
            self._frame_columns = model_names
            if not self._answers(probe):
                self._frame_columns = None  # the probe itself is out of the model's domain
        holed = np.full_like(probe, np.nan)
        self.accepts_missing = self._answers(holed)

    def _answers(self, matrix: np.ndarray) -> bool:
        try:
            self.model.predict(self._input(matrix))
        except Exception:
            return False
        return True

    def _input(self, matrix: np.ndarray) -> Any:
        if self._frame_columns is None:
            return matrix
        import polars as pl

        return pl.from_numpy(matrix, schema=self._frame_columns, orient="row")

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._input(matrix)))

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._input(matrix))


# --- ONNX ------------------------------------------------------------------------------------------
_ORT_DTYPES = {
    "tensor(float)": (np.float32, "float"),
    "tensor(double)": (np.float64, "float"),
    "tensor(float16)": (np.float16, "float"),
    "tensor(int64)": (np.int64, "integer"),
    "tensor(int32)": (np.int32, "integer"),
    "tensor(int16)": (np.int16, "integer"),
    "tensor(int8)": (np.int8, "integer"),
    "tensor(uint8)": (np.uint8, "integer"),
    "tensor(bool)": (np.bool_, "boolean"),
}
_PROBA_NAMES = {"probabilities", "output_probability", "probability", "probs"}


def external_data_references(model: onnx.ModelProto) -> list[str]:
    """Names of every tensor stored outside the model: initializers, sparse
    initializers, constants in node attributes, in the main graph, every subgraph
    (If/Loop/Scan bodies), local functions and training graphs."""
    from onnx import AttributeProto, TensorProto

    found: list[str] = []

    def check(tensor: Any, where: str) -> None:
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            found.append(tensor.name or where)

    graphs: list[Any] = [model.graph]
    node_lists: list[Any] = [function.node for function in model.functions]
    for info in model.training_info:
        graphs.extend([info.initialization, info.algorithm])
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            for tensor in graph.initializer:
                check(tensor, "initializer")
            for sparse in graph.sparse_initializer:
                check(sparse.values, "sparse initializer")
                check(sparse.indices, "sparse initializer")
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                where = f"{node.op_type}.{attribute.name}"
                if attribute.type == AttributeProto.TENSOR or attribute.HasField("t"):
                    check(attribute.t, where)
                for tensor in attribute.tensors:
                    check(tensor, where)
                if attribute.HasField("sparse_tensor"):
                    check(attribute.sparse_tensor.values, where)
                    check(attribute.sparse_tensor.indices, where)
                for sparse in attribute.sparse_tensors:
                    check(sparse.values, where)
                    check(sparse.indices, where)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return found


def parse_onnx(data: bytes) -> onnx.ModelProto:
    """The model as protobuf, refusing corrupt files and any external data reference."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError("corrupt", f"The file is not a valid ONNX model ({_short(exc)})") from None
    if not model.HasField("graph") or not model.graph.output:
        raise ModelLoadError("corrupt", "The file is not a valid ONNX model: it holds no graph with outputs")
    external = external_data_references(model)
    if external:
        names = ", ".join(repr(name[:80]) for name in external[:5]) + (" …" if len(external) > 5 else "")
        raise ModelLoadError(
            "external_data",
            f"The ONNX model stores tensors as external data ({names}); only self-contained models "
            "are served. Save it with every tensor embedded (onnx.save_model(model, path, "
            "save_as_external_data=False)).",
        )
    return model


def _graph_classes(model: onnx.ModelProto) -> list[Any] | None:
    """Class labels stored in the graph's ai.onnx.ml classifier node, if any."""
    labels = None
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings" and attribute.strings:
                labels = [label.decode("utf-8", "replace") for label in attribute.strings]
            elif attribute.name in ("classlabels_int64s", "classlabels_ints") and attribute.ints:
                labels = list(attribute.ints)
    return labels


def session_options(intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # failures surface as PredictionError, not as log noise
    return options


class OnnxRuntime(Runtime):
    serving_form = "onnx"

    def __init__(
        self,
        data: bytes,
        *,
        fmt: ModelFormat = ModelFormat.onnx,
        declared: InputSchema | None = None,
        classes: list[Any] | None = None,
        supports_proba: bool | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        model = parse_onnx(data)  # before onnxruntime sees a byte
        self.format = fmt
        self.memory_bytes = memory_estimate(len(data), ModelFormat.onnx)
        try:
            self._session = ort.InferenceSession(
                data,
                sess_options=session_options(intra_op_threads, inter_op_threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise ModelLoadError("corrupt", f"onnxruntime could not load the model ({_short(exc)})") from None
        self._feeds: list[tuple[str, int, int, Any, int]] = []  # name, first column, end, dtype, rank
        kinds: list[str] = []
        names: list[str] = []
        inputs = self._session.get_inputs()
        for graph_input in inputs:
            if graph_input.type not in _ORT_DTYPES:
                raise ModelLoadError(
                    "unsupported_model",
                    f"Input {graph_input.name!r} is a {graph_input.type}; served models take numeric tensors",
                )
            dtype, kind = _ORT_DTYPES[graph_input.type]
            shape = list(graph_input.shape)
            if len(shape) == 1:
                width: int | None = 1
            elif len(shape) == 2:
                width = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else None
            else:
                raise ModelLoadError(
                    "unsupported_model",
                    f"Input {graph_input.name!r} has shape {shape}; served models take (rows, features)",
                )
            if width is None:
                if len(inputs) > 1 or declared is None:
                    raise ModelLoadError(
                        "invalid_schema",
                        f"Input {graph_input.name!r} does not fix its number of features; declare them in "
                        "the version's model_schema inputs",
                    )
                width = declared.width
            start = len(kinds)
            self._feeds.append((graph_input.name, start, start + width, dtype, len(shape)))
            kinds.extend([kind] * width)
            names.extend(
                [graph_input.name] if width == 1 else [f"{graph_input.name}_{k}" for k in range(width)]
            )
        self._batch_of_one = len(inputs) == 1 and next(iter(inputs[0].shape), None) == 1
        self._float32 = any(feed[3] is np.float32 or feed[3] is np.float16 for feed in self._feeds)
        self.input_schema = resolve_schema(declared, len(kinds), names if len(inputs) > 1 else None, kinds)
        outputs = self._session.get_outputs()
        self._label = outputs[0].name
        self.classes = classes if classes is not None else _graph_classes(model)
        self._proba = next(
            (o.name for o in outputs if o.name in _PROBA_NAMES and o.name != self._label), None
        )
        if self._proba is None and self.classes is not None and len(outputs) > 1:
            candidate = outputs[1]
            if candidate.type.startswith(("tensor(float", "tensor(double", "seq(map")):
                self._proba = candidate.name
        self.supports_proba = self._proba is not None if supports_proba is None else supports_proba
        if self.supports_proba and self.classes is None:
            shape = next(o.shape for o in outputs if o.name == self._proba)
            if len(shape) == 2 and isinstance(shape[1], int):
                self.classes = list(range(shape[1]))

    def _feed(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        if self._float32:
            self._check_float32(matrix)
        feed = {}
        for name, start, end, dtype, rank in self._feeds:
            block = matrix if start == 0 and end == matrix.shape[1] else matrix[:, start:end]
            block = block.astype(dtype, copy=False)
            feed[name] = np.ascontiguousarray(block[:, 0] if rank == 1 else block)
        return feed

    def _check_float32(self, matrix: np.ndarray) -> None:
        too_big = np.abs(matrix) > FLOAT32_MAX
        if too_big.any():
            i, j = (int(v) for v in np.argwhere(too_big)[0])
            name = self.input_schema.names[j]
            raise InputError(
                "too_large",
                f"Row {i}, feature {name!r}: {matrix[i, j]:g} is beyond the range this model takes (float32)",
                row=i,
                feature=name,
                field=f"{i}.{name}",
            )

    def _run(self, names: list[str], matrix: np.ndarray) -> list[Any]:
        if self._batch_of_one and matrix.shape[0] > 1:
            parts = [self._session.run(names, self._feed(matrix[i : i + 1])) for i in range(matrix.shape[0])]
            return [
                [value for part in parts for value in part[k]]
                if isinstance(parts[0][k], list)
                else np.concatenate([part[k] for part in parts])
                for k in range(len(names))
            ]
        return self._session.run(names, self._feed(matrix))

    @staticmethod
    def _labels(value: Any) -> np.ndarray:
        labels = np.asarray(value)
        return labels.ravel() if labels.ndim == 2 and labels.shape[1] == 1 else labels

    def _probabilities(self, value: Any) -> np.ndarray:
        if isinstance(value, list):  # a ZipMap output: one {label: probability} per row
            order = self.classes if self.classes is not None else list(value[0])
            return np.array([[row[c] for c in order] for row in value], dtype=np.float64)
        return np.asarray(value, dtype=np.float64)

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        return self._labels(self._run([self._label], matrix)[0])

    def _predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self._probabilities(self._run([self._proba], matrix)[0])

    def predict_with_proba(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.supports_proba:
            return self.predict(matrix), None
        self._check(matrix)
        try:
            labels, probabilities = self._run([self._label, self._proba], matrix)
            return self._labels(labels), self._probabilities(probabilities)
        except ServingError:
            raise
        except Exception as exc:
            raise PredictionError("prediction_failed", f"The model could not predict: {_short(exc)}") from exc


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
            raise ModelLoadError(
                "corrupt", f"The file is not a valid XGBoost model ({_short(exc)})"
            ) from None
        booster.set_param({"nthread": threads})
        self._booster = booster
        self.memory_bytes = memory_estimate(len(data), self.format)
        learner = config.get("learner", {})
        self._objective = str(learner.get("objective", {}).get("name", ""))
        num_class = int(learner.get("learner_model_param", {}).get("num_class", "0") or 0)
        types = [_XGB_FEATURE_TYPES.get(t, "float") for t in booster.feature_types or []] or None
        self.input_schema = resolve_schema(declared, booster.num_features(), booster.feature_names, types)
        if self._objective.startswith("binary:"):
            self.classes = _check_classes(classes, 2)
            self.supports_proba = self._objective != "binary:hinge"
        elif self._objective.startswith("multi:"):
            self.classes = _check_classes(classes, num_class)
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
                "corrupt", f"The file is not a valid LightGBM model ({_short(exc)})"
            ) from None
        self._booster = booster
        self._threads = threads
        self.memory_bytes = memory_estimate(len(data), self.format)
        header = _lightgbm_header(text)
        objective = header.get("objective", "").split(" ")[0]
        names = booster.feature_name()
        if names == [f"Column_{i}" for i in range(len(names))]:
            names = None  # LightGBM's own placeholders: the model has no names
        width = booster.num_feature()
        self.input_schema = resolve_schema(declared, width, names)
        if self.input_schema.source == "generated":
            ranges = _lightgbm_ranges(header)
            features = [
                Feature(f.name, f.type, *(ranges[i] if i < len(ranges) and ranges[i] else (None, None)))
                for i, f in enumerate(self.input_schema.features)
            ]
            self.input_schema = InputSchema(features, "generated")
        self._binary = objective == "binary"
        if self._binary:
            self.classes = _check_classes(classes, 2)
        elif objective in ("multiclass", "multiclassova"):
            self.classes = _check_classes(classes, int(header.get("num_class", "1")))
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


# --- skops and pickles ----------------------------------------------------------------------------
# scikit-learn internals a fitted estimator holds that skops does not trust by default.
_SKLEARN_INTERNALS = frozenset(
    {
        "numpy.dtype",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
        "sklearn.utils._bunch.Bunch",
    }
)


def _classes_of(module: Any, base: type, *, exclude: tuple[str, ...] = ()) -> set[str]:
    return {
        f"{value.__module__}.{value.__qualname__}"
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, base) and name not in exclude
    }


@cache
def allowed_skops_types() -> frozenset[str]:
    """The server's allow-list for skops files, built from scikit-learn itself: the
    internals above, distance metrics (but not the one wrapping a Python function),
    Gaussian-process kernels and the loss and link objects of gradient boosting."""
    from sklearn._loss import link, loss
    from sklearn.gaussian_process import kernels
    from sklearn.metrics import _dist_metrics

    allowed = set(_SKLEARN_INTERNALS)
    for base_name in ("DistanceMetric64", "DistanceMetric32"):
        base = getattr(_dist_metrics, base_name, None)
        if isinstance(base, type):
            allowed |= _classes_of(_dist_metrics, base, exclude=("PyFuncDistance64", "PyFuncDistance32"))
    allowed |= _classes_of(kernels, kernels.Kernel)
    allowed |= _classes_of(loss, loss.BaseLoss)
    allowed |= {
        f"{value.__module__}.{value.__qualname__}"
        for name, value in vars(loss).items()
        if isinstance(value, type) and name.startswith("Cy") and value.__module__.startswith("sklearn.")
    }
    allowed |= _classes_of(link, link.BaseLink)
    return frozenset(allowed)


def _check_archive(data: bytes, limit: int | None) -> None:
    """A skops file is a zip: refuse one whose members would unpack past the limit. The
    sizes a zip declares can lie, so each member is unpacked (in pieces, into nothing)
    and the bytes it really yields are counted."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = 0
            for info in archive.infolist():
                if limit is not None and unpacked + info.file_size > limit:
                    raise _unpacks_past(unpacked + info.file_size, limit)
                with archive.open(info) as member:
                    while chunk := member.read(1 << 20):
                        unpacked += len(chunk)
                        if limit is not None and unpacked > limit:
                            raise _unpacks_past(unpacked, limit)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, zlib.error) as exc:
        raise ModelLoadError("corrupt", f"The file is not a valid skops archive ({_short(exc)})") from None


def _unpacks_past(size: int, limit: int) -> ModelLoadError:
    return ModelLoadError(
        "too_large", f"The skops archive unpacks to at least {size:,} bytes; at most {limit:,} can be loaded"
    )


def load_skops(data: bytes, *, trusted: bool, max_bytes: int | None = None) -> Any:
    """The estimator in a skops file. Refuses types outside the allow-list unless the
    version is trusted, naming them."""
    import skops.io as sio

    _check_archive(data, max_bytes)
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelLoadError("corrupt", f"The file is not a valid skops archive ({_short(exc)})") from None
    unknown = sorted(name for name in found if name not in allowed_skops_types())
    if unknown and not trusted:
        listed = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ModelLoadError(
            "untrusted_types",
            f"The skops file holds types outside the allow-list of scikit-learn types: {listed}. "
            "An organisation admin has to mark the version trusted before it can be loaded.",
        )
    try:
        return sio.loads(data, trusted=list(found))
    except Exception as exc:
        raise ModelLoadError("corrupt", f"The skops file could not be loaded ({_short(exc)})") from None


def _not_trusted(fmt: ModelFormat) -> ModelLoadError:
    return ModelLoadError(
        "not_trusted",
        f"A {fmt} file runs code when it is loaded; an organisation admin has to mark this version "
        "trusted before it can be served. Prefer skops or ONNX, which load without running code.",
    )


def unpickle_trusted(data: bytes, fmt: ModelFormat, *, trusted: bool) -> Any:
    """Only for a version an organisation admin marked trusted: unpickling runs code."""
    if not trusted:
        raise _not_trusted(fmt)
    try:
        if fmt is ModelFormat.joblib:
            import joblib

            return joblib.load(io.BytesIO(data))
        return pickle.loads(data)  # noqa: S301 - an admin trusted this version
    except Exception as exc:
        raise ModelLoadError("corrupt", f"The {fmt} file could not be loaded ({_short(exc)})") from None


# --- entry points --------------------------------------------------------------------------------------
def resolve_format(declared: str | ModelFormat | None, data: bytes) -> ModelFormat:
    if declared is None:
        return detect_format(data[:HEAD_BYTES], io.BytesIO(data), len(data))
    try:
        return ModelFormat(declared)
    except ValueError:
        raise ModelLoadError(
            "unsupported_format", f"Models in the {str(declared)[:50]!r} format cannot be served"
        ) from None


def load_runtime(
    data: bytes,
    *,
    format: str | ModelFormat | None,
    trusted: bool = False,
    model_schema: Mapping[str, Any] | None = None,
    validation_sample: Any = None,
    convert: bool = True,
    threads: int = 1,
    inter_op_threads: int = 1,
    max_bytes: int | None = None,
    unpacked_max_bytes: int | None = None,
    check_trees: bool = True,
) -> Runtime:
    """A runtime for a model file. ``format`` is the version's recognised format (None:
    recognise it from the bytes); ``trusted`` is the admin's mark on the version. A
    scikit-learn model is served as ONNX when conversion agrees with it on
    ``validation_sample`` (rows) or on rows generated from the schema. ``max_bytes``
    bounds the file, and with ``unpacked_max_bytes`` what an archive unpacks to.
    ``check_trees=False`` hands XGBoost and LightGBM files to the native code unchecked:
    only to test what isolation contains."""
    started = time.perf_counter()
    fmt = resolve_format(format, data)
    if fmt in CODE_EXECUTING_FORMATS and not trusted:
        raise _not_trusted(fmt)
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelLoadError("too_large", _BYTE_LIMIT_MESSAGE.format(size=len(data), limit=max_bytes))
    declared = parse_model_schema(model_schema)
    classes = schema_classes(model_schema)
    runtime: Runtime
    if fmt is ModelFormat.onnx:
        runtime = OnnxRuntime(
            data,
            declared=declared,
            classes=classes,
            intra_op_threads=threads,
            inter_op_threads=inter_op_threads,
        )
    elif fmt is ModelFormat.xgboost_json:
        if check_trees:
            check_tree_model(data, fmt)
        runtime = XGBoostRuntime(data, declared=declared, classes=classes, threads=threads)
    elif fmt is ModelFormat.lightgbm_txt:
        if check_trees:
            check_tree_model(data, fmt)
        runtime = LightGBMRuntime(data, declared=declared, classes=classes, threads=threads)
    elif fmt in (ModelFormat.skops, ModelFormat.joblib, ModelFormat.pickle):
        from maestro.serving.conversion import serve_estimator

        limits = [limit for limit in (max_bytes, unpacked_max_bytes) if limit is not None]
        model = (
            load_skops(data, trusted=trusted, max_bytes=min(limits) if limits else None)
            if fmt is ModelFormat.skops
            else unpickle_trusted(data, fmt, trusted=trusted)
        )
        runtime = serve_estimator(
            model,
            fmt=fmt,
            declared=declared,
            file_size=len(data),
            convert=convert,
            validation_sample=validation_sample,
            threads=threads,
            inter_op_threads=inter_op_threads,
        )
    else:
        raise ModelLoadError(
            "unsupported_format",
            f"Models in the {fmt} format cannot be served; upload skops, ONNX, XGBoost JSON or LightGBM text",
        )
    runtime.load_seconds = time.perf_counter() - started
    return runtime


class VersionFile(Protocol):
    """What loading needs of a model version (a ``ModelVersion`` row, or a snapshot of one)."""

    id: str
    file_key: str | None
    sha256: str | None
    format: str | None
    trusted: bool
    model_schema: dict[str, Any] | None


def read_version_file(version: VersionFile, store: ArtifactStore, settings: Settings) -> bytes:
    """A version's file from the artifact store: an untrusted pickle is refused before
    its file is read, the size limit is checked before reading, and the bytes must match
    the checksum recorded at upload."""
    if not version.file_key:
        raise ModelLoadError("no_file", "This version has no model file")
    if version.format in CODE_EXECUTING_FORMATS and not version.trusted:
        raise _not_trusted(ModelFormat(version.format))
    limit = settings.max_model_bytes
    try:
        size = store.size(version.file_key)
        if size > limit:
            raise ModelLoadError("too_large", _BYTE_LIMIT_MESSAGE.format(size=size, limit=limit))
        data = store.read_bytes(version.file_key)
    except NotFound:
        raise ModelLoadError(
            "file_missing", "The version's model file is missing from the artifact store"
        ) from None
    if version.sha256 and hashlib.sha256(data).hexdigest() != version.sha256:
        raise ModelLoadError(
            "checksum_mismatch",
            "The stored model file does not match the checksum recorded when it was uploaded",
        )
    return data


def load_version(
    version: VersionFile,
    store: ArtifactStore,
    settings: Settings,
    *,
    validation_sample: Any = None,
    convert: bool = True,
    threads: int = 1,
    inter_op_threads: int = 1,
) -> Runtime:
    """A runtime for a version's file in the artifact store, loaded in this process
    (``read_version_file`` says what is refused before loading). Servers load versions
    through ``isolation.load_checked_version``, which checks the file in an isolated
    process first and serves XGBoost and LightGBM from one."""
    return load_runtime(
        read_version_file(version, store, settings),
        format=version.format,
        trusted=version.trusted,
        model_schema=version.model_schema,
        validation_sample=validation_sample,
        convert=convert,
        threads=threads,
        inter_op_threads=inter_op_threads,
        max_bytes=settings.max_model_bytes,
    )
