"""ONNX models: parsed as plain protobuf first, refused when any tensor is stored as
external data (so a model never makes the server read a path of its choosing), then run
by onnxruntime with explicit thread counts."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from maestro.runtimes.base import FLOAT32_MAX, Runtime, brief, memory_estimate, resolve_schema
from maestro.runtimes.errors import InputError, ModelLoadError, PredictionError, ServingError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import (
    InputSchema,
)

if TYPE_CHECKING:
    import onnx


# scikit-learn warns on every call when a model fitted on a data frame gets a matrix; the
# matrix's columns are already in the model's order (the input schema guarantees it).
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)

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
        raise ModelLoadError("corrupt", f"The file is not a valid ONNX model ({brief(exc)})") from None
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
    labels: list[Any] | None = None
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
            raise ModelLoadError("corrupt", f"onnxruntime could not load the model ({brief(exc)})") from None
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

    def _run(self, names: list[str | None], matrix: np.ndarray) -> list[Any]:
        # A name is None only where the caller forced supports_proba on a graph without a
        # probability output; onnxruntime refuses it.
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
            raise PredictionError("prediction_failed", f"The model could not predict: {brief(exc)}") from exc
