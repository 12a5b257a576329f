"""XGBoost and LightGBM files are checked in pure Python before the native libraries read
them: every file the libraries themselves write passes, and files whose indices, sizes
or counts would make the libraries read or write outside their arrays are refused with
the first problem named. These run in the test process itself: a check that let a
crafted file through to the native code would crash the test run."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest
import xgboost

from maestro.runtimes import ModelLoadError, load_runtime
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.tree_checks import check_lightgbm, check_xgboost
from tests.runtimes import crafted


def refusal(check: Callable[[bytes], None], data: bytes) -> str:
    with pytest.raises(ModelLoadError) as caught:
        check(data)
    assert caught.value.reason == "corrupt"
    return caught.value.message


# --- what the libraries write passes -----------------------------------------------------------
@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 4))  # noqa: N806
    X[:, 3] = rng.integers(0, 6, 300)
    binary = ((X[:, 3] == 3) | (X[:, 0] > 0.5)).astype(int)
    return X, binary, np.digitize(X[:, 0], [-0.5, 0.5])


LIGHTGBM_KINDS = [
    ("regression", {}),
    ("binary", {}),
    ("multiclass", {"num_class": 3}),
    ("multiclassova", {"num_class": 3}),
    ("quantile", {}),
    ("regression", {"linear_tree": True}),
    ("binary", {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5}),
    ("binary", {"boosting": "dart"}),
    ("regression", {"min_data_in_leaf": 1000}),  # trees of one leaf
]


@pytest.mark.parametrize(("objective", "extra"), LIGHTGBM_KINDS)
@pytest.mark.parametrize("categorical", [False, True])
def test_lightgbm_models_as_lightgbm_writes_them_pass(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray], objective: str, extra: dict, categorical: bool
) -> None:
    X, binary, three = rows  # noqa: N806
    label = {"binary": binary, "multiclass": three, "multiclassova": three}.get(objective, X[:, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        booster = lightgbm.train(
            {"objective": objective, "num_leaves": 15, "verbose": -1, **extra},
            lightgbm.Dataset(X, label, categorical_feature=[3] if categorical else "auto"),
            num_boost_round=4,
        )
    text = booster.model_to_string()
    check_lightgbm(text.encode())
    windows = re.sub(r"tree_sizes=[0-9 ]*\n", "", text).replace("\n", "\r\n")  # no sizes, other line ends
    check_lightgbm(windows.encode())
    runtime = load_runtime(text.encode(), format="lightgbm-txt")
    assert runtime.predict(X[:5]).shape[0] == 5


XGBOOST_KINDS = [
    {},
    {"booster": "dart"},
    {"booster": "gblinear"},
    {"tree_method": "exact", "gamma": 3, "max_depth": 6},  # pruned nodes stay in the arrays
    {"tree_method": "approx"},
    {"num_parallel_tree": 3},
]


@pytest.mark.parametrize("options", XGBOOST_KINDS)
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_xgboost_models_as_xgboost_writes_them_pass(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path, options: dict, task: str
) -> None:
    X, binary, three = rows  # noqa: N806
    estimator = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    label = {"binary": binary, "multiclass": three, "regression": X[:, 1]}[task]
    estimator(n_estimators=4, n_jobs=1, **options).fit(X, label).save_model(tmp_path / "m.json")
    data = (tmp_path / "m.json").read_bytes()
    check_xgboost(data)
    if options.get("booster") != "gblinear":  # served from trees only (no in-place prediction)
        assert load_runtime(data, format="xgboost-json").predict(X[:5]).shape[0] == 5


def test_xgboost_categorical_and_multi_output_models_pass(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, binary, _ = rows  # noqa: N806
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "a": X[:, 0],
            "codes": pd.Categorical(X[:, 3].astype(int)),
            "names": pd.Categorical(rng.choice(["x", "yy", "zzz"], len(X))),
        }
    )
    models = [
        xgboost.XGBClassifier(n_estimators=4, enable_categorical=True, max_cat_to_onehot=1).fit(
            frame, binary
        ),
        xgboost.XGBRegressor(n_estimators=3, objective="reg:quantileerror", quantile_alpha=[0.1, 0.9]).fit(
            X, X[:, 1]
        ),
        xgboost.XGBRegressor(n_estimators=3).fit(X, np.column_stack([X[:, 1], X[:, 2]])),
    ]
    for model in models:
        model.save_model(tmp_path / "m.json")
        check_xgboost((tmp_path / "m.json").read_bytes())


# --- the crafted files of the attacks are refused --------------------------------------------------
ATTACKS = {
    "tree_sizes": (crafted.min_treesizes, "tree_sizes gives tree 0"),
    "kill_switch": (crafted.killswitch, "right_child is -2000000000"),
    "heap_read": (crafted.heap_read, "right_child is -40"),
    "many_features": (crafted.lightgbm_huge_features, "max_feature_idx is 2000000000"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_lightgbm_files_never_reach_lightgbm(attack: str) -> None:
    build, named = ATTACKS[attack]
    data = build()
    assert named in refusal(check_lightgbm, data)
    with pytest.raises(ModelLoadError) as caught:  # the runtime checks before LightGBM reads a byte
        load_runtime(data, format="lightgbm-txt")
    assert caught.value.reason == "corrupt"
    assert caught.value.status_code == 422


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (crafted.xgboost_child_out_of_range, "right_children holds 1000000"),
        (crafted.xgboost_split_out_of_range, "splits on feature 1000000"),
        (crafted.xgboost_huge_features, "num_feature is 1000000000"),
    ],
)
def test_crafted_xgboost_files_never_reach_xgboost(
    tmp_path: Path, build: Callable[[Path], bytes], named: str
) -> None:
    data = build(tmp_path)
    assert named in refusal(check_xgboost, data)
    with pytest.raises(ModelLoadError) as caught:
        load_runtime(data, format="xgboost-json")
    assert caught.value.reason == "corrupt"


# --- other ways to break the libraries' assumptions ---------------------------------------------------
def _lightgbm(edit: Callable[[str], str]) -> bytes:
    return edit(re.sub(r"tree_sizes=[0-9 ]*\n", "", crafted.lightgbm_text())).encode()


def _tree_line(text: str, key: str, value: str) -> str:
    return re.sub(rf"(Tree=0\n(?:.*\n)*?){key}=[^\n]*", lambda m: f"{m.group(1)}{key}={value}", text, count=1)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: _tree_line(t, "right_child", "2 -3 0"), "node 0 is reached twice"),  # a cycle to the root
        (lambda t: _tree_line(t, "left_child", "1 -1 -1"), "leaf 0 is reached twice"),  # two parents
        (lambda t: _tree_line(t, "left_child", "-1 0 -2"), "not every node and leaf is reached"),
        (lambda t: _tree_line(t, "split_feature", "0 7 1"), "split_feature is 7"),
        (lambda t: _tree_line(t, "leaf_value", "0.1 0.2 0.3"), "leaf_value holds 3 values"),
        (lambda t: _tree_line(t, "leaf_value", "0.1 nan 0.2 0.3"), "not a finite number"),
        (lambda t: _tree_line(t, "threshold", "1_0 0.5 0.5"), "not a finite number"),
        (lambda t: _tree_line(t, "num_leaves", "4000000"), "num_leaves is 4000000"),
        (lambda t: _tree_line(t, "decision_type", "1 2 2"), "category set that does not exist"),
        (lambda t: _tree_line(t, "decision_type", "14 2 2"), "missing-value type"),
        (
            lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=5"),
            "num_tree_per_iteration",
        ),
        (lambda t: t.replace("objective=regression", "objective=multiclass num_class:50"), "50 classes"),
        (lambda t: t.replace("objective=regression", "objective=custom_thing"), "not one LightGBM writes"),
        (lambda t: t.replace("shrinkage=1\n", "shrinkage\n", 1), "not a complete key=value line"),
        (lambda t: t.replace("Tree=1", "Tree=7"), "tree 1 starts with"),
        (lambda t: t.replace("\nend of trees", "\0end of trees"), "NUL byte"),
        (lambda t: t[: t.index("\n\n\nTree=1")] + "\n", "not followed by an empty line"),
    ],
)
def test_lightgbm_files_the_library_would_misread_are_refused(edit: Callable[[str], str], named: str) -> None:
    assert named in refusal(check_lightgbm, _lightgbm(edit))


def _xgboost(tmp_path: Path, edit: Callable[[dict], None]) -> bytes:
    document = crafted.xgboost_json(tmp_path)
    edit(document)
    return json.dumps(document).encode()


def _tree(document: dict) -> dict:
    return document["learner"]["gradient_booster"]["model"]["trees"][0]


def _set(path: list, value: object) -> Callable[[dict], None]:
    def edit(document: dict) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _tree_edit(key: str, index: int, value: object) -> Callable[[dict], None]:
    def edit(document: dict) -> None:
        _tree(document)[key][index] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_tree_edit("left_children", 1, 0), "impossible pair of children"),  # a leaf with one child
        (_tree_edit("left_children", 2, 1), "reached twice"),
        (_tree_edit("parents", 1, 2), "does not name its parent"),
        (_tree_edit("split_conditions", 0, float("nan")), "not a finite number"),
        (_tree_edit("split_type", 0, 1), "categories_nodes must list"),
        (_tree_edit("left_children", 0, 1.0), "integers from -1"),
        (_set(["learner", "learner_model_param", "num_class"], "7"), "declares 7 classes"),
        (_set(["learner", "learner_model_param", "base_score"], "[0.5,0.5,0.5]"), "base_score holds 3"),
        (_set(["learner", "gradient_booster", "model", "tree_info"], [0, 3]), "tree_info holds 3"),
        (_set(["learner", "gradient_booster", "model", "gbtree_model_param", "num_trees"], "5"), "5 trees"),
        (_set(["learner", "objective", "name"], "reg:evil"), "not one XGBoost writes"),
    ],
)
def test_xgboost_files_the_library_would_misread_are_refused(
    tmp_path: Path, edit: Callable[[dict], None], named: str
) -> None:
    assert named in refusal(check_xgboost, _xgboost(tmp_path, edit))


def test_a_repeated_json_key_is_refused(tmp_path: Path) -> None:
    """Parsers disagree on which of two equal keys wins: the check must see what XGBoost sees."""
    text = json.dumps(crafted.xgboost_json(tmp_path))
    doubled = text.replace(
        '"right_children": [', '"right_children": [9, 9, 9, 9, 9, 9, 9], "right_children": [', 1
    )
    assert "appears twice" in refusal(check_xgboost, doubled.encode())


def test_formats_without_trees_are_not_checked() -> None:
    from maestro.runtimes.tree_checks import check_tree_model

    check_tree_model(b"anything at all", ModelFormat.onnx)
