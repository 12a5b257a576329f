"""Tiny real models on 20 features, trained once per test process: scikit-learn's
logistic regression, random forest and ridge, an XGBoost and a LightGBM classifier."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge

from tests.runtimes.modelfiles import FEATURES


@dataclass(frozen=True)
class Data:
    X: np.ndarray
    y: np.ndarray  # binary 0/1
    y3: np.ndarray  # three classes
    target: np.ndarray  # a regression target
    fresh: np.ndarray  # rows no model saw in training


@pytest.fixture(scope="session")
def data() -> Data:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(240, FEATURES))
    signal = rows[:, 0] + 0.5 * rows[:, 1] - 0.8 * rows[:, 2]
    y = (signal + rng.normal(scale=0.3, size=len(rows)) > 0).astype(int)
    y3 = np.digitize(signal, [-0.5, 0.5])
    target = 3.0 * rows[:, 0] - 2.0 * rows[:, 3] + 0.1 * rng.normal(size=len(rows)) + 10.0
    return Data(rows, y, y3, target, rng.normal(size=(100, FEATURES)))


@pytest.fixture(scope="session")
def logreg(data: Data) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(data.X, data.y)


@pytest.fixture(scope="session")
def forest(data: Data) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=25, max_depth=6, random_state=0).fit(data.X, data.y)


@pytest.fixture(scope="session")
def ridge(data: Data) -> Ridge:
    return Ridge().fit(data.X, data.target)


@pytest.fixture(scope="session")
def booster(data: Data) -> xgboost.XGBClassifier:
    return xgboost.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1).fit(data.X, data.y)


@pytest.fixture(scope="session")
def lgbm(data: Data) -> lightgbm.LGBMClassifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lightgbm.LGBMClassifier(n_estimators=15, num_leaves=8, verbose=-1, n_jobs=1).fit(
            data.X, data.y
        )
