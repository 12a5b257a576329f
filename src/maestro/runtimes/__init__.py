"""Model serving: runtimes that load model files safely, the input handling they share
and the cache of loaded models that deployments and the model server build on.

Heavy libraries (onnxruntime, skl2onnx, XGBoost, LightGBM) are imported when a model of
theirs is first loaded, not when this package is imported.
"""

from maestro.runtimes.base import Runtime
from maestro.runtimes.cache import ModelCache
from maestro.runtimes.errors import InputError, ModelLoadError, PredictionError, ServingError
from maestro.runtimes.inputs import (
    Feature,
    InputSchema,
    columns_to_matrix,
    matrix_from_json,
    tensor_to_matrix,
    to_matrix,
)
from maestro.runtimes.service import load_runtime, load_version

__all__ = [
    "Feature",
    "InputError",
    "InputSchema",
    "ModelCache",
    "ModelLoadError",
    "PredictionError",
    "Runtime",
    "ServingError",
    "columns_to_matrix",
    "load_runtime",
    "load_version",
    "matrix_from_json",
    "tensor_to_matrix",
    "to_matrix",
]
