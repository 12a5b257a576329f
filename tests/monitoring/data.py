"""A generated customer-like table for the drift tests: normal, log-normal (income-like) and
integer columns, a numeric column with four values, and categoricals from 2 to 60 levels."""

from __future__ import annotations

from typing import Any

import numpy as np

from maestro.monitoring.profiles import ColumnKind

PLAN_SHARES = np.array([0.4, 0.3, 0.2, 0.1])
PLANS = np.array(["basic", "plus", "pro", "team"])
REGIONS = np.array([f"region-{i}" for i in range(8)])
CITIES = np.array([f"city-{i:02d}" for i in range(60)])
CITY_SHARES = 1 / np.arange(1, 61) / (1 / np.arange(1, 61)).sum()

COLUMNS: dict[str, ColumnKind] = {
    "age": "numeric",
    "income": "numeric",
    "score": "numeric",
    "tenure_months": "numeric",
    "balance": "numeric",
    "n_products": "numeric",
    "plan": "categorical",
    "region": "categorical",
    "city": "categorical",
    "is_member": "categorical",
}


def with_nulls(values: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    missing = rng.random(values.size) < rate
    if values.dtype.kind == "f":
        return np.where(missing, np.nan, values)
    out = values.astype(object)
    out[missing] = None
    return out


def plan_column(n: int, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return PLANS[rng.choice(PLANS.size, n, p=shares)]


def generate(n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "age": np.clip(np.round(rng.normal(42, 12, n)), 18, 90),
        "income": with_nulls(rng.lognormal(np.log(40_000), 0.6, n), 0.03, rng),
        "score": rng.normal(0, 1, n),
        "tenure_months": rng.poisson(24, n).astype(np.float64),
        "balance": with_nulls(rng.normal(1_000, 300, n), 0.05, rng),
        "n_products": rng.integers(1, 5, n).astype(np.float64),
        "plan": plan_column(n, PLAN_SHARES, rng),
        "region": REGIONS[rng.integers(0, REGIONS.size, n)],
        "city": CITIES[rng.choice(CITIES.size, n, p=CITY_SHARES)],
        "is_member": with_nulls(np.where(rng.random(n) < 0.35, "yes", "no"), 0.02, rng),
    }


def random_halves(n: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two halves of ``n`` rows each of one generated table, split at random."""
    rng = np.random.default_rng(seed)
    table = generate(2 * n, rng)
    order = rng.permutation(2 * n)
    first, second = order[:n], order[n:]
    return {k: v[first] for k, v in table.items()}, {k: v[second] for k, v in table.items()}
