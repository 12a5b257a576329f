"""Objects that model files in the tests are made of: a pickle payload that would
create a file when unpickled, a harmless model for trusted pickles, and a transformer
outside scikit-learn (an untrusted type for skops)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class CreatesFile:
    """Unpickling this calls ``open(path, "x")``: the file appearing proves code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "x"))


class BenignModel:
    """A plain Python model with weights, as a trusted pickle might hold."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_features_in_ = len(weights)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(matrix) @ self.weights


class Doubler(TransformerMixin, BaseEstimator):
    def fit(self, matrix: np.ndarray, y: Any = None) -> Doubler:
        self.n_features_in_ = np.asarray(matrix).shape[1]
        return self

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(matrix) * 2.0
