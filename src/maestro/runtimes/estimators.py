"""scikit-learn estimators and other Python models, from skops files (types checked
against an allow-list kept here, never one taken from the file) or, for a version an
admin trusted, pickles."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
import zlib
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from maestro.runtimes.base import Runtime, brief, class_list, resolve_schema
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import (
    InputSchema,
    sample_matrix,
)

if TYPE_CHECKING:
    pass

# scikit-learn warns on every call when a model fitted on a data frame gets a matrix; the
# matrix's columns are already in the model's order (the input schema guarantees it).
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


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
        self.classes = class_list(classes) if classes is not None else None
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
        raise ModelLoadError("corrupt", f"The file is not a valid skops archive ({brief(exc)})") from None


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
        raise ModelLoadError("corrupt", f"The file is not a valid skops archive ({brief(exc)})") from None
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
        raise ModelLoadError("corrupt", f"The skops file could not be loaded ({brief(exc)})") from None


def not_trusted(fmt: ModelFormat) -> ModelLoadError:
    return ModelLoadError(
        "not_trusted",
        f"A {fmt} file runs code when it is loaded; an organisation admin has to mark this version "
        "trusted before it can be served. Prefer skops or ONNX, which load without running code.",
    )


def unpickle_trusted(data: bytes, fmt: ModelFormat, *, trusted: bool) -> Any:
    """Only for a version an organisation admin marked trusted: unpickling runs code."""
    if not trusted:
        raise not_trusted(fmt)
    try:
        if fmt is ModelFormat.joblib:
            import joblib

            return joblib.load(io.BytesIO(data))
        return pickle.loads(data)  # noqa: S301 - an admin trusted this version
    except Exception as exc:
        raise ModelLoadError("corrupt", f"The {fmt} file could not be loaded ({brief(exc)})") from None
