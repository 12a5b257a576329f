"""Whether a column, and a dataset, drifted between a reference window and a current one.

Each column is judged by the rule that behaved well on real shifts (measured against
Evidently's defaults, which missed a 10-point category mix change and flagged shifts that
do not matter at large n). ``n`` below is the number of non-missing values per side, and
the small-sample rules apply when ``min(n_ref, n_cur) <= SMALL_SAMPLE_MAX`` (1,000):

numeric, more than 5 distinct values
    small n: two-sample Kolmogorov-Smirnov, drift when p < 0.05.
    large n: Wasserstein distance divided by the reference's standard deviation (on at most
    50,000 values per side, drawn with a fixed seed): drift at >= 0.1, warning at >= 0.05
    (half the drift threshold: a shift of half a tenth of a standard deviation is worth a
    look, and random halves of 10k rows stay near 0.01-0.02). A numeric column with at most
    5 distinct values (pooled) is judged as categorical.
categorical (top 20 levels chosen on the pooled data, the rest in ``__other__``)
    small n: chi² on the 2 x levels table, the smallest levels merged until every expected
    count is >= 5; a binary column uses the two-proportion z-test.
    large n: Jensen-Shannon distance (base 2), drift at >= 0.07, warning at >= 0.035, and
    only when the chi² test on the same table also gives p < 0.05. Why not 0.1: a 10-point
    change in one category's share moves JS by 0.085 at the least (two categories near
    50 %: 50/50 -> 60/40), 0.094-0.10 on typical mixes, so 0.1 misses it; 0.07 flags every
    such change, while a 5-point change (JS >= 0.042) is a warning. The chi² guard keeps
    sampling noise out just above 1,000 rows, where random halves with 21 levels reach JS
    ~0.08 (JS under no change shrinks as 1/sqrt(n): ~0.027 at 10k, ~0.009 at 100k).
null rate
    small n (counting all rows): two-proportion z-test, p < 0.05; large n: |change| >= 0.05.
    A null-rate change alone makes the column's verdict ``drift`` (``null_rate_drifted``).
unseen categories
    ``unseen_rate`` is the share of current values never seen in the reference; unseen
    values also enter the table above, as their own level or in ``__other__``.

A side with fewer than ``MIN_COUNT`` (30) rows gives ``insufficient_data``: below that the
tests' large-sample approximations are poor and one row moves a share by over 3 points. With
enough rows but fewer than 30 non-missing values, only the null rate is judged.

From profiles (how production runs), categorical statistics come from exact counts and equal
those from raw values below the profile's cardinality cap. Numeric statistics come from the
KLL sketches (k = 400, normalised rank error eps = 0.68 % per sketch at 99 % confidence):

- KS distance: the largest difference of the two sketches' CDFs over every retained item,
  within eps_ref + eps_cur (about 0.014) of the exact distance. The p-value is the
  asymptotic Kolmogorov distribution's at n_ref*n_cur/(n_ref+n_cur) for the distance less
  that error, so a sketch never makes a shift look more significant than it is. A sketch
  of at most k values holds them all: then the values are compared exactly, as from raw.
- Wasserstein: the exact distance between the two sketches' weighted retained items. It
  is within (eps_ref + eps_cur) * (max - min) of the exact one; that worst case is loose
  (rank errors do not all point one way): at 100k rows a side the normalised distance
  stayed within 0.015 of the exact for normal data and 0.03 for log-normal (sigma 0.6),
  mostly above it when nothing changed, well under the 0.05 warning threshold.
- Reference standard deviation: from the profile's sum and sum of squares (exact up to
  float rounding).

Dataset level: the share of judged columns that drifted, ``dataset_drift`` when it reaches
``threshold``, a warning when one of the named important features drifted, and
``any_drift_corrected``: some effect-size column drifted, or some p-value test stays
significant after a Bonferroni correction (p < 0.05 / number of p-value tests); with 17
independent tests at 0.05, at least one false flag is otherwise 58 % likely.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from datasketches import kll_doubles_sketch
from scipy import stats
from scipy.spatial.distance import jensenshannon

from maestro.monitoring.profiles import (
    CategoricalProfile,
    ColumnKind,
    ColumnProfile,
    NumericProfile,
    finite_values,
)

ALPHA = 0.05
SMALL_SAMPLE_MAX = 1_000
MIN_COUNT = 30
MAX_SAMPLE = 50_000
SAMPLE_SEED = 0
MAX_LEVELS = 20
SMALL_DISTINCT_MAX = 5
WASSERSTEIN_DRIFT = 0.1
WASSERSTEIN_WARNING = 0.05
JS_DRIFT = 0.07
JS_WARNING = 0.035
NULL_RATE_DELTA = 0.05
MIN_EXPECTED = 5.0
DATASET_DRIFT_SHARE = 0.5

Verdict = Literal["ok", "warning", "drift", "insufficient_data"]
Test = Literal["ks", "wasserstein", "chi2", "z", "jensen_shannon", "none"]


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: ColumnKind
    test: Test
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drifted: bool
    warning: bool
    verdict: Verdict
    n_reference: int
    n_current: int
    null_rate_reference: float
    null_rate_current: float
    unseen_rate: float | None
    null_rate_drifted: bool = False


@dataclass(frozen=True)
class DatasetDrift:
    columns: list[ColumnDrift]
    share_drifted: float
    dataset_drift: bool
    any_drift_corrected: bool
    warnings: list[str]


@dataclass(frozen=True)
class _Decision:
    test: Test
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drifted: bool
    warning: bool


_NO_TEST = _Decision("none", None, None, None, False, False)


def _two_proportion_p(x_ref: int, n_ref: int, x_cur: int, n_cur: int) -> tuple[float, float]:
    """(z, two-sided p) for equal proportions x_ref/n_ref and x_cur/n_cur."""
    pooled = (x_ref + x_cur) / (n_ref + n_cur)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_cur))
    if se == 0:
        return 0.0, 1.0
    z = (x_ref / n_ref - x_cur / n_cur) / se
    return z, float(2 * stats.norm.sf(abs(z)))


def _merge_small_cells(table: np.ndarray) -> np.ndarray:
    """The 2 x levels table with its smallest levels merged until every expected count is
    at least ``MIN_EXPECTED`` (or one level is left)."""
    columns = sorted(table.T.tolist(), key=sum)
    total = table.sum()
    smaller_row = table.sum(axis=1).min()
    while len(columns) > 1 and smaller_row * sum(columns[0]) / total < MIN_EXPECTED:
        first, second = columns.pop(0), columns.pop(0)
        columns.append([a + b for a, b in zip(first, second, strict=True)])
        columns.sort(key=sum)
    return np.array(columns, dtype=np.float64).T


def _chi2(table: np.ndarray) -> tuple[float, float]:
    merged = _merge_small_cells(table)
    if merged.shape[1] < 2 or merged.sum(axis=1).min() == 0:
        return 0.0, 1.0
    result = stats.chi2_contingency(merged, correction=False)
    return float(result.statistic), float(result.pvalue)


def _category_table(
    ref_counts: Mapping[str, int], ref_other: int, cur_counts: Mapping[str, int], cur_other: int
) -> np.ndarray:
    """2 x levels counts: the ``MAX_LEVELS`` most frequent values of the pooled data, then
    ``__other__`` for the rest (and for values a profile already kept only in its bucket)."""
    pooled = dict(ref_counts)
    for value, count in cur_counts.items():
        pooled[value] = pooled.get(value, 0) + count
    levels = sorted(pooled, key=lambda value: (-pooled[value], value))
    top, rest = levels[:MAX_LEVELS], levels[MAX_LEVELS:]
    table = np.array(
        [[counts.get(value, 0) for value in top] for counts in (ref_counts, cur_counts)], dtype=np.float64
    )
    other = np.array(
        [
            ref_other + sum(ref_counts.get(v, 0) for v in rest),
            cur_other + sum(cur_counts.get(v, 0) for v in rest),
        ],
        dtype=np.float64,
    )
    if other.any():
        table = np.column_stack([table, other])
    return table[:, table.sum(axis=0) > 0]


def _categorical_decision(table: np.ndarray) -> _Decision:
    n_ref, n_cur = table.sum(axis=1)
    if min(n_ref, n_cur) <= SMALL_SAMPLE_MAX:
        if table.shape[1] == 2:
            z, p = _two_proportion_p(int(table[0, 0]), int(n_ref), int(table[1, 0]), int(n_cur))
            return _Decision("z", abs(z), p, ALPHA, p < ALPHA, False)
        statistic, p = _chi2(table)
        return _Decision("chi2", statistic, p, ALPHA, p < ALPHA, False)
    distance = float(jensenshannon(table[0] / n_ref, table[1] / n_cur, base=2))
    _, p = _chi2(table)
    significant = p < ALPHA
    drifted = significant and distance >= JS_DRIFT
    warning = significant and not drifted and distance >= JS_WARNING
    return _Decision("jensen_shannon", distance, None, JS_DRIFT, drifted, warning)


def _unseen_rate(ref_counts: Mapping[str, int], cur_counts: Mapping[str, int], n_cur: int) -> float:
    unseen = sum(count for value, count in cur_counts.items() if value not in ref_counts)
    return unseen / n_cur if n_cur else 0.0


def _wasserstein_decision(distance: float, ref_std: float) -> _Decision:
    normalised = distance / ref_std if ref_std > 0 else (math.inf if distance > 0 else 0.0)
    drifted = normalised >= WASSERSTEIN_DRIFT
    warning = not drifted and normalised >= WASSERSTEIN_WARNING
    return _Decision("wasserstein", normalised, None, WASSERSTEIN_DRIFT, drifted, warning)


def _subsample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= MAX_SAMPLE:
        return values
    return rng.choice(values, MAX_SAMPLE, replace=False)


def wasserstein(u: np.ndarray, v: np.ndarray) -> float:
    """The first Wasserstein distance of two samples, as ``scipy.stats.wasserstein_distance``
    computes it unweighted, in half its time: the area between the two empirical CDFs
    (for samples of one size, the mean gap between their sorted values)."""
    u, v = np.sort(u), np.sort(v)
    if u.size == v.size:
        return float(np.mean(np.abs(u - v)))
    points = np.concatenate([u, v])
    points.sort()
    below_u = np.searchsorted(u, points[:-1], side="right") / u.size
    below_v = np.searchsorted(v, points[:-1], side="right") / v.size
    return float(np.sum(np.abs(below_u - below_v) * np.diff(points)))


def _numeric_decision_values(ref: np.ndarray, cur: np.ndarray) -> _Decision:
    if min(ref.size, cur.size) <= SMALL_SAMPLE_MAX:
        result = stats.ks_2samp(ref, cur)
        p = float(result.pvalue)
        return _Decision("ks", float(result.statistic), p, ALPHA, p < ALPHA, False)
    rng = np.random.default_rng(SAMPLE_SEED)
    distance = wasserstein(_subsample(ref, rng), _subsample(cur, rng))
    return _wasserstein_decision(distance, float(np.std(ref, ddof=1)))


def _sketch_items(sketch: kll_doubles_sketch) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.array(list(sketch), dtype=np.float64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _rank_error(sketch: kll_doubles_sketch) -> float:
    if not sketch.is_estimation_mode():
        return 0.0
    return float(kll_doubles_sketch.get_normalized_rank_error(sketch.k, False))


def _numeric_decision_profiles(ref: NumericProfile, cur: NumericProfile) -> _Decision:
    ref_items, ref_weights = _sketch_items(ref.sketch)
    cur_items, cur_weights = _sketch_items(cur.sketch)
    n_ref, n_cur = ref.non_null, cur.non_null
    if min(n_ref, n_cur) <= SMALL_SAMPLE_MAX:
        if not (ref.sketch.is_estimation_mode() or cur.sketch.is_estimation_mode()):
            return _numeric_decision_values(ref_items, cur_items)
        points = np.union1d(ref_items, cur_items)
        ref_cdf = np.asarray(ref.sketch.get_cdf(points, True))[:-1]
        cur_cdf = np.asarray(cur.sketch.get_cdf(points, True))[:-1]
        distance = float(np.abs(ref_cdf - cur_cdf).max())
        floor = max(distance - _rank_error(ref.sketch) - _rank_error(cur.sketch), 0.0)
        p = float(stats.kstwo.sf(floor, round(n_ref * n_cur / (n_ref + n_cur))))
        return _Decision("ks", distance, p, ALPHA, p < ALPHA, False)
    distance = stats.wasserstein_distance(ref_items, cur_items, ref_weights, cur_weights)
    return _wasserstein_decision(float(distance), ref.std())


def _null_rate_drifted(ref_nulls: int, ref_total: int, cur_nulls: int, cur_total: int) -> bool:
    if min(ref_total, cur_total) <= SMALL_SAMPLE_MAX:
        return _two_proportion_p(ref_nulls, ref_total, cur_nulls, cur_total)[1] < ALPHA
    return abs(ref_nulls / ref_total - cur_nulls / cur_total) >= NULL_RATE_DELTA


def _column_drift(
    name: str,
    kind: ColumnKind,
    totals: tuple[int, int],
    nulls: tuple[int, int],
    decide: Any,
    unseen_rate: float | None,
) -> ColumnDrift:
    """Apply the count rules around ``decide`` (called only with enough values)."""
    (ref_total, cur_total), (ref_nulls, cur_nulls) = totals, nulls
    n_ref, n_cur = ref_total - ref_nulls, cur_total - cur_nulls
    null_rates = (ref_nulls / ref_total if ref_total else 0.0, cur_nulls / cur_total if cur_total else 0.0)
    if min(ref_total, cur_total) < MIN_COUNT:
        return ColumnDrift(
            column=name,
            kind=kind,
            test="none",
            statistic=None,
            p_value=None,
            threshold=None,
            drifted=False,
            warning=False,
            verdict="insufficient_data",
            n_reference=n_ref,
            n_current=n_cur,
            null_rate_reference=null_rates[0],
            null_rate_current=null_rates[1],
            unseen_rate=None,
        )
    null_drifted = _null_rate_drifted(ref_nulls, ref_total, cur_nulls, cur_total)
    decision: _Decision = decide() if min(n_ref, n_cur) >= MIN_COUNT else _NO_TEST
    drifted = decision.drifted or null_drifted
    warning = decision.warning and not drifted
    verdict: Verdict
    if drifted:
        verdict = "drift"
    elif decision is _NO_TEST:
        verdict = "insufficient_data"
    else:
        verdict = "warning" if warning else "ok"
    return ColumnDrift(
        name,
        kind,
        decision.test,
        decision.statistic,
        decision.p_value,
        decision.threshold,
        drifted,
        warning,
        verdict,
        n_ref,
        n_cur,
        *null_rates,
        unseen_rate if decision is not _NO_TEST else None,
        null_drifted,
    )


def _value_counts(values: np.ndarray) -> dict[str, int]:
    distinct, counts = np.unique(values, return_counts=True)
    return dict(zip(map(repr, distinct.tolist()), counts.tolist(), strict=True))


def _counts_decision(
    ref_counts: Mapping[str, int], ref_other: int, cur_counts: Mapping[str, int], cur_other: int
) -> tuple[Any, float]:
    table = _category_table(ref_counts, ref_other, cur_counts, cur_other)
    unseen = _unseen_rate(ref_counts, cur_counts, sum(cur_counts.values()) + cur_other)
    return (lambda: _categorical_decision(table)), unseen


def column_drift_from_values(name: str, reference: Any, current: Any, kind: ColumnKind) -> ColumnDrift:
    """Judge one column from its raw reference and current values (numeric: array-like of
    numbers, NaN missing; categorical: strings, None missing)."""
    if kind == "numeric":
        ref, ref_missing = finite_values(reference)
        cur, cur_missing = finite_values(current)
        totals = (ref.size + ref_missing, cur.size + cur_missing)
        nulls = (ref_missing, cur_missing)
        if np.unique(np.concatenate([ref, cur])).size <= SMALL_DISTINCT_MAX:
            decide, unseen = _counts_decision(_value_counts(ref), 0, _value_counts(cur), 0)
            return _column_drift(name, kind, totals, nulls, decide, unseen)
        return _column_drift(name, kind, totals, nulls, lambda: _numeric_decision_values(ref, cur), None)
    if kind == "categorical":
        ref_profile = CategoricalProfile(cap=sys.maxsize).update(reference)
        cur_profile = CategoricalProfile(cap=sys.maxsize).update(current)
        return column_drift_from_profiles(name, ref_profile, cur_profile)
    raise ValueError(f"unknown column kind {kind!r}")


def column_drift_from_profiles(name: str, reference: ColumnProfile, current: ColumnProfile) -> ColumnDrift:
    """Judge one column from two profiles of the same kind (see the module docstring for
    what a sketch changes)."""
    totals = (reference.count, current.count)
    nulls = (reference.null_count, current.null_count)
    if isinstance(reference, CategoricalProfile) and isinstance(current, CategoricalProfile):
        decide, unseen = _counts_decision(reference.counts, reference.other, current.counts, current.other)
        return _column_drift(name, "categorical", totals, nulls, decide, unseen)
    if isinstance(reference, NumericProfile) and isinstance(current, NumericProfile):
        ref_small, cur_small = reference.small_values, current.small_values
        if (
            ref_small is not None
            and cur_small is not None
            and len(ref_small.keys() | cur_small.keys()) <= (SMALL_DISTINCT_MAX)
        ):
            decide, unseen = _counts_decision(
                {repr(v): c for v, c in ref_small.items()}, 0, {repr(v): c for v, c in cur_small.items()}, 0
            )
            return _column_drift(name, "numeric", totals, nulls, decide, unseen)
        return _column_drift(
            name, "numeric", totals, nulls, lambda: _numeric_decision_profiles(reference, current), None
        )
    raise ValueError(f"{name}: profiles of different kinds ({reference.kind}, {current.kind})")


def dataset_drift(
    results: Sequence[ColumnDrift], important: Sequence[str] = (), threshold: float = DATASET_DRIFT_SHARE
) -> DatasetDrift:
    """Summarise column results: the share of judged columns that drifted against
    ``threshold``, warnings for drifted important features and columns without enough data,
    and the multiple-testing-corrected "any column drifted"."""
    judged = [r for r in results if r.verdict != "insufficient_data"]
    drifted = [r for r in judged if r.drifted]
    share = len(drifted) / len(judged) if judged else 0.0
    tested = [r for r in judged if r.p_value is not None]
    corrected_alpha = ALPHA / len(tested) if tested else 0.0
    any_corrected = any(r.drifted and r.p_value is None for r in judged) or any(
        r.p_value is not None and r.p_value < corrected_alpha for r in tested
    )
    important_set = set(important)
    warnings = [
        f"important feature {r.column!r} drifted ({r.test})" for r in drifted if r.column in important_set
    ]
    warnings += [f"column {r.column!r} has too few values to judge" for r in results if r not in judged]
    if not judged:
        warnings.append("no column had enough values to judge")
    return DatasetDrift(list(results), share, bool(judged) and share >= threshold, any_corrected, warnings)
