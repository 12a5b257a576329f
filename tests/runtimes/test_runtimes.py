"""Every format loads into a runtime that answers as the original model does, with one
interface: predictions, probabilities, classes, the input schema and what is serving."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import orjson
import polars as pl
import pytest
import xgboost
from sklearn.linear_model import LogisticRegression

from maestro.config import Settings
from maestro.registry.models import ModelVersion
from maestro.runtimes import InputError, ModelLoadError, PredictionError, load_runtime, load_version
from maestro.storage import ArtifactStore
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import (
    FEATURES,
    joblib_bytes,
    lightgbm_bytes,
    onnx_bytes,
    pickle_bytes,
    skops_bytes,
    xgboost_bytes,
)

GENERATED = [f"f{i}" for i in range(FEATURES)]


def assert_same_classifier(runtime: Any, model: Any, rows: np.ndarray) -> None:
    assert runtime.predict(rows).tolist() == model.predict(rows).tolist()
    np.testing.assert_allclose(runtime.predict_proba(rows), model.predict_proba(rows), atol=1e-5)
    assert runtime.classes == model.classes_.tolist()


class TestScikitLearnFiles:
    def test_skops_logistic_regression_is_served_as_onnx(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(logreg), format="skops")
        assert runtime.serving == "onnx (converted from skops)"
        assert runtime.serving_form == "onnx"
        assert runtime.conversion is not None and runtime.conversion["status"] == "converted"
        assert_same_classifier(runtime, logreg, data.fresh)

    def test_skops_random_forest_is_served_as_onnx(self, forest: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(forest), format="skops")
        assert runtime.serving == "onnx (converted from skops)"
        assert_same_classifier(runtime, forest, data.fresh)

    def test_skops_without_conversion_serves_scikit_learn_exactly(self, forest: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(forest), format="skops", convert=False)
        assert runtime.serving == "sklearn (from skops)"
        assert runtime.conversion is None
        assert runtime.predict(data.fresh).tolist() == forest.predict(data.fresh).tolist()
        assert np.array_equal(runtime.predict_proba(data.fresh), forest.predict_proba(data.fresh))

    def test_a_regressor_has_no_classes_and_no_probabilities(self, ridge: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(ridge), format="skops")
        assert runtime.classes is None
        assert not runtime.supports_proba
        np.testing.assert_allclose(runtime.predict(data.fresh), ridge.predict(data.fresh), rtol=1e-5)
        with pytest.raises(PredictionError) as caught:
            runtime.predict_proba(data.fresh)
        assert caught.value.reason == "proba_not_supported"
        assert "regressor" in caught.value.message

    @pytest.mark.parametrize("saver", [joblib_bytes, pickle_bytes], ids=["joblib", "pickle"])
    def test_a_trusted_pickle_loads(self, saver: Any, logreg: Any, data: Data) -> None:
        runtime = load_runtime(saver(logreg), format=None, trusted=True)
        assert runtime.format in ("joblib", "pickle")
        assert runtime.serving == f"onnx (converted from {runtime.format})"
        assert_same_classifier(runtime, logreg, data.fresh)

    def test_string_labels_come_back_as_labels(self, data: Data) -> None:
        labels = np.where(data.y == 1, "approve", "decline")
        model = LogisticRegression(max_iter=1000).fit(data.X, labels)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.classes == ["approve", "decline"]
        assert runtime.predict(data.fresh).tolist() == model.predict(data.fresh).tolist()


class TestOnnxFiles:
    def test_onnx_predicts_like_the_model_it_came_from(self, forest: Any, data: Data) -> None:
        runtime = load_runtime(onnx_bytes(forest), format="onnx")
        assert runtime.serving == "onnx"
        assert runtime.conversion is None
        assert_same_classifier(runtime, forest, data.fresh)

    def test_zipmap_probabilities_come_back_as_a_matrix(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(onnx_bytes(logreg, zipmap=True), format="onnx")
        assert_same_classifier(runtime, logreg, data.fresh)

    def test_labels_and_probabilities_in_one_pass(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(onnx_bytes(logreg), format="onnx")
        labels, probabilities = runtime.predict_with_proba(data.fresh)
        assert labels.tolist() == logreg.predict(data.fresh).tolist()
        assert probabilities is not None
        np.testing.assert_allclose(probabilities, logreg.predict_proba(data.fresh), atol=1e-5)

    def test_the_format_is_recognised_when_not_given(self, logreg: Any) -> None:
        assert load_runtime(onnx_bytes(logreg), format=None).format == "onnx"


class TestXGBoost:
    def test_binary_classifier(self, booster: Any, data: Data, tmp_path: Path) -> None:
        runtime = load_runtime(xgboost_bytes(booster, tmp_path), format="xgboost-json")
        assert runtime.serving == "xgboost"
        assert_same_classifier(runtime, booster, data.fresh)

    def test_three_classes(self, data: Data, tmp_path: Path) -> None:
        model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(data.X, data.y3)
        runtime = load_runtime(xgboost_bytes(model, tmp_path), format=None)
        assert_same_classifier(runtime, model, data.fresh)

    def test_regressor(self, data: Data, tmp_path: Path) -> None:
        model = xgboost.XGBRegressor(n_estimators=10, max_depth=3, n_jobs=1).fit(data.X, data.target)
        runtime = load_runtime(xgboost_bytes(model, tmp_path), format=None)
        assert runtime.classes is None
        np.testing.assert_allclose(runtime.predict(data.fresh), model.predict(data.fresh), rtol=1e-6)

    def test_declared_classes_name_the_labels(self, booster: Any, data: Data, tmp_path: Path) -> None:
        runtime = load_runtime(
            xgboost_bytes(booster, tmp_path), format=None, model_schema={"classes": ["no", "yes"]}
        )
        expected = np.array(["no", "yes"])[booster.predict(data.fresh)]
        assert runtime.predict(data.fresh).tolist() == expected.tolist()
        assert runtime.classes == ["no", "yes"]

    def test_feature_names_come_from_the_booster(self, data: Data) -> None:
        names = [f"sensor_{i}" for i in range(FEATURES)]
        matrix = xgboost.DMatrix(data.X, label=data.y, feature_names=names)
        trained = xgboost.train({"objective": "binary:logistic", "nthread": 1}, matrix, num_boost_round=5)
        runtime = load_runtime(bytes(trained.save_raw("json")), format=None)
        assert runtime.input_schema.names == tuple(names)
        assert runtime.input_schema.source == "model"
        rows = runtime.to_matrix([dict(zip(names, row, strict=True)) for row in data.fresh[:3].tolist()])
        np.testing.assert_allclose(
            runtime.predict_proba(rows)[:, 1], trained.predict(xgboost.DMatrix(rows, feature_names=names))
        )

    def test_missing_values_are_answered(self, booster: Any, data: Data, tmp_path: Path) -> None:
        runtime = load_runtime(xgboost_bytes(booster, tmp_path), format=None)
        rows = data.fresh[:4].copy()
        rows[0, 0] = np.nan
        assert runtime.accepts_missing
        assert runtime.predict(rows).tolist() == booster.predict(rows).tolist()


class TestLightGBM:
    def test_binary_classifier(self, lgbm: Any, data: Data) -> None:
        runtime = load_runtime(lightgbm_bytes(lgbm), format="lightgbm-txt")
        assert runtime.serving == "lightgbm"
        assert_same_classifier(runtime, lgbm, data.fresh)

    def test_three_classes_and_a_regressor(self, data: Data) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            classifier = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1, n_jobs=1).fit(data.X, data.y3)
            regressor = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1, n_jobs=1).fit(data.X, data.target)
        runtime = load_runtime(lightgbm_bytes(classifier), format=None)
        assert_same_classifier(runtime, classifier, data.fresh)
        runtime = load_runtime(lightgbm_bytes(regressor), format=None)
        assert runtime.classes is None
        np.testing.assert_allclose(runtime.predict(data.fresh), regressor.predict(data.fresh))

    def test_feature_names_come_from_the_model(self, data: Data) -> None:
        names = [f"col_{i}" for i in range(FEATURES)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lightgbm.train(
                {"objective": "binary", "verbose": -1, "num_threads": 1},
                lightgbm.Dataset(data.X, label=data.y, feature_name=names),
                num_boost_round=5,
            )
        runtime = load_runtime(lightgbm_bytes(model), format=None)
        assert runtime.input_schema.names == tuple(names)


class TestInputSchema:
    def test_the_versions_schema_wins(self, logreg: Any) -> None:
        declared = [{"name": f"x{i}", "type": "double"} for i in range(FEATURES)]
        declared[3] = {"name": "visits", "type": "long"}
        runtime = load_runtime(onnx_bytes(logreg), format="onnx", model_schema={"inputs": declared})
        assert runtime.input_schema.source == "model_schema"
        assert runtime.input_schema.names[3] == "visits"
        assert runtime.input_schema.features[3].type == "integer"
        assert runtime.input_schema.to_dict()["inputs"][0] == {"name": "x0", "type": "float"}

    @pytest.mark.filterwarnings("ignore:X does not have valid feature names")
    def test_scikit_learn_feature_names(self, data: Data) -> None:
        names = [f"measure_{i}" for i in range(FEATURES)]
        frame = pl.DataFrame(data.X, schema=names, orient="row")
        model = LogisticRegression(max_iter=1000).fit(frame, data.y)
        runtime = load_runtime(skops_bytes(model), format="skops")
        assert runtime.input_schema.names == tuple(names)
        assert runtime.input_schema.source == "model"
        assert runtime.predict(data.fresh).tolist() == model.predict(data.fresh).tolist()

    def test_without_names_features_are_numbered(self, forest: Any) -> None:
        runtime = load_runtime(onnx_bytes(forest), format="onnx")
        assert runtime.input_schema.names == tuple(GENERATED)
        assert runtime.n_features == FEATURES
        assert runtime.input_schema.source == "generated"

    def test_a_schema_of_the_wrong_width_is_refused(self, logreg: Any) -> None:
        schema = {"inputs": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}]}
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(onnx_bytes(logreg), format="onnx", model_schema=schema)
        assert caught.value.reason == "schema_mismatch"
        assert "2 inputs" in caught.value.message and "20 features" in caught.value.message

    def test_a_schema_with_text_features_is_refused(self, logreg: Any) -> None:
        schema = {"inputs": [{"name": "city", "type": "string"}]}
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(onnx_bytes(logreg), format="onnx", model_schema=schema)
        assert caught.value.reason == "invalid_schema"
        assert "'city'" in caught.value.message
        assert caught.value.status_code == 422

    def test_declared_classes_must_match_the_model(self, booster: Any, tmp_path: Path) -> None:
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(
                xgboost_bytes(booster, tmp_path), format=None, model_schema={"classes": ["a", "b", "c"]}
            )
        assert caught.value.reason == "schema_mismatch"


class TestInterface:
    def test_describe_is_plain_json(self, forest: Any) -> None:
        info = load_runtime(skops_bytes(forest), format="skops").describe()
        parsed = orjson.loads(orjson.dumps(info))
        assert parsed["serving"] == "onnx (converted from skops)"
        assert parsed["format"] == "skops"
        assert parsed["n_features"] == FEATURES
        assert parsed["classes"] == [0, 1]
        assert parsed["conversion"]["status"] == "converted"
        assert len(parsed["input_schema"]["inputs"]) == FEATURES

    def test_the_wrong_width_is_an_input_error(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(onnx_bytes(logreg), format="onnx")
        with pytest.raises(InputError) as caught:
            runtime.predict(data.fresh[:, :5])
        assert caught.value.reason == "width"
        with pytest.raises(InputError):
            runtime.predict(data.fresh[0])

    def test_a_model_without_missing_value_support_refuses_nan(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(skops_bytes(logreg), format="skops", convert=False)
        rows = data.fresh[:3].copy()
        rows[2, 4] = np.nan
        assert not runtime.accepts_missing
        with pytest.raises(InputError) as caught:
            runtime.predict(rows)
        assert (caught.value.row, caught.value.feature) == (2, "f4")

    def test_onnx_float_inputs_refuse_values_past_float32(self, logreg: Any, data: Data) -> None:
        runtime = load_runtime(onnx_bytes(logreg), format="onnx")
        rows = data.fresh[:2].copy()
        rows[1, 7] = 1e200
        with pytest.raises(InputError) as caught:
            runtime.predict(rows)
        assert caught.value.reason == "too_large"
        assert caught.value.feature == "f7"

    @pytest.mark.parametrize("fmt", ["other", "tensorflow-savedmodel"])
    def test_unsupported_formats(self, fmt: str) -> None:
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(b"whatever", format=fmt)
        assert caught.value.reason == "unsupported_format"
        assert caught.value.status_code == 422

    def test_unrecognised_bytes_are_unsupported(self) -> None:
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(b"\x00\x01 not a model", format=None)
        assert caught.value.reason == "unsupported_format"

    def test_the_size_limit(self, logreg: Any) -> None:
        with pytest.raises(ModelLoadError) as caught:
            load_runtime(skops_bytes(logreg), format="skops", max_bytes=100)
        assert caught.value.reason == "too_large"
        assert caught.value.status_code == 413


@dataclass
class Snapshot:
    id: str
    file_key: str | None
    sha256: str | None
    format: str | None
    trusted: bool = False
    model_schema: dict[str, Any] | None = None


class TestLoadVersion:
    @pytest.fixture
    def store(self, tmp_path: Path) -> ArtifactStore:
        return ArtifactStore(str(tmp_path / "artifacts"))

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]

    def test_a_stored_version_loads(
        self, store: ArtifactStore, settings: Settings, forest: Any, data: Data
    ) -> None:
        stored = store.put_bytes("models/proj_a", skops_bytes(forest))
        version = ModelVersion(
            id="version_a", file_key=stored.key, sha256=stored.sha256, format="skops", trusted=False
        )
        runtime = load_version(version, store, settings)
        assert_same_classifier(runtime, forest, data.fresh)

    def test_a_changed_file_is_refused(self, store: ArtifactStore, settings: Settings, forest: Any) -> None:
        stored = store.put_bytes("models/proj_a", skops_bytes(forest))
        version = Snapshot("version_a", stored.key, hashlib.sha256(b"something else").hexdigest(), "skops")
        with pytest.raises(ModelLoadError) as caught:
            load_version(version, store, settings)
        assert caught.value.reason == "checksum_mismatch"

    def test_the_limit_comes_from_settings(self, store: ArtifactStore, tmp_path: Path, forest: Any) -> None:
        stored = store.put_bytes("models/proj_a", skops_bytes(forest))
        settings = Settings(_env_file=None, data_dir=tmp_path, max_model_bytes=1000)  # type: ignore[call-arg]
        with pytest.raises(ModelLoadError) as caught:
            load_version(Snapshot("version_a", stored.key, stored.sha256, "skops"), store, settings)
        assert caught.value.reason == "too_large"

    def test_a_missing_file(self, store: ArtifactStore, settings: Settings) -> None:
        with pytest.raises(ModelLoadError) as caught:
            load_version(Snapshot("version_a", "models/proj_a/gone", None, "onnx"), store, settings)
        assert caught.value.reason == "file_missing"
        with pytest.raises(ModelLoadError) as caught:
            load_version(Snapshot("version_a", None, None, None), store, settings)
        assert caught.value.reason == "no_file"

    def test_an_untrusted_pickle_is_refused_before_its_file_is_read(
        self, store: ArtifactStore, settings: Settings
    ) -> None:
        # The key names no stored file: had the loader tried to read it, it would say so.
        version = Snapshot("version_a", "models/proj_a/never-read", None, "pickle")
        with pytest.raises(ModelLoadError) as caught:
            load_version(version, store, settings)
        assert caught.value.reason == "not_trusted"
        assert caught.value.status_code == 409
