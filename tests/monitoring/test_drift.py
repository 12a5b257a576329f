"""Drift verdicts on generated data: random halves of one table stay quiet, real shifts are
flagged from raw values and from profiles alike, and the count rules hold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from maestro.monitoring.drift import (
    JS_DRIFT,
    MIN_COUNT,
    ColumnDrift,
    column_drift_from_profiles,
    column_drift_from_values,
    dataset_drift,
    wasserstein,
)
from maestro.monitoring.profiles import CategoricalProfile, NumericProfile, profile_columns
from tests.monitoring.data import COLUMNS, PLAN_SHARES, generate, plan_column, random_halves

NAMES, KINDS = list(COLUMNS), list(COLUMNS.values())
SEEDS = range(20)


def judge(reference: dict[str, Any], current: dict[str, Any], from_profiles: bool) -> list[ColumnDrift]:
    if not from_profiles:
        return [
            column_drift_from_values(name, reference[name], current[name], kind)
            for name, kind in COLUMNS.items()
        ]
    ref, cur = profile_columns(NAMES, reference, KINDS), profile_columns(NAMES, current, KINDS)
    return [column_drift_from_profiles(name, ref[name], cur[name]) for name in NAMES]


@pytest.mark.parametrize("from_profiles", [False, True])
def test_random_halves_of_1k_rows_flag_columns_only_at_the_tests_level(from_profiles: bool) -> None:
    """At 1,000 rows a side each column is a p < 0.05 test: about 1 in 20 flags by chance,
    which the Bonferroni-corrected flag and the dataset rule absorb."""
    column_flags = dataset_alarms = corrected_alarms = 0
    for seed in SEEDS:
        results = judge(*random_halves(1_000, seed), from_profiles)
        summary = dataset_drift(results)
        assert {r.test for r in results} == {"ks", "chi2", "z"}
        column_flags += sum(r.drifted for r in results)
        dataset_alarms += summary.dataset_drift
        corrected_alarms += summary.any_drift_corrected
    assert column_flags <= 0.1 * len(SEEDS) * len(COLUMNS)
    assert dataset_alarms <= 1
    assert corrected_alarms <= 2


@pytest.mark.parametrize(("rows", "from_profiles"), [(10_000, False), (100_000, True)])
def test_random_halves_of_large_windows_flag_no_column(rows: int, from_profiles: bool) -> None:
    dataset_alarms = 0
    for seed in SEEDS:
        results = judge(*random_halves(rows, seed), from_profiles)
        assert {r.test for r in results} == {"wasserstein", "jensen_shannon"}
        assert [r.column for r in results if r.verdict != "ok"] == []
        dataset_alarms += dataset_drift(results).dataset_drift
    assert dataset_alarms == 0


def shifted_pair(rows: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reference and a current window where income rose 15 % and 10 points of the plan
    mix moved from "basic" to "plus"; the other columns are unchanged."""
    rng = np.random.default_rng(seed)
    reference, current = generate(rows, rng), generate(rows, rng)
    current["income"] = current["income"] * 1.15
    current["plan"] = plan_column(rows, PLAN_SHARES + np.array([-0.1, 0.1, 0, 0]), rng)
    return reference, current


@pytest.mark.parametrize(("rows", "seeds"), [(1_000, range(20)), (100_000, range(3))])
def test_income_and_category_mix_shifts_are_flagged(rows: int, seeds: range) -> None:
    """At 1,000 rows a +15 % income shift is a KS distance of about 0.1 against a critical
    0.06, so a few seeds in a hundred may miss; from sketches the test is conservative."""
    missed = {(column, path): 0 for column in ("income", "plan") for path in ("values", "profiles")}
    for seed in seeds:
        reference, current = shifted_pair(rows, seed)
        for path in ("values", "profiles"):
            results = {r.column: r for r in judge(reference, current, path == "profiles")}
            for column in ("income", "plan"):
                missed[column, path] += results[column].verdict != "drift"
            if rows > 1_000:
                assert [c for c, r in results.items() if r.verdict != "ok"] == ["income", "plan"]
    allowed = 0 if rows > 1_000 else 1
    assert missed[("plan", "values")] == missed[("plan", "profiles")] == 0
    assert missed[("income", "values")] <= allowed
    assert missed[("income", "profiles")] <= allowed + 3


def test_the_least_visible_ten_point_change_is_flagged_at_large_n() -> None:
    """50/50 -> 60/40 is the 10-point change with the smallest Jensen-Shannon distance (0.085)."""
    rng = np.random.default_rng(7)
    reference = np.where(rng.random(100_000) < 0.5, "yes", "no")
    current = np.where(rng.random(100_000) < 0.6, "yes", "no")
    result = column_drift_from_values("member", reference, current, "categorical")
    assert result.test == "jensen_shannon"
    assert result.statistic is not None and JS_DRIFT < result.statistic < 0.1
    assert result.verdict == "drift"

    five_points = np.where(rng.random(100_000) < 0.55, "yes", "no")
    assert column_drift_from_values("member", reference, five_points, "categorical").verdict == "warning"


def test_a_shift_that_does_not_matter_is_not_flagged_at_large_n() -> None:
    rng = np.random.default_rng(8)
    age = np.round(rng.normal(42, 12, 200_000))
    result = column_drift_from_values("age", age[:100_000], age[100_000:] + 0.5, "numeric")
    assert result.test == "wasserstein"
    assert result.verdict != "drift"  # a p-value test would call this: p ~ 1e-21 in the measured data
    assert result.statistic is not None and result.statistic < 0.06


def test_too_few_values_give_insufficient_data() -> None:
    rng = np.random.default_rng(9)
    few = column_drift_from_values("score", rng.normal(size=500), rng.normal(size=MIN_COUNT - 1), "numeric")
    assert (few.verdict, few.test, few.drifted) == ("insufficient_data", "none", False)
    enough = column_drift_from_values("score", rng.normal(size=500), rng.normal(size=MIN_COUNT), "numeric")
    assert (enough.verdict, enough.test) == ("ok", "ks")

    plans = ["basic"] * 20
    assert column_drift_from_values("plan", plans, plans, "categorical").verdict == "insufficient_data"
    summary = dataset_drift([few, enough])
    assert summary.share_drifted == 0.0
    assert summary.warnings == ["column 'score' has too few values to judge"]


def test_unseen_category_rate() -> None:
    reference = ["a"] * 30 + ["b"] * 20
    current = ["a"] * 25 + ["b"] * 15 + ["c"] * 6 + ["d"] * 4 + [None] * 10
    result = column_drift_from_values("letter", reference, current, "categorical")
    assert result.unseen_rate == pytest.approx(10 / 50)
    assert result.null_rate_current == pytest.approx(10 / 60)

    from_profiles = column_drift_from_profiles(
        "letter", CategoricalProfile().update(reference), CategoricalProfile().update(current)
    )
    assert from_profiles == result


@pytest.mark.parametrize("rows", [400, 50_000])
def test_null_rate_change_is_flagged_alone(rows: int) -> None:
    rng = np.random.default_rng(10)
    reference, current = rng.normal(size=rows), rng.normal(size=rows)
    reference[rng.random(rows) < 0.02] = np.nan
    current[rng.random(rows) < 0.12] = np.nan
    result = column_drift_from_values("balance", reference, current, "numeric")
    assert result.null_rate_drifted
    assert result.verdict == "drift"
    assert result.statistic is not None and result.statistic < (0.1 if rows < 1_000 else 0.05)

    barely = current.copy()
    barely[np.isnan(current)] = rng.normal(size=int(np.isnan(current).sum()))
    barely[rng.random(rows) < 0.03] = np.nan
    assert not column_drift_from_values("balance", reference, barely, "numeric").null_rate_drifted

    all_missing = np.full(rows, np.nan)
    gone = column_drift_from_profiles(
        "balance", NumericProfile().update(reference), NumericProfile().update(all_missing)
    )
    assert (gone.verdict, gone.test, gone.null_rate_current) == ("drift", "none", 1.0)


def test_numeric_column_with_few_values_is_judged_as_categorical() -> None:
    rng = np.random.default_rng(11)
    reference = rng.choice([1.0, 2.0, 3.0], 600, p=[0.5, 0.3, 0.2])
    current = rng.choice([1.0, 2.0, 3.0], 600, p=[0.3, 0.5, 0.2])
    raw = column_drift_from_values("n_products", reference, current, "numeric")
    profiled = column_drift_from_profiles(
        "n_products", NumericProfile().update(reference), NumericProfile().update(current)
    )
    assert raw == profiled
    assert (raw.test, raw.kind, raw.verdict) == ("chi2", "numeric", "drift")


def column(name: str, p_value: float | None, drifted: bool, test: str = "ks") -> ColumnDrift:
    return ColumnDrift(
        name, "numeric", test, 0.0, p_value, 0.05, drifted, False, "drift" if drifted else "ok",  # type: ignore[arg-type]
        500, 500, 0.0, 0.0, None,
    )  # fmt: skip


def test_dataset_level_share_important_features_and_correction() -> None:
    quiet = [column(f"c{i}", 0.5, False) for i in range(8)]
    one_weak = dataset_drift([*quiet, column("age", 0.01, True), column("x", 0.3, False)], important=["age"])
    assert one_weak.share_drifted == pytest.approx(0.1)
    assert not one_weak.dataset_drift
    assert not one_weak.any_drift_corrected  # 0.01 > 0.05 / 10
    assert one_weak.warnings == ["important feature 'age' drifted (ks)"]

    one_strong = dataset_drift([*quiet, column("age", 0.001, True), column("x", 0.3, False)])
    assert one_strong.any_drift_corrected
    assert one_strong.warnings == []

    effect = dataset_drift([*quiet, column("income", None, True, "wasserstein")])
    assert effect.any_drift_corrected

    half = [column(f"d{i}", 0.001, True) for i in range(5)] + [column(f"q{i}", 0.5, False) for i in range(5)]
    assert dataset_drift(half).dataset_drift
    assert not dataset_drift(half, threshold=0.6).dataset_drift


def test_profiles_of_different_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="different kinds"):
        column_drift_from_profiles("x", NumericProfile(), CategoricalProfile())


@pytest.mark.parametrize(("n_ref", "n_cur"), [(5_000, 5_000), (5_000, 3_001), (1, 7), (2_000, 2_000)])
def test_the_wasserstein_distance_is_scipys(n_ref: int, n_cur: int) -> None:
    rng = np.random.default_rng(n_ref + n_cur)
    ref = rng.lognormal(size=n_ref)
    cur = np.round(rng.lognormal(0.1, size=n_cur), 1)  # ties, within and across the samples
    assert wasserstein(ref, cur) == pytest.approx(stats.wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12)
    assert wasserstein(cur, cur.copy()) == 0.0
