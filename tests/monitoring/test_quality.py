"""Quality counts on their own: counts merged from any split of the rows equal the counts
of all of them, taking a row out undoes it exactly, the stored form reads back the same,
and ROC AUC from the histograms stays within its reported bound of scikit-learn's, ties
and all."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from maestro.monitoring.quality import Labelled, QualityCounts, histogram_auc, score_bin

CLASSES = ("a", "b", "c")


def rows(seed: int, n: int) -> list[Labelled]:
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    actual = [CLASSES[int(np.argmax(s + rng.normal(scale=0.3, size=3)))] for s in scores]
    return [
        Labelled("label", y, CLASSES[int(np.argmax(s))], CLASSES, tuple(float(p) for p in s))
        for y, s in zip(actual, scores, strict=True)
    ]


def counted(labelled: list[Labelled]) -> QualityCounts:
    counts = QualityCounts()
    for row in labelled:
        counts.add(row)
    return counts


def test_any_split_merges_to_the_whole() -> None:
    every = rows(1, 600)
    whole = counted(every).figures()
    parts = [counted(every[i : i + 37]) for i in range(0, 600, 37)]
    merged = QualityCounts()
    for part in parts:
        merged.merge(QualityCounts.from_bytes(part.to_bytes()))
    for name, value in merged.figures().items():
        assert value == (None if whole[name] is None else pytest.approx(whole[name], rel=1e-12)), name


def test_taking_rows_out_undoes_them() -> None:
    kept, extra = rows(2, 300), rows(3, 100)
    counts = counted(kept + extra)
    for row in extra:
        counts.add(row, -1)
    assert QualityCounts.from_bytes(counts.to_bytes()).figures() == pytest.approx(counted(kept).figures())
    assert counts.confusion == counted(kept).confusion


@pytest.mark.parametrize("seed", range(5))
def test_auc_within_its_bound_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positives = np.concatenate([rng.beta(3, 2, size=400), np.full(50, 0.5), np.round(rng.random(100), 2)])
    negatives = np.concatenate([rng.beta(2, 3, size=500), np.full(30, 0.5), np.round(rng.random(80), 2)])
    histogram = [np.zeros(1000, dtype=np.int64) for _ in range(2)]
    for side, scores in zip(histogram, (positives, negatives), strict=True):
        np.add.at(side, [score_bin(s) for s in scores], 1)
    found = histogram_auc(*histogram)
    assert found is not None
    auc, bound = found
    exact = roc_auc_score([1] * len(positives) + [0] * len(negatives), np.concatenate([positives, negatives]))
    assert abs(auc - exact) <= bound
    assert bound < 0.02


def test_a_regressor_s_figures() -> None:
    counts = QualityCounts()
    for actual, predicted in ((0.0, 1.0), (2.0, 2.5), (4.0, 3.0)):
        counts.add(Labelled("value", actual, predicted))
    found = counts.figures()
    assert found["mae"] == pytest.approx(2.5 / 3)
    assert found["rmse"] == pytest.approx(np.sqrt(2.25 / 3))
    assert found["mape"] == pytest.approx((0.25 + 0.25) / 2)  # the actual 0 is skipped
    assert found["r2"] == pytest.approx(1 - 2.25 / 8)
    assert found["accuracy"] is None
    counts.add(Labelled("value", 5.0, None))  # a row that answered null: labelled, no error
    assert counts.figures()["label_count"] == 4
    assert counts.figures()["mae"] == found["mae"]
