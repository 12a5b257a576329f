"""Checks of XGBoost JSON and LightGBM text models, in pure Python, before either
library reads a byte of them.

Neither library checks the trees it loads: a child index out of range, a cycle, a
split on a feature the input row does not have, or declared sizes that do not match
the file make them read and write outside their arrays (crash, hang, or answer with
the bytes of other memory), and some of their errors escape a parallel region and
abort the process. So a file is accepted only when everything the native code will
index is consistent:

- **LightGBM**: the header (class and tree counts, ``max_feature_idx`` within a sane
  cap, the objective and its parameters), ``tree_sizes=`` equal to the real byte length
  of every tree block, and in each tree: the counts (``num_leaves``, ``num_cat``), the
  length of every array, numbers written the way LightGBM writes them, children in
  range forming a tree in which every node and leaf is reached exactly once from the
  root, split features within the features, finite thresholds and leaf values, and
  categorical splits within their bitsets; linear leaves' features within range.
- **XGBoost**: the learner's parameters (features, classes, targets, base score), the
  tree count against ``tree_info`` and ``iteration_indptr``, and in each tree: node
  counts, the length of every array, children in range forming a tree (nodes outside
  it must be pruned ones), parents consistent, split features within range, finite
  split values, categorical segments within the category list; the category encoder and
  linear boosters' weights likewise.

A file that does not pass is refused with ``ModelLoadError("corrupt", …)`` naming the
first problem. The checks are deliberately strict: anything the libraries' own
writers never produce is refused rather than reasoned about.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.inputs import MAX_FEATURES

MAX_CLASSES = 10_000
MAX_LEAVES = 1 << 17  # LightGBM's own ceiling on num_leaves
MAX_NODES = 1 << 22  # nodes in one XGBoost tree
MAX_CATEGORY = 1 << 24  # XGBoost's categories are integers below 2**24
MAX_TREE_LINES = 22  # key=value lines LightGBM reads for one tree
INT32_MAX = 2**31 - 1


class _Malformed(Exception):
    """The first problem found, in words."""


def _invalid(message: str) -> _Malformed:
    return _Malformed(message)


def check_tree_model(data: bytes, fmt: ModelFormat) -> None:
    if fmt is ModelFormat.lightgbm_txt:
        check_lightgbm(data)
    elif fmt is ModelFormat.xgboost_json:
        check_xgboost(data)


def check_lightgbm(data: bytes) -> None:
    """Refuse a LightGBM text model the library would misread (see the module's notes)."""
    try:
        _check_lightgbm(data)
    except _Malformed as exc:
        raise ModelLoadError("corrupt", f"The file is not a valid LightGBM model: {exc}") from None


def check_xgboost(data: bytes) -> None:
    """Refuse an XGBoost JSON model the library would misread (see the module's notes)."""
    try:
        _check_xgboost(data)
    except _Malformed as exc:
        raise ModelLoadError("corrupt", f"The file is not a valid XGBoost model: {exc}") from None


def _reach(children: Any, where: str) -> list[int]:
    """The nodes reached from node 0, refusing any reached twice (a cycle, or a node with
    two parents); ``children(node)`` gives a node's child nodes."""
    seen: set[int] = set()
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        if node in seen:
            raise _invalid(f"{where}: node {node} is reached twice (the nodes do not form a tree)")
        seen.add(node)
        order.append(node)
        stack.extend(children(node))
    return order


# --- LightGBM -------------------------------------------------------------------------------------
_INT = re.compile(rb"-?[0-9]{1,18}\Z")
_FINITE = re.compile(rb"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,4})?\Z")
_ANY_FLOAT = re.compile(rb"[-+]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,4})?|inf|nan|infinity)\Z", re.I)
_TREE_KEYS = frozenset(
    {
        "num_leaves",
        "num_cat",
        "split_feature",
        "split_gain",
        "threshold",
        "decision_type",
        "left_child",
        "right_child",
        "leaf_value",
        "leaf_weight",
        "leaf_count",
        "internal_value",
        "internal_weight",
        "internal_count",
        "cat_boundaries",
        "cat_threshold",
        "is_linear",
        "shrinkage",
        "leaf_const",
        "num_features",
        "leaf_features",
        "leaf_coeff",
    }
)
# The objectives LightGBM writes into a model, with the parameters each may carry.
_OBJECTIVES: dict[str, frozenset[str]] = {
    **{
        name: frozenset({"sqrt"})
        for name in (
            "regression",
            "regression_l1",
            "huber",
            "fair",
            "poisson",
            "quantile",
            "mape",
            "gamma",
            "tweedie",
        )
    },
    **{name: frozenset() for name in ("cross_entropy", "cross_entropy_lambda", "lambdarank", "rank_xendcg")},
    "binary": frozenset({"sigmoid"}),
    "multiclass": frozenset({"num_class"}),
    "multiclassova": frozenset({"num_class", "sigmoid"}),
}
_MULTICLASS = ("multiclass", "multiclassova")


def _lines(data: bytes, start: int = 0) -> Iterator[tuple[int, bytes, int, bool]]:
    """(start, content, next start, ended by a line break) for each line, split the way
    LightGBM splits them: at ``\\r``, ``\\n`` or ``\\r\\n``."""
    position, size = start, len(data)
    while position < size:
        ends = [index for index in (data.find(b"\r", position), data.find(b"\n", position)) if index >= 0]
        if not ends:
            yield position, data[position:], size, False
            return
        end = min(ends)
        following = end + 2 if data[end : end + 2] == b"\r\n" else end + 1
        yield position, data[position:end], following, True
        position = following


def _int(value: bytes, what: str, low: int, high: int) -> int:
    if not _INT.match(value):
        raise _invalid(f"{what} must be an integer, not {value[:40]!r}")
    number = int(value)
    if not low <= number <= high:
        raise _invalid(f"{what} is {number}; it must be between {low} and {high}")
    return number


def _tokens(value: bytes) -> list[bytes]:
    return [token for token in value.split(b" ") if token]


def _ints(value: bytes, count: int, what: str, low: int, high: int) -> list[int]:
    tokens = _tokens(value)
    if len(tokens) != count:
        raise _invalid(f"{what} holds {len(tokens)} values; {count} are declared")
    return [_int(token, what, low, high) for token in tokens]


def _floats(value: bytes, count: int, what: str, *, finite: bool) -> list[float]:
    tokens = _tokens(value)
    if len(tokens) != count:
        raise _invalid(f"{what} holds {len(tokens)} values; {count} are declared")
    pattern = _FINITE if finite else _ANY_FLOAT
    numbers = []
    for token in tokens:
        if not pattern.match(token):
            raise _invalid(
                f"{what} holds {token[:40]!r}, which is not {'a finite' if finite else 'a'} number"
            )
        number = float(token)
        if finite and not math.isfinite(number):
            raise _invalid(f"{what} holds {token[:40]!r}, which is not a finite number")
        numbers.append(number)
    return numbers


def _lightgbm_objective(value: bytes, num_class: int) -> None:
    """The objective turns raw scores into outputs: one for one class, ``num_class`` for
    several, so its own class count must be the model's."""
    parts = _tokens(value)
    name = parts[0].decode("ascii", "replace") if parts else ""
    if name not in _OBJECTIVES:
        raise _invalid(f"the objective {name[:40]!r} is not one LightGBM writes")
    parameters: dict[str, bytes] = {}
    for part in parts[1:]:
        key, sep, number = part.partition(b":")
        parameters[key.decode("ascii", "replace")] = number if sep else b""
    unknown = sorted(set(parameters) - _OBJECTIVES[name])
    if unknown:
        raise _invalid(f"the objective has unexpected parameters ({', '.join(unknown)[:80]})")
    if name in _MULTICLASS:
        declared = _int(parameters.get("num_class", b"-1"), "the objective's num_class", 2, MAX_CLASSES)
        if declared != num_class:
            raise _invalid(f"the objective has {declared} classes but the model declares {num_class}")
    elif num_class != 1:
        raise _invalid(f"a {name} model has one output, but the model declares {num_class} classes")
    if "sigmoid" in parameters:
        sigmoid = _floats(parameters["sigmoid"], 1, "the objective's sigmoid", finite=True)[0]
        if sigmoid <= 0:
            raise _invalid("the objective's sigmoid must be positive")
    if parameters.get("sqrt"):
        raise _invalid("the objective's sqrt takes no value")


def _check_lightgbm(data: bytes) -> None:
    if b"\x00" in data:
        raise _invalid("it holds a NUL byte")
    header: dict[str, bytes] = {}
    first_tree = None
    for start, line, _following, _ended in _lines(data):
        if line.startswith(b"Tree="):
            first_tree = start
            break
        if not line:
            continue
        key, sep, value = line.partition(b"=")
        name = key.decode("utf-8", "replace")
        if sep and b"=" in value and name != "feature_names":
            raise _invalid(f"header line {name[:40]!r} holds more than one '='")
        if name in header:
            raise _invalid(f"the header sets {name[:40]!r} twice")
        header[name] = value
    for required in ("num_class", "label_index", "max_feature_idx", "feature_names", "feature_infos"):
        if required not in header:
            raise _invalid(f"the header has no {required}")
    num_class = _int(header["num_class"], "num_class", 1, MAX_CLASSES)
    per_iteration = _int(
        header.get("num_tree_per_iteration", header["num_class"]), "num_tree_per_iteration", 1, MAX_CLASSES
    )
    if per_iteration != num_class:
        raise _invalid(f"num_tree_per_iteration is {per_iteration} but num_class is {num_class}")
    _int(header["label_index"], "label_index", -1, INT32_MAX)
    max_feature = _int(header["max_feature_idx"], "max_feature_idx", 0, MAX_FEATURES - 1)
    features = max_feature + 1
    for listed in ("feature_names", "feature_infos"):
        count = len(_tokens(header[listed]))
        if count != features:
            raise _invalid(f"{listed} lists {count} features; max_feature_idx declares {features}")
    if "objective" in header:
        _lightgbm_objective(header["objective"], num_class)
    declared_sizes = None
    if "tree_sizes" in header:
        declared_sizes = [_int(token, "tree_sizes", 0, len(data)) for token in _tokens(header["tree_sizes"])]
    blocks: list[tuple[int, int]] = []
    position = first_tree if first_tree is not None else len(data)
    while position < len(data):
        position, block = _lightgbm_tree(data, position, len(blocks), features)
        if block is None:
            break
        blocks.append(block)
    if len(blocks) % per_iteration:
        raise _invalid(f"{len(blocks)} trees are not a whole number of iterations of {per_iteration}")
    if declared_sizes is not None:
        if len(declared_sizes) != len(blocks):
            raise _invalid(f"tree_sizes lists {len(declared_sizes)} trees; the file holds {len(blocks)}")
        for index, (size, (begin, end)) in enumerate(zip(declared_sizes, blocks, strict=True)):
            if size != end - begin:
                raise _invalid(f"tree_sizes gives tree {index} {size} bytes; it has {end - begin}")


def _lightgbm_tree(
    data: bytes, position: int, index: int, features: int
) -> tuple[int, tuple[int, int] | None]:
    """Check the tree whose ``Tree=`` line starts at ``position``. Returns where the next
    block starts and this block's (start, end), or (position, None) at the end of the trees."""
    lines = _lines(data, position)
    start, line, following, ended = next(lines)
    if not line.startswith(b"Tree="):
        return position, None  # "end of trees" or whatever follows them
    if line != b"Tree=%d" % index or not ended:
        raise _invalid(f"tree {index} starts with {line[:40]!r}")
    values: dict[str, bytes] = {}
    closed = False
    for _start, line, after, ended in lines:
        following = after
        if not line:
            closed = ended
            break
        if len(values) == MAX_TREE_LINES:
            raise _invalid(f"tree {index} has more than {MAX_TREE_LINES} lines")
        key, sep, value = line.partition(b"=")
        name = key.decode("utf-8", "replace")
        if not sep or not ended:
            raise _invalid(f"tree {index}: line {name[:40]!r} is not a complete key=value line")
        if name not in _TREE_KEYS:
            raise _invalid(f"tree {index}: unknown field {name[:40]!r}")
        if name in values:
            raise _invalid(f"tree {index} sets {name} twice")
        values[name] = value
    if not closed:
        raise _invalid(f"tree {index} is not followed by an empty line")
    end = following
    for block_start, line, after, _ended in _lines(data, following):
        if line:
            end = block_start
            break
        end = after
    _lightgbm_tree_values(values, index, features)
    return end, (start, end)


def _lightgbm_tree_values(values: dict[str, bytes], index: int, features: int) -> None:
    where = f"tree {index}"
    for required in ("num_leaves", "num_cat", "leaf_value"):
        if required not in values:
            raise _invalid(f"{where} has no {required}")
    leaves = _int(values["num_leaves"], f"{where} num_leaves", 1, MAX_LEAVES)
    categorical_splits = _int(values["num_cat"], f"{where} num_cat", 0, max(leaves - 1, 0))
    _floats(values["leaf_value"], leaves, f"{where} leaf_value", finite=True)
    if "shrinkage" in values:
        _floats(values["shrinkage"], 1, f"{where} shrinkage", finite=True)
    linear = _int(values.get("is_linear", b"0"), f"{where} is_linear", 0, 1) == 1
    for name, count in (("leaf_weight", leaves), ("split_gain", leaves - 1)):
        if name in values and leaves > 1:
            _floats(values[name], count, f"{where} {name}", finite=False)
    for name in ("internal_value", "internal_weight"):
        if name in values and leaves > 1:
            _floats(values[name], leaves - 1, f"{where} {name}", finite=False)
    if "leaf_count" in values:
        _ints(values["leaf_count"], leaves, f"{where} leaf_count", -INT32_MAX, INT32_MAX)
    if "internal_count" in values and leaves > 1:
        _ints(values["internal_count"], leaves - 1, f"{where} internal_count", -INT32_MAX, INT32_MAX)
    if linear:
        _lightgbm_linear(values, leaves, features, where)
    if leaves == 1 and not linear:
        return  # LightGBM reads nothing else of a one-leaf tree
    nodes = leaves - 1
    for required in ("left_child", "right_child", "split_feature", "threshold"):
        if required not in values:
            raise _invalid(f"{where} has no {required}")
    left = _ints(values["left_child"], nodes, f"{where} left_child", -leaves, nodes - 1)
    right = _ints(values["right_child"], nodes, f"{where} right_child", -leaves, nodes - 1)
    _ints(values["split_feature"], nodes, f"{where} split_feature", 0, features - 1)
    thresholds = _floats(values["threshold"], nodes, f"{where} threshold", finite=True)
    decisions = (
        _ints(values["decision_type"], nodes, f"{where} decision_type", 0, 15)
        if "decision_type" in values
        else [0] * nodes
    )
    if nodes:
        reached_leaves: set[int] = set()

        def children(node: int) -> list[int]:
            inner = []
            for child in (left[node], right[node]):
                if child >= 0:
                    inner.append(child)
                elif ~child in reached_leaves:
                    raise _invalid(f"{where}: leaf {~child} is reached twice (the nodes do not form a tree)")
                else:
                    reached_leaves.add(~child)
            return inner

        if len(_reach(children, where)) != nodes or len(reached_leaves) != leaves:
            raise _invalid(f"{where}: not every node and leaf is reached from the root")
    boundaries: list[int] = []
    if categorical_splits:
        for required in ("cat_boundaries", "cat_threshold"):
            if required not in values:
                raise _invalid(f"{where} has categorical splits but no {required}")
        boundaries = _ints(
            values["cat_boundaries"], categorical_splits + 1, f"{where} cat_boundaries", 0, INT32_MAX
        )
        if boundaries[0] != 0 or any(b < a for a, b in pairwise(boundaries)):
            raise _invalid(f"{where} cat_boundaries must start at 0 and never decrease")
        _ints(values["cat_threshold"], boundaries[-1], f"{where} cat_threshold", 0, 2**32 - 1)
    for node, (decision, threshold) in enumerate(zip(decisions, thresholds, strict=True)):
        if (decision >> 2) & 3 == 3:
            raise _invalid(f"{where}: node {node} has an unknown missing-value type")
        # A categorical split's threshold indexes the category bitsets.
        if decision & 1 and (threshold != int(threshold) or not 0 <= threshold < categorical_splits):
            raise _invalid(f"{where}: node {node} names a category set that does not exist")


def _lightgbm_linear(values: dict[str, bytes], leaves: int, features: int, where: str) -> None:
    if "leaf_const" in values:
        _floats(values["leaf_const"], leaves, f"{where} leaf_const", finite=True)
    if "num_features" not in values:
        return
    counts = _ints(values["num_features"], leaves, f"{where} num_features", 0, features)
    total = sum(counts)
    if "leaf_features" in values:
        _ints(values["leaf_features"], total, f"{where} leaf_features", 0, features - 1)
    if "leaf_coeff" in values:
        _floats(values["leaf_coeff"], total, f"{where} leaf_coeff", finite=True)


# --- XGBoost ---------------------------------------------------------------------------------------
_PARAM_INT = re.compile(r"-?[0-9]{1,18}\Z")
_XGB_FEATURE_TYPES = frozenset({"q", "float", "int", "i", "c"})
DELETED_NODE = INT32_MAX  # split index XGBoost writes for a pruned node
XGB_OBJECTIVES = frozenset(
    {
        "reg:squarederror",
        "reg:squaredlogerror",
        "reg:logistic",
        "reg:pseudohubererror",
        "reg:absoluteerror",
        "reg:quantileerror",
        "reg:gamma",
        "reg:tweedie",
        "reg:linear",
        "count:poisson",
        "survival:cox",
        "survival:aft",
        "binary:logistic",
        "binary:logitraw",
        "binary:hinge",
        "multi:softmax",
        "multi:softprob",
        "rank:ndcg",
        "rank:map",
        "rank:pairwise",
    }
)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _invalid(f"the key {key[:40]!r} appears twice in one object")
        result[key] = value
    return result


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be an object")
    return value


def _param(
    block: dict[str, Any], key: str, what: str, low: int, high: int, default: str | None = None
) -> int:
    value = block.get(key, default)
    if not isinstance(value, str) or not _PARAM_INT.match(value):
        raise _invalid(f"{what} {key} must be an integer written as text")
    number = int(value)
    if not low <= number <= high:
        raise _invalid(f"{what} {key} is {number}; it must be between {low} and {high}")
    return number


def _int_list(value: Any, what: str, count: int | None, low: int, high: int) -> list[int]:
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list")
    if count is not None and len(value) != count:
        raise _invalid(f"{what} holds {len(value)} values; {count} are declared")
    for item in value:
        if type(item) is not int or not low <= item <= high:
            raise _invalid(f"{what} holds {str(item)[:40]}; integers from {low} to {high} are expected")
    return value


def _number_list(value: Any, what: str, count: int | None, *, finite: bool) -> list[float]:
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list")
    if count is not None and len(value) != count:
        raise _invalid(f"{what} holds {len(value)} values; {count} are declared")
    for item in value:
        if type(item) not in (int, float) or (finite and not math.isfinite(item)):
            raise _invalid(
                f"{what} holds {str(item)[:40]}, which is not {'a finite' if finite else 'a'} number"
            )
    return value


def _base_score(value: Any, groups: int) -> None:
    if not isinstance(value, str) or len(value) > 1_000_000:
        raise _invalid("base_score must be text")
    text = value.strip()
    parts = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else [text]
    if len(parts) not in (1, groups):
        raise _invalid(f"base_score holds {len(parts)} values for {groups} outputs")
    for part in parts:
        if not _FINITE.match(part.strip().encode()) or not math.isfinite(float(part)):
            raise _invalid(f"base_score holds {part[:40]!r}, which is not a finite number")


def _check_xgboost(data: bytes) -> None:
    try:
        document = json.loads(data, object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise _invalid(f"it is not valid JSON ({str(exc)[:200]})") from None
    learner = _object(_object(document, "the document").get("learner"), "learner")
    params = _object(learner.get("learner_model_param"), "learner_model_param")
    features = _param(params, "num_feature", "learner_model_param", 1, MAX_FEATURES)
    num_class = _param(params, "num_class", "learner_model_param", 0, MAX_CLASSES, "0")
    targets = _param(params, "num_target", "learner_model_param", 1, MAX_CLASSES, "1")
    groups = max(num_class, targets, 1)
    if "base_score" in params:
        _base_score(params["base_score"], groups)
    for key in ("feature_names", "feature_types"):
        listed = learner.get(key, [])
        if not isinstance(listed, list) or len(listed) not in (0, features):
            raise _invalid(f"{key} must list each of the {features} features")
        if not all(isinstance(item, str) and len(item) <= 1000 for item in listed):
            raise _invalid(f"{key} must hold text")
    if any(kind not in _XGB_FEATURE_TYPES for kind in learner.get("feature_types", [])):
        raise _invalid("feature_types holds a type XGBoost does not write")
    objective = _object(learner.get("objective", {}), "objective")
    name = objective.get("name")
    if name is not None:
        if name not in XGB_OBJECTIVES:
            raise _invalid(f"the objective {str(name)[:40]!r} is not one XGBoost writes")
        if str(name).startswith("multi:"):
            declared = _param(
                _object(objective.get("softmax_multiclass_param"), "softmax_multiclass_param"),
                "num_class",
                "the objective's",
                1,
                MAX_CLASSES,
            )
            if declared != num_class:
                raise _invalid(f"the objective has {declared} classes but the model declares {num_class}")
        elif num_class > 1:
            raise _invalid(
                f"a {name} model has one output per target, but the model declares {num_class} classes"
            )
    booster = _object(learner.get("gradient_booster"), "gradient_booster")
    kind = booster.get("name")
    if kind == "gblinear":
        weights = _object(booster.get("model"), "the linear model").get("weights")
        _number_list(weights, "the linear weights", (features + 1) * groups, finite=True)
        return
    if kind == "dart":
        model = _object(_object(booster.get("gbtree"), "the dart booster").get("model"), "model")
        count = _xgboost_trees(model, features, groups)
        _number_list(booster.get("weight_drop"), "weight_drop", count, finite=True)
    elif kind == "gbtree":
        _xgboost_trees(_object(booster.get("model"), "model"), features, groups)
    else:
        raise _invalid(f"the booster {str(kind)[:40]!r} is not gbtree, dart or gblinear")


def _xgboost_trees(model: dict[str, Any], features: int, groups: int) -> int:
    params = _object(model.get("gbtree_model_param"), "gbtree_model_param")
    count = _param(params, "num_trees", "gbtree_model_param", 0, 10_000_000)
    parallel = _param(params, "num_parallel_tree", "gbtree_model_param", 1, 100_000, "1")
    trees = model.get("trees")
    if not isinstance(trees, list) or len(trees) != count:
        raise _invalid(
            f"the model declares {count} trees but holds {len(trees) if isinstance(trees, list) else 0}"
        )
    _int_list(model.get("tree_info"), "tree_info", count, 0, groups - 1)
    if "iteration_indptr" in model:
        pointers = _int_list(model["iteration_indptr"], "iteration_indptr", None, 0, count)
        if not pointers or pointers[0] != 0 or pointers[-1] != count:
            raise _invalid("iteration_indptr must run from 0 to the number of trees")
        if any(b < a for a, b in pairwise(pointers)):
            raise _invalid("iteration_indptr must never decrease")
    elif count % parallel:
        raise _invalid("the trees are not a whole number of rounds")
    if "cats" in model:
        _xgboost_categories(_object(model["cats"], "cats"), features)
    for index, tree in enumerate(trees):
        _xgboost_tree(_object(tree, f"tree {index}"), index, features)
    return count


def _xgboost_categories(cats: dict[str, Any], features: int) -> None:
    """The category encoder (XGBoost 3): per feature, the categories seen in training."""
    encoders = cats.get("enc", [])
    if not isinstance(encoders, list) or len(encoders) not in (0, features):
        raise _invalid("the category encoder must describe every feature")
    segments = _int_list(cats.get("feature_segments", []), "feature_segments", None, 0, INT32_MAX)
    order = _int_list(cats.get("sorted_idx", []), "sorted_idx", None, 0, INT32_MAX)
    if not encoders:
        if segments or order:
            raise _invalid("the category encoder has segments but no features")
        return
    if len(segments) != features + 1 or segments[0] != 0 or segments[-1] != len(order):
        raise _invalid("feature_segments must run from 0 to the number of categories, one per feature")
    for j, encoder in enumerate(encoders):
        low, high = segments[j], segments[j + 1]
        if high < low:
            raise _invalid("feature_segments must never decrease")
        size = high - low
        encoder = _object(encoder, "a category encoder")
        values = encoder.get("values")
        if "offsets" in encoder:
            offsets = _int_list(encoder["offsets"], "category offsets", None, 0, INT32_MAX)
            values = _int_list(values, "category names", None, 0, 255)
            if size == 0 and not offsets:
                pass
            elif len(offsets) != size + 1 or offsets[0] != 0 or offsets[-1] != len(values):
                raise _invalid("category offsets must run from 0 to the end of the names, one per category")
            elif any(b < a for a, b in pairwise(offsets)):
                raise _invalid("category offsets must never decrease")
        else:
            if type(encoder.get("type")) is not int or not 0 <= encoder["type"] < 64:
                raise _invalid("a category encoder has no valid type")
            _number_list(values, "category values", size, finite=True)
        if any(not 0 <= position < size for position in order[low:high]):
            raise _invalid("sorted_idx points outside its feature's categories")


def _xgboost_tree(tree: dict[str, Any], index: int, features: int) -> None:
    where = f"tree {index}"
    if tree.get("id") != index:
        raise _invalid(f"{where} has id {str(tree.get('id'))[:20]}")
    params = _object(tree.get("tree_param"), f"{where} tree_param")
    nodes = _param(params, "num_nodes", f"{where}", 1, MAX_NODES)
    deleted = _param(params, "num_deleted", f"{where}", 0, nodes - 1, "0")
    if _param(params, "num_feature", f"{where}", 0, MAX_FEATURES, str(features)) != features:
        raise _invalid(f"{where} declares another number of features than the model")
    if _param(params, "size_leaf_vector", f"{where}", 0, MAX_CLASSES, "1") > 1:
        raise _invalid(f"{where} has vector leaves (multi-target trees), which are not served")
    left = _int_list(tree.get("left_children"), f"{where} left_children", nodes, -1, nodes - 1)
    right = _int_list(tree.get("right_children"), f"{where} right_children", nodes, -1, nodes - 1)
    parents = _int_list(tree.get("parents"), f"{where} parents", nodes, -1, INT32_MAX)
    splits = _int_list(tree.get("split_indices"), f"{where} split_indices", nodes, 0, INT32_MAX)
    conditions = _number_list(tree.get("split_conditions"), f"{where} split_conditions", nodes, finite=False)
    defaults = tree.get("default_left")
    if not isinstance(defaults, list) or len(defaults) != nodes or any(d not in (0, 1) for d in defaults):
        raise _invalid(f"{where} default_left must hold 0 or 1 for each of the {nodes} nodes")
    for key in ("base_weights", "loss_changes", "sum_hessian"):
        if key in tree:
            _number_list(tree[key], f"{where} {key}", nodes, finite=False)
    kinds = _int_list(tree.get("split_type", []), f"{where} split_type", None, 0, 1)
    if kinds and len(kinds) != nodes:
        raise _invalid(f"{where} split_type holds {len(kinds)} values; {nodes} are declared")
    for node in range(nodes):
        if (left[node] == -1) != (right[node] == -1) or (left[node] == 0 or right[node] == 0):
            raise _invalid(f"{where}: node {node} has an impossible pair of children")
    reached = _reach(lambda node: [] if left[node] == -1 else [left[node], right[node]], where)
    reached_set = set(reached)
    if len(reached) != nodes - deleted:
        raise _invalid(
            f"{where}: {len(reached)} nodes are reached from the root; {nodes - deleted} are declared"
        )
    categorical = set()
    for node in range(nodes):
        if node not in reached_set:
            if left[node] != -1 or splits[node] != DELETED_NODE:
                raise _invalid(f"{where}: node {node} is not reached from the root and not pruned")
            continue
        if splits[node] >= features:
            raise _invalid(f"{where}: node {node} splits on feature {splits[node]}; the model has {features}")
        if not math.isfinite(conditions[node]):
            raise _invalid(f"{where}: node {node} has a value that is not a finite number")
        if left[node] != -1:
            for child in (left[node], right[node]):
                if parents[child] != node:
                    raise _invalid(f"{where}: node {child} does not name its parent {node}")
            if kinds and kinds[node] == 1:
                categorical.add(node)
    if 0 <= parents[0] < nodes:
        raise _invalid(f"{where}: the root names a parent")
    _xgboost_tree_categories(tree, categorical, where)


def _xgboost_tree_categories(tree: dict[str, Any], categorical: set[int], where: str) -> None:
    listed = _int_list(tree.get("categories_nodes", []), f"{where} categories_nodes", None, 0, MAX_NODES)
    count = len(listed)
    segments = _int_list(
        tree.get("categories_segments", []), f"{where} categories_segments", count, 0, INT32_MAX
    )
    sizes = _int_list(tree.get("categories_sizes", []), f"{where} categories_sizes", count, 0, INT32_MAX)
    categories = _int_list(tree.get("categories", []), f"{where} categories", None, 0, MAX_CATEGORY - 1)
    if set(listed) != categorical or len(set(listed)) != count:
        raise _invalid(f"{where}: categories_nodes must list each categorical split once")
    for segment, size in zip(segments, sizes, strict=True):
        if segment + size > len(categories):
            raise _invalid(f"{where}: a categorical split's segment runs past the category list")
