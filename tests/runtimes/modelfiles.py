"""Model files as each library saves them."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import skops.io as sio
from skl2onnx import to_onnx

FEATURES = 20


def skops_bytes(model: Any) -> bytes:
    return sio.dumps(model)


def onnx_bytes(model: Any, *, zipmap: bool = False) -> bytes:
    options = None if zipmap else {"zipmap": False}
    return to_onnx(model, np.zeros((1, FEATURES), dtype=np.float32), options=options).SerializeToString()


def xgboost_bytes(model: Any, tmp: Path) -> bytes:
    path = tmp / "model.json"
    model.save_model(path)
    return path.read_bytes()


def lightgbm_bytes(model: Any) -> bytes:
    booster = model.booster_ if hasattr(model, "booster_") else model
    return booster.model_to_string().encode()


def joblib_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def pickle_bytes(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def linear_onnx(scale: float, *, fixed_reshape: bool = False) -> bytes:
    """A hand-built ONNX model answering ``scale * sum(features)``; with
    ``fixed_reshape`` it loads but fails on every input (a reshape to 7 values)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((FEATURES, 1), scale, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y" if not fixed_reshape else "Z"])]
    initializers = [weights]
    if fixed_reshape:
        initializers.append(numpy_helper.from_array(np.array([7], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["Z", "shape"], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
