"""Fixtures for deployments and inference: an organisation with one person per role and
an inference-only API key, another organisation, and two tiny LogisticRegressions on four
named features that answer opposite classes. Test modules load them with
``pytest_plugins = ["tests.deployments.fixtures"]``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.deployments.platform import FEATURES, Team, Tiny
from tests.factories import Factory


def make_team(factory: Factory) -> Team:
    """Acme (an admin, a developer, a viewer, a project and an inference key) and Globex."""
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    other_org = factory.organization("Globex")
    outsider = factory.user(other_org, "admin")
    return Team(
        org=org,
        admin=admin,
        developer=factory.user(org, "developer"),
        viewer=factory.user(org, "viewer"),
        project=factory.project(org, admin, "organization", name="Fraud"),
        other_org=other_org,
        outsider=outsider,
        other_project=factory.project(other_org, outsider, "organization", name="Globex fraud"),
        inference_key=factory.api_key(org, {"inference": ["read"]}),
    )


@pytest.fixture
def team(factory: Factory) -> Team:
    return make_team(factory)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, len(FEATURES)))  # noqa: N806 - the usual name for a feature matrix
    y = (X[:, 0] + X[:, 3] > 0).astype(int)
    return Tiny(X, LogisticRegression().fit(X, y), LogisticRegression().fit(X, 1 - y))
