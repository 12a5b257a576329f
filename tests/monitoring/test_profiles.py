"""Profiles merge like the data they summarise, survive a round trip through bytes, and
refuse bytes that are not a profile."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from datasketches import kll_doubles_sketch

from maestro.monitoring.profiles import (
    KLL_K,
    CategoricalProfile,
    LatencyProfile,
    NumericProfile,
    profile_columns,
)
from tests.monitoring.data import COLUMNS, generate

RANK_ERROR = kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)
RANKS = np.linspace(0.01, 0.99, 99)


def rank_errors(values: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """How far each quantile's true rank range (ties span one) lies from the asked rank."""
    ordered = np.sort(values)
    below = np.searchsorted(ordered, quantiles, side="left") / ordered.size
    up_to = np.searchsorted(ordered, quantiles, side="right") / ordered.size
    return np.maximum(np.maximum(below - RANKS, RANKS - up_to), 0.0)


@pytest.mark.parametrize("values", ["income", "tenure_months", "n_products"])
def test_merged_halves_equal_the_profile_of_all_data(values: str) -> None:
    column = generate(60_000, np.random.default_rng(1))[values]
    whole = NumericProfile().update(column)
    merged = NumericProfile().update(column[:25_000]).merge(NumericProfile().update(column[25_000:]))

    assert (merged.count, merged.null_count) == (whole.count, whole.null_count)
    assert (merged.min, merged.max) == (whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum, rel=1e-12)
    assert merged.sum_sq == pytest.approx(whole.sum_sq, rel=1e-12)
    assert merged.std() == pytest.approx(np.nanstd(column, ddof=1), rel=1e-9)
    assert merged.small_values == whole.small_values
    assert (merged.small_values is None) == (values != "n_products")
    finite = column[np.isfinite(column)]
    for profile in (merged, whole):
        assert rank_errors(finite, profile.sketch.get_quantiles(RANKS)).max() <= RANK_ERROR


def test_nan_and_infinity_are_nulls_kept_out_of_the_sketch() -> None:
    profile = NumericProfile().update(np.array([1.0, np.nan, 2.0, np.inf, -np.inf, 3.0]))

    assert (profile.count, profile.null_count, profile.non_null) == (6, 3, 3)
    assert (profile.sketch.n, profile.sum, profile.min, profile.max) == (3, 6.0, 1.0, 3.0)
    assert profile.null_rate == 0.5


def test_categorical_merge_is_exact_and_counts_nulls() -> None:
    table = generate(20_000, np.random.default_rng(2))
    for name in ("city", "is_member"):
        whole = CategoricalProfile().update(table[name])
        merged = (
            CategoricalProfile()
            .update(table[name][:7_000])
            .merge(CategoricalProfile().update(table[name][7_000:]))
        )
        assert merged.counts == whole.counts
        assert (merged.count, merged.null_count, merged.other) == (whole.count, whole.null_count, 0)
    members = CategoricalProfile().update(table["is_member"])
    assert members.null_count == sum(v is None for v in table["is_member"])
    assert set(members.counts) == {"yes", "no"}


def test_categorical_values_past_the_cap_go_to_other() -> None:
    profile = CategoricalProfile(cap=3).update(["a", "b", "c", "d", "d", None, "a"])
    assert profile.counts == {"a": 2, "b": 1, "c": 1}
    assert (profile.other, profile.null_count, profile.overflowed) == (2, 1, True)

    left = CategoricalProfile(cap=2).update(["x"] * 5 + ["y"])
    right = CategoricalProfile(cap=2).update(["z"] * 4 + ["y"])
    left.merge(right)
    assert left.counts == {"x": 5, "z": 4}
    assert left.other == 2
    assert left.non_null == 11


def test_latency_quantiles_within_one_percent_and_merge_exactly() -> None:
    latencies = np.random.default_rng(3).lognormal(np.log(0.02), 0.8, 80_000)
    latencies[:50] = 0.0
    whole = LatencyProfile().update(latencies)
    merged = LatencyProfile().update(latencies[:30_000]).merge(LatencyProfile().update(latencies[30_000:]))

    assert merged.bins == whole.bins
    assert (merged.count, merged.zero_count, merged.min, merged.max) == (80_000, 50, 0.0, whole.max)
    qs = [0.5, 0.9, 0.99, 0.999]
    for estimate, exact in zip(merged.quantiles(qs), np.quantile(latencies, qs), strict=True):
        assert estimate == pytest.approx(exact, rel=0.011)
    assert LatencyProfile().quantiles([0.5]) == [None]
    with pytest.raises(ValueError, match="negative"):
        LatencyProfile().update([0.1, -0.2])


def round_trip_cases() -> list[object]:
    rng = np.random.default_rng(4)
    merged = (
        NumericProfile().update(rng.normal(size=3_000)).merge(NumericProfile().update(rng.normal(size=500)))
    )
    return [
        NumericProfile(),
        NumericProfile().update([np.nan, 7.5]),
        NumericProfile().update(rng.normal(size=300)),
        NumericProfile().update(rng.lognormal(size=50_000)),
        merged,
        NumericProfile().update(rng.integers(0, 3, 1_000)),
        CategoricalProfile(),
        CategoricalProfile().update(["é", "a", None, "a", '"quoted"']),
        CategoricalProfile(cap=2).update(["a", "b", "c"]),
        LatencyProfile(),
        LatencyProfile().update(rng.exponential(0.05, 10_000)),
    ]


@pytest.mark.parametrize("profile", round_trip_cases())
def test_round_trip_through_bytes(profile: NumericProfile | CategoricalProfile | LatencyProfile) -> None:
    restored = type(profile).from_bytes(profile.to_bytes())

    assert restored.to_bytes() == profile.to_bytes()
    if isinstance(profile, NumericProfile):
        assert isinstance(restored, NumericProfile)
        assert restored.sketch.n == profile.sketch.n
        if not profile.sketch.is_empty():
            assert restored.sketch.get_quantiles(RANKS) == profile.sketch.get_quantiles(RANKS)
    if isinstance(profile, LatencyProfile):
        assert isinstance(restored, LatencyProfile)
        assert restored.quantiles([0.5, 0.99]) == profile.quantiles([0.5, 0.99])


def reseal(data: bytes) -> bytes:
    """``data`` with its checksum recomputed, as a forger would."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("kind", [NumericProfile, CategoricalProfile, LatencyProfile])
def test_corrupt_bytes_are_refused(kind: type[NumericProfile | CategoricalProfile | LatencyProfile]) -> None:
    profile = kind()
    values = np.random.default_rng(5).lognormal(size=5_000)
    profile.update(values.astype(str) if kind is CategoricalProfile else values)
    data = profile.to_bytes()

    for cut in range(0, len(data) - 1, max(1, len(data) // 200)):
        with pytest.raises(ValueError, match=r"profile|sketch"):
            kind.from_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"profile|sketch"):
            kind.from_bytes(reseal(data[:cut] + data[-4:]))
    with pytest.raises(ValueError, match="magic"):
        kind.from_bytes(b"NOPE" + data[4:])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        kind.from_bytes(bytes(flipped))
    others = [k for k in (NumericProfile, CategoricalProfile, LatencyProfile) if k is not kind]
    for other in others:
        with pytest.raises(ValueError, match="magic"):
            other.from_bytes(data)


def test_a_forged_sketch_whose_layout_lies_is_refused_before_it_is_read() -> None:
    data = NumericProfile().update(np.arange(5_000.0)).to_bytes()
    sketch_start = len(data) - 4 - len(NumericProfile().update(np.arange(5_000.0)).sketch.serialize())
    body = bytearray(data[:-4])
    body[sketch_start + 18] += 1  # one more level than the items that follow
    with pytest.raises(ValueError, match="quantile sketch"):
        NumericProfile.from_bytes(reseal(bytes(body) + b"\0\0\0\0"))

    body = bytearray(data[:-4])
    body[sketch_start + 20 : sketch_start + 24] = struct.pack("<I", 10**6)  # a level past the buffer
    with pytest.raises(ValueError, match="quantile sketch"):
        NumericProfile.from_bytes(reseal(bytes(body) + b"\0\0\0\0"))

    counts = NumericProfile().update(np.arange(5_000.0))
    counts.count += 1  # a header that no longer matches its sketch
    with pytest.raises(ValueError, match="disagree"):
        NumericProfile.from_bytes(counts.to_bytes())


def test_profile_columns_from_a_matrix_or_columns() -> None:
    table = generate(2_000, np.random.default_rng(6))
    names, kinds = list(COLUMNS), list(COLUMNS.values())
    profiles = profile_columns(names, table, kinds)

    assert [type(profiles[name]).__name__ for name in names] == [
        "NumericProfile" if kind == "numeric" else "CategoricalProfile" for kind in kinds
    ]
    income = profiles["income"]
    assert isinstance(income, NumericProfile)
    assert income.null_count == int(np.isnan(table["income"]).sum())

    numeric = [name for name in names if COLUMNS[name] == "numeric"]
    matrix = np.column_stack([table[name] for name in numeric])
    from_matrix = profile_columns(numeric, matrix, ["numeric"] * len(numeric))
    from_columns = profile_columns(numeric, [table[name] for name in numeric], ["numeric"] * len(numeric))

    def summary(profile: object) -> tuple[object, ...]:
        assert isinstance(profile, NumericProfile)
        return (profile.count, profile.null_count, profile.sum, profile.min, profile.max, profile.sketch.n)

    for name in numeric:
        assert summary(from_matrix[name]) == summary(from_columns[name]) == summary(profiles[name])
    with pytest.raises(ValueError, match="columns for"):
        profile_columns(numeric[:2], matrix, ["numeric", "numeric"])
