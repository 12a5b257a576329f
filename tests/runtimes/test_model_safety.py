"""Model files that try to run code or read files on the server are refused, and
nothing they ask for happens."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from maestro.runtimes import ModelLoadError, load_runtime
from maestro.runtimes.estimators import allowed_skops_types
from maestro.runtimes.onnx import external_data_references
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import FEATURES, joblib_bytes, pickle_bytes, skops_bytes
from tests.runtimes.payloads import BenignModel, CreatesFile, Doubler


def refused(data: bytes, **options: Any) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as caught:
        load_runtime(data, **options)
    return caught.value


class TestSkops:
    def test_a_type_outside_the_allow_list_is_refused_by_name(self, data: Data) -> None:
        model = make_pipeline(Doubler(), Ridge()).fit(data.X, data.target)
        error = refused(skops_bytes(model), format="skops")
        assert error.reason == "untrusted_types"
        assert "tests.runtimes.payloads.Doubler" in error.message
        assert "organisation admin" in error.message
        assert error.status_code == 409

    def test_the_same_file_loads_once_trusted(self, data: Data) -> None:
        model = make_pipeline(Doubler(), Ridge()).fit(data.X, data.target)
        runtime = load_runtime(skops_bytes(model), format="skops", trusted=True)
        assert runtime.serving == "sklearn (from skops)"  # skl2onnx knows no Doubler
        assert np.array_equal(runtime.predict(data.fresh), model.predict(data.fresh))

    def test_a_builtin_function_is_refused(self, data: Data) -> None:
        model = FunctionTransformer(func=eval).fit(data.X)
        error = refused(skops_bytes(model), format="skops")
        assert error.reason == "untrusted_types"
        assert "builtins.eval" in error.message

    def test_fitted_trees_are_on_the_allow_list(self, forest: Any) -> None:
        assert "sklearn.tree._tree.Tree" in allowed_skops_types()
        assert load_runtime(skops_bytes(forest), format="skops").classes == [0, 1]

    def test_the_allow_list_leaves_out_python_callables(self) -> None:
        allowed = allowed_skops_types()
        assert not any("PyFunc" in name for name in allowed)
        assert all(name.startswith(("sklearn.", "numpy.")) for name in allowed)

    def test_an_archive_that_unpacks_past_the_limit_is_refused(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("schema.json", "{}")
            archive.writestr("0.npy", bytes(20 * 1024 * 1024))
        assert len(buffer.getvalue()) < 1024 * 1024
        error = refused(buffer.getvalue(), format="skops", max_bytes=5 * 1024 * 1024)
        assert error.reason == "too_large"

    def test_a_broken_archive_is_a_clear_error(self) -> None:
        error = refused(b"PK\x03\x04 not really a zip", format="skops")
        assert error.reason == "corrupt"
        assert "skops" in error.message


class TestPickles:
    @pytest.mark.parametrize("saver", [pickle_bytes, joblib_bytes], ids=["pickle", "joblib"])
    def test_a_payload_is_never_run_without_trust(self, saver: Any, tmp_path: Path) -> None:
        marker = tmp_path / "pwned"
        payload = saver(CreatesFile(str(marker)))
        for fmt in (None, "pickle", "joblib"):
            error = refused(payload, format=fmt)
            assert error.reason == "not_trusted"
            assert error.status_code == 409
            assert "organisation admin" in error.message and "trusted" in error.message
        assert not marker.exists()

    @pytest.mark.parametrize("saver", [pickle_bytes, joblib_bytes], ids=["pickle", "joblib"])
    def test_a_trusted_pickle_is_loaded(self, saver: Any, data: Data) -> None:
        weights = list(np.linspace(-1, 1, FEATURES))
        runtime = load_runtime(saver(BenignModel(weights)), format=None, trusted=True)
        assert runtime.serving_form == "python"
        assert runtime.conversion is not None and runtime.conversion["status"] == "failed"
        np.testing.assert_allclose(runtime.predict(data.fresh), data.fresh @ np.asarray(weights))

    def test_a_trusted_object_without_predict_is_not_a_model(self) -> None:
        error = refused(pickle_bytes({"weights": [1, 2]}), format="pickle", trusted=True)
        assert error.reason == "not_a_model"
        assert "dict" in error.message

    def test_a_broken_trusted_pickle_is_a_clear_error(self) -> None:
        error = refused(b"\x80\x05 truncated", format="pickle", trusted=True)
        assert error.reason == "corrupt"


# --- ONNX --------------------------------------------------------------------------------------
def linear_graph(weights: TensorProto, name: str = "main") -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("MatMul", ["X", weights.name], ["Y"])],
        name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )


def model_bytes(graph: onnx.GraphProto, **extra: Any) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **extra)
    return model.SerializeToString()


def external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones((FEATURES, 1), dtype=np.float32), name)
    set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def embedded(name: str) -> TensorProto:
    return numpy_helper.from_array(np.ones((FEATURES, 1), dtype=np.float32), name)


class TestOnnx:
    def test_a_self_contained_model_loads(self, data: Data) -> None:
        runtime = load_runtime(model_bytes(linear_graph(embedded("W"))), format="onnx")
        np.testing.assert_allclose(runtime.predict(data.fresh), data.fresh.sum(axis=1), rtol=1e-5)

    def test_external_data_outside_the_model_is_refused(self) -> None:
        error = refused(model_bytes(linear_graph(external("W", "../../etc/passwd"))), format="onnx")
        assert error.reason == "external_data"
        assert "'W'" in error.message
        assert "/etc/passwd" not in error.message
        assert error.status_code == 422

    def test_external_data_inside_a_subgraph_is_refused(self) -> None:
        branch_value = external("hidden", "../../etc/shadow")
        then_branch = helper.make_graph(
            [helper.make_node("Constant", [], ["then_out"], value=branch_value)],
            "then",
            [],
            [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [FEATURES, 1])],
        )
        else_branch = helper.make_graph(
            [helper.make_node("Constant", [], ["else_out"], value=embedded("plain"))],
            "else",
            [],
            [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [FEATURES, 1])],
        )
        graph = helper.make_graph(
            [
                helper.make_node("If", ["C"], ["W"], then_branch=then_branch, else_branch=else_branch),
                helper.make_node("MatMul", ["X", "W"], ["Y"]),
            ],
            "main",
            [
                helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES]),
                helper.make_tensor_value_info("C", TensorProto.BOOL, []),
            ],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        assert external_data_references(model) == ["hidden"]
        error = refused(model.SerializeToString(), format="onnx")
        assert error.reason == "external_data"

    def test_external_data_inside_a_local_function_is_refused(self) -> None:
        function = helper.make_function(
            "custom",
            "Weights",
            [],
            ["out"],
            [helper.make_node("Constant", [], ["out"], value=external("inner", "/etc/hostname"))],
            [helper.make_opsetid("", 17)],
        )
        graph = helper.make_graph(
            [
                helper.make_node("Weights", [], ["W"], domain="custom"),
                helper.make_node("MatMul", ["X", "W"], ["Y"]),
            ],
            "main",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        )
        model = helper.make_model(
            graph,
            functions=[function],
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        )
        error = refused(model.SerializeToString(), format="onnx")
        assert error.reason == "external_data"

    def test_the_external_file_is_never_read(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The file's access time shows whether anything read it: with the access time set
        before its modification time, the next read moves it (relatime, the Linux default)."""
        weights = tmp_path / "weights.bin"
        weights.write_bytes(np.ones(FEATURES, dtype=np.float32).tobytes())

        def age() -> float:
            now = time.time()
            os.utime(weights, (now - 7200, now - 3600))
            return weights.stat().st_atime

        before = age()
        weights.read_bytes()
        if weights.stat().st_atime == before:
            pytest.skip("this file system does not record reads (mounted noatime)")
        monkeypatch.chdir(tmp_path)
        data = model_bytes(linear_graph(external("W", "weights.bin")))

        before = age()
        assert refused(data, format="onnx").reason == "external_data"
        assert weights.stat().st_atime == before

        # The check matters: onnxruntime on its own reads the file the model names.
        onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        assert weights.stat().st_atime != before

    @pytest.mark.parametrize(
        "content",
        [b"\x08\x07garbage that is not protobuf \xff\xff\xff", b"", b"\x08\x07"],
        ids=["garbage", "empty", "no-graph"],
    )
    def test_a_corrupt_file_is_a_clear_error(self, content: bytes) -> None:
        error = refused(content, format="onnx")
        assert error.reason == "corrupt"
        assert "ONNX" in error.message

    def test_a_truncated_model_is_a_clear_error(self, logreg: Any) -> None:
        from tests.runtimes.modelfiles import onnx_bytes

        whole = onnx_bytes(logreg)
        assert refused(whole[: len(whole) // 2], format="onnx").reason == "corrupt"

    def test_an_unknown_operator_is_a_clear_error(self) -> None:
        graph = helper.make_graph(
            [helper.make_node("NoSuchOperator", ["X"], ["Y"], domain="made.up")],
            "main",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        )
        content = model_bytes(graph, functions=[])
        error = refused(content, format="onnx")
        assert error.reason == "corrupt"
        assert "onnxruntime" in error.message


class TestOtherFormats:
    def test_a_corrupt_xgboost_file(self) -> None:
        error = refused(b'{"learner": {"broken": true', format="xgboost-json")
        assert error.reason == "corrupt"
        assert "XGBoost" in error.message

    def test_a_corrupt_lightgbm_file(self) -> None:
        error = refused(b"tree\nversion=v4\nnum_class=1\nnonsense", format="lightgbm-txt")
        assert error.reason == "corrupt"
        assert "LightGBM" in error.message
