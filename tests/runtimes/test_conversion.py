"""scikit-learn models are served as ONNX only when the conversion answers like the
original; otherwise the original serves and the runtime says why."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from maestro.runtimes import InputError, load_runtime
from maestro.runtimes.conversion import feature_ranges
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import skops_bytes


class TestConverted:
    @pytest.mark.parametrize("name", ["logreg", "forest"])
    def test_classifiers_agree_on_rows_never_seen(self, name: str, data: Data, request: Any) -> None:
        model = request.getfixturevalue(name)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving_form == "onnx"
        assert runtime.conversion == {"status": "converted", "reason": runtime.conversion["reason"]}
        assert "agrees with the original on 256 validation rows" in runtime.conversion["reason"]
        assert runtime.predict(data.fresh).tolist() == model.predict(data.fresh).tolist()
        np.testing.assert_allclose(
            runtime.predict_proba(data.fresh), model.predict_proba(data.fresh), atol=1e-5
        )

    def test_a_regressor_agrees_within_relative_tolerance(self, ridge: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(ridge), format="skops")
        assert runtime.serving == "onnx (converted from skops)"
        np.testing.assert_allclose(runtime.predict(data.fresh), ridge.predict(data.fresh), rtol=1e-5)

    @pytest.mark.filterwarnings("ignore:X does not have valid feature names")
    def test_a_pipeline_fitted_on_a_frame_keeps_its_feature_names(self, data: Data) -> None:
        names = [f"m{i}" for i in range(data.X.shape[1])]
        frame = pl.DataFrame(data.X, schema=names, orient="row")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, data.y)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving == "onnx (converted from skops)"
        assert runtime.input_schema.names == tuple(names)
        rows = [dict(zip(names, row, strict=True)) for row in data.fresh.tolist()]
        expected = model.predict(pl.DataFrame(data.fresh, schema=names, orient="row"))
        assert runtime.predict(runtime.to_matrix(rows)).tolist() == expected.tolist()

    def test_the_callers_sample_is_the_validation_sample(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(logreg), format="skops", validation_sample=data.X[:100])
        assert runtime.conversion is not None
        assert "on 100 validation rows" in runtime.conversion["reason"]
        # A handful of rows is topped up with generated ones.
        runtime = load_runtime(skops_bytes(logreg), format="skops", validation_sample=data.X[:10].tolist())
        assert runtime.conversion is not None
        assert "on 266 validation rows" in runtime.conversion["reason"]

    def test_a_model_without_probabilities_stays_without(self, data: Data) -> None:
        model = SGDClassifier(loss="hinge", random_state=0).fit(data.X, data.y)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving_form == "onnx"
        assert not runtime.supports_proba
        assert runtime.predict(data.fresh).tolist() == model.predict(data.fresh).tolist()

    def test_missing_values_answered_differently_are_refused(self, data: Data) -> None:
        holed = data.X.copy()
        holed[np.random.default_rng(3).random(holed.shape) < 0.1] = np.nan
        model = RandomForestClassifier(n_estimators=10, random_state=0).fit(holed, data.y)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving_form == "onnx"
        assert "missing values (NaN) are refused" in runtime.conversion["reason"]
        assert not runtime.accepts_missing
        with pytest.raises(InputError) as caught:
            runtime.predict(holed[:20])
        assert caught.value.reason == "nan"
        complete = data.fresh
        assert runtime.predict(complete).tolist() == model.predict(complete).tolist()
        original = load_runtime(skops_bytes(model), format="skops", convert=False)
        assert original.accepts_missing
        assert original.predict(holed[:20]).tolist() == model.predict(holed[:20]).tolist()


class TestServedAsItIs:
    def test_a_model_skl2onnx_cannot_convert(self, data: Data) -> None:
        model = KernelRidge(alpha=1.0).fit(data.X, data.target)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving == "sklearn (from skops)"
        assert runtime.conversion is not None
        assert runtime.conversion["status"] == "failed"
        assert "KernelRidge" in runtime.conversion["reason"]
        assert np.array_equal(runtime.predict(data.fresh), model.predict(data.fresh))

    def test_a_conversion_that_disagrees(self, data: Data) -> None:
        model = KNeighborsClassifier(weights="distance").fit(data.X, data.y)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.serving == "sklearn (from skops)"
        assert runtime.conversion is not None
        assert runtime.conversion["status"] == "disagreed"
        assert "differ" in runtime.conversion["reason"]
        assert np.array_equal(runtime.predict_proba(data.fresh), model.predict_proba(data.fresh))


class TestValidationSample:
    def test_ranges_follow_a_leading_scaler(self, data: Data) -> None:
        shifted = data.X * 100 + 5000
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(shifted, data.y)
        ranges = feature_ranges(model, shifted.shape[1])
        low, high = ranges[0]
        assert low < shifted[:, 0].mean() < high
        assert high - low > 100

    def test_ranges_follow_tree_thresholds(self, data: Data) -> None:
        shifted = data.X + 1000
        model = RandomForestClassifier(n_estimators=5, random_state=0).fit(shifted, data.y)
        bounded = [r for r in feature_ranges(model, shifted.shape[1]) if r is not None]
        assert bounded
        assert all(900 < low < high < 1100 for low, high in bounded)
