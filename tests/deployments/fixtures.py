"""Fixtures for deployments and inference: two tiny LogisticRegressions on four named
features that answer opposite classes. (Who is who, the ``world`` fixture, is the
suite's own.) Loaded by ``pytest_plugins`` in ``tests/conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.deployments.platform import FEATURES, Tiny


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, len(FEATURES)))  # noqa: N806 - the usual name for a feature matrix
    y = (X[:, 0] + X[:, 3] > 0).astype(int)
    return Tiny(X, LogisticRegression().fit(X, y), LogisticRegression().fit(X, 1 - y))
