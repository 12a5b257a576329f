"""Model quality from ground truth: the counts one labelled row adds (or, replaced,
takes away), their sum over any window, and the metrics computed from that sum.

Counts, not scores, are what is stored and merged (averaging per-window AUCs or F1s
would be wrong): for a classifier the confusion counts per (actual, predicted) class,
and for each class with probabilities a histogram of its score over ``BINS`` equal bins
of [0, 1], split by whether the row's actual class is that class, plus the summed log
loss; for a regressor n, the sums of absolute, squared and absolute percentage errors
(rows whose actual value is 0 are skipped there, and counted), and the sums of y and y².

Exactness: accuracy, precision, recall and F1 come from exact counts, so they equal
scikit-learn's on the same rows (``zero_division=0``). ROC AUC is computed from the
histograms, a pair of rows whose scores share a bin counting half: it is off by at most
half the share of (positive, negative) pairs that share a bin, and that bound is
reported beside it (``roc_auc_max_error``). Log loss, MAE, RMSE, MAPE and R² come from
float sums, equal to scikit-learn's up to rounding (R² from the sums of y and y² can
lose digits when the values' mean is huge against their spread).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

BINS = 1000  # score histogram bins over [0, 1]
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)  # probabilities clipped to [eps, 1 - eps], as scikit-learn
FORMAT = 1

# The quality figures a window has, in the order the metrics show them.
CLASSIFICATION = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "roc_auc_max_error",
    "log_loss",
)
REGRESSION = ("mae", "rmse", "mape", "r2")
QUALITY_FIGURES = ("label_count", "label_coverage", *CLASSIFICATION, *REGRESSION)
# What alert rules may watch: every figure but the AUC's error bound.
QUALITY_QUANTITIES = tuple(name for name in QUALITY_FIGURES if name != "roc_auc_max_error")

Figures = dict[str, int | float | None]


@dataclass(frozen=True, slots=True)
class Labelled:
    """One labelled row as its counts see it: a classifier's (``answers == "label"``)
    actual and predicted class names, with its probabilities by class when it gave
    them (None for a probability the model answered as NaN); or a regressor's actual
    and predicted numbers. ``predicted`` is None when the row answered null: the row
    is then counted as labelled and adds nothing else."""

    answers: str
    actual: Any
    predicted: Any
    classes: tuple[str, ...] | None = None
    probabilities: tuple[float | None, ...] | None = None


@dataclass
class QualityCounts:
    """Mergeable, subtractable counts of labelled rows (see the module docstring)."""

    labels: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    classes: list[str] = field(default_factory=list)  # with scores, in the order first seen
    positives: dict[str, np.ndarray] = field(default_factory=dict)  # class -> BINS counts
    negatives: dict[str, np.ndarray] = field(default_factory=dict)
    scored: int = 0  # rows with the actual class's probability (log loss)
    log_loss_sum: float = 0.0
    n: int = 0  # regression rows
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0
    ape_sum: float = 0.0
    ape_count: int = 0
    ape_skipped: int = 0  # actual 0: no percentage error
    y_sum: float = 0.0
    y_squared_sum: float = 0.0

    # --- one row in or out ------------------------------------------------------------------
    def add(self, row: Labelled, sign: int = 1) -> None:
        """Count ``row`` (``sign`` 1), or take it out again (-1)."""
        self.labels += sign
        if row.predicted is None:
            return
        if row.answers == "label":
            self._add_class(row, sign)
        else:
            self._add_value(float(row.actual), float(row.predicted), sign)

    def _add_class(self, row: Labelled, sign: int) -> None:
        actual, predicted = str(row.actual), str(row.predicted)
        self.confusion[actual, predicted] += sign
        if not self.confusion[actual, predicted]:
            del self.confusion[actual, predicted]
        if row.classes is None or row.probabilities is None:
            return
        for name in row.classes:  # the model's order, which picks a binary model's positive class
            if name not in self.classes:
                self.classes.append(name)
        for name, score in zip(row.classes, row.probabilities, strict=True):
            if score is None:
                continue
            histogram = self._histogram(self.positives if name == actual else self.negatives, name)
            histogram[score_bin(score)] += sign
            if name == actual:
                self.scored += sign
                self.log_loss_sum += sign * row_log_loss(score)

    def _histogram(self, side: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in self.classes:
            self.classes.append(name)
        held = side.get(name)
        if held is None:
            held = side[name] = np.zeros(BINS, dtype=np.int64)
        return held

    def _add_value(self, actual: float, predicted: float, sign: int) -> None:
        error = predicted - actual
        self.n += sign
        self.abs_error_sum += sign * abs(error)
        self.squared_error_sum += sign * error * error
        if actual == 0:
            self.ape_skipped += sign
        else:
            self.ape_count += sign
            self.ape_sum += sign * abs(error) / abs(actual)
        self.y_sum += sign * actual
        self.y_squared_sum += sign * actual * actual

    # --- windows ---------------------------------------------------------------------------
    def merge(self, other: QualityCounts) -> QualityCounts:
        """Add ``other``'s counts into these (returns self)."""
        self.labels += other.labels
        self.confusion.update(other.confusion)
        for side, theirs in ((self.positives, other.positives), (self.negatives, other.negatives)):
            for name, histogram in theirs.items():
                self._histogram(side, name)[:] += histogram
        for name in other.classes:
            if name not in self.classes:
                self.classes.append(name)
        self.scored += other.scored
        self.log_loss_sum += other.log_loss_sum
        self.n += other.n
        self.abs_error_sum += other.abs_error_sum
        self.squared_error_sum += other.squared_error_sum
        self.ape_sum += other.ape_sum
        self.ape_count += other.ape_count
        self.ape_skipped += other.ape_skipped
        self.y_sum += other.y_sum
        self.y_squared_sum += other.y_squared_sum
        return self

    # --- stored form -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """JSON, histograms sparse (a minute holds few labels): floats as the shortest
        text that reads back to the same number, so nothing drifts through storage."""

        def sparse(histogram: np.ndarray) -> list[list[int]]:
            where = np.flatnonzero(histogram)
            return [[int(b), int(histogram[b])] for b in where]

        return orjson.dumps(
            {
                "format": FORMAT,
                "labels": self.labels,
                "confusion": [[a, p, n] for (a, p), n in self.confusion.items() if n],
                "classes": self.classes,
                "positives": {name: sparse(h) for name, h in self.positives.items() if h.any()},
                "negatives": {name: sparse(h) for name, h in self.negatives.items() if h.any()},
                "scored": self.scored,
                "log_loss_sum": self.log_loss_sum,
                "regression": [
                    self.n,
                    self.abs_error_sum,
                    self.squared_error_sum,
                    self.ape_sum,
                    self.ape_count,
                    self.ape_skipped,
                    self.y_sum,
                    self.y_squared_sum,
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QualityCounts:
        body = orjson.loads(data)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError("quality counts: unknown format")
        counts = cls(labels=int(body["labels"]), classes=[str(name) for name in body["classes"]])
        counts.confusion = Counter({(str(a), str(p)): int(n) for a, p, n in body["confusion"]})
        for side, stored in ((counts.positives, body["positives"]), (counts.negatives, body["negatives"])):
            for name, pairs in stored.items():
                histogram = np.zeros(BINS, dtype=np.int64)
                for b, n in pairs:
                    histogram[int(b)] = int(n)
                side[str(name)] = histogram
        counts.scored, counts.log_loss_sum = int(body["scored"]), float(body["log_loss_sum"])
        n, abs_sum, sq_sum, ape_sum, ape_count, ape_skipped, y_sum, y_sq = body["regression"]
        counts.n, counts.ape_count, counts.ape_skipped = int(n), int(ape_count), int(ape_skipped)
        counts.abs_error_sum, counts.squared_error_sum, counts.ape_sum = (
            float(abs_sum),
            float(sq_sum),
            float(ape_sum),
        )
        counts.y_sum, counts.y_squared_sum = float(y_sum), float(y_sq)
        return counts

    # --- figures ---------------------------------------------------------------------------
    def figures(self) -> Figures:
        """Every quality figure of these counts (``label_coverage`` aside, which needs the
        logged rows): None where it is undefined or does not fit the model."""
        found: Figures = dict.fromkeys(QUALITY_FIGURES)
        found["label_count"] = self.labels
        found.update(self._classification())
        found.update(self._regression())
        return found

    def _classification(self) -> Figures:
        total = sum(self.confusion.values())
        if total <= 0:
            return {}
        names = sorted({a for a, _ in self.confusion} | {p for _, p in self.confusion})
        index = {name: i for i, name in enumerate(names)}
        matrix = np.zeros((len(names), len(names)), dtype=np.int64)
        for (actual, predicted), n in self.confusion.items():
            matrix[index[actual], index[predicted]] += n
        true_positives = np.diag(matrix).astype(np.float64)
        predicted_totals = matrix.sum(axis=0).astype(np.float64)
        support = matrix.sum(axis=1).astype(np.float64)
        precision = _ratio(true_positives, predicted_totals)
        recall = _ratio(true_positives, support)
        f1 = _ratio(2 * true_positives, predicted_totals + support)  # 2tp / (2tp + fp + fn)
        weights = support / support.sum()
        found: Figures = {
            "accuracy": float(true_positives.sum() / total),
            "precision_macro": float(precision.mean()),
            "recall_macro": float(recall.mean()),
            "f1_macro": float(f1.mean()),
            "precision_weighted": float((precision * weights).sum()),
            "recall_weighted": float((recall * weights).sum()),
            "f1_weighted": float((f1 * weights).sum()),
        }
        found["roc_auc"], found["roc_auc_max_error"] = self._roc_auc()
        if self.scored > 0:
            found["log_loss"] = self.log_loss_sum / self.scored
        return found

    def _roc_auc(self) -> tuple[float | None, float | None]:
        """Binary (two classes with scores): the second class's AUC, as scikit-learn
        scores the second probability column. More classes: the mean of each class's
        one-vs-rest AUC, over the classes whose positives and negatives are both
        labelled. None when no class has both."""
        scored = self.classes[-1:] if len(self.classes) == 2 else self.classes
        found = [
            auc
            for name in scored
            if (auc := histogram_auc(self.positives.get(name), self.negatives.get(name))) is not None
        ]
        if not found:
            return None, None
        return float(np.mean([a for a, _ in found])), float(np.mean([e for _, e in found]))

    def _regression(self) -> Figures:
        if self.n <= 0:
            return {}
        found: Figures = {
            "mae": max(self.abs_error_sum, 0.0) / self.n,
            "rmse": math.sqrt(max(self.squared_error_sum, 0.0) / self.n),
            "mape": self.ape_sum / self.ape_count if self.ape_count > 0 else None,
        }
        spread = self.y_squared_sum - self.y_sum * self.y_sum / self.n
        found["r2"] = 1.0 - self.squared_error_sum / spread if self.n > 1 and spread > 0 else None
        return found


def score_bin(score: float) -> int:
    """The histogram bin of a probability (clipped to [0, 1]; 1.0 in the last bin)."""
    return min(max(int(score * BINS), 0), BINS - 1)


def row_log_loss(probability: float) -> float:
    return -math.log(min(max(probability, LOG_LOSS_EPS), 1.0 - LOG_LOSS_EPS))


def histogram_auc(positives: np.ndarray | None, negatives: np.ndarray | None) -> tuple[float, float] | None:
    """ROC AUC of one class from its scores' histograms among rows of that class
    (``positives``) and of the others (``negatives``), with its error bound: pairs in
    different bins are ordered exactly, pairs sharing a bin count half, so the AUC is off
    by at most half the share of pairs that share a bin. None without both sides."""
    if positives is None or negatives is None:
        return None
    n_positive, n_negative = int(positives.sum()), int(negatives.sum())
    if n_positive <= 0 or n_negative <= 0:
        return None
    up, down = positives.astype(np.float64), negatives.astype(np.float64)
    below = np.cumsum(down) - down  # negatives in lower bins
    pairs = float(n_positive) * float(n_negative)
    tied = float((up * down).sum())
    return (float((up * below).sum()) + 0.5 * tied) / pairs, 0.5 * tied / pairs


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's
    ``zero_division=0``)."""
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
