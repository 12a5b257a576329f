"""Loading a model file by its format into a ``Runtime``: one interface for every format.

A runtime takes a 2-D float matrix (``inputs.to_matrix`` builds one from request rows)
and answers ``predict`` and, where the model has them, ``predict_proba``; it knows its
``input_schema``, ``classes`` and what it is actually serving.

What may be loaded, and how:

- **skops**: the types in the file are checked against an allow-list kept here (the
  scikit-learn internals a fitted estimator legitimately holds, beside the estimators
  skops itself trusts); never one taken from the file. Anything else is refused unless
  an organisation admin trusted the version.
- **ONNX**: parsed as plain protobuf first; any tensor stored as external data, in any
  graph or subgraph, refuses the model before onnxruntime sees it, so a model can never
  make the server read a path of its choosing. The session is built from bytes with
  explicit thread counts (default threads degrade badly under contention).
- **XGBoost JSON** and **LightGBM text**: their trees are checked in pure Python first
  (``tree_checks``: the libraries trust every index in the file), then their own parsers
  read them from memory. Servers run these in isolated processes (``isolation``).
- **pickle / joblib**: run code when loaded, so only for a version an admin trusted;
  otherwise refused before a byte of the file is read.

scikit-learn models (from skops or a trusted pickle) are converted to ONNX when the
conversion agrees with the original on a validation sample; see ``conversion.py``.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from maestro.errors import NotFound
from maestro.runtimes.base import BYTE_LIMIT_MESSAGE, HEAD_BYTES, Runtime
from maestro.runtimes.boosters import LightGBMRuntime, XGBoostRuntime
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.estimators import load_skops, not_trusted, unpickle_trusted
from maestro.runtimes.formats import CODE_EXECUTING_FORMATS, ModelFormat, detect_format
from maestro.runtimes.inputs import (
    parse_model_schema,
    schema_classes,
)
from maestro.runtimes.onnx import OnnxRuntime
from maestro.runtimes.tree_checks import check_tree_model

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.storage import ArtifactStore

# scikit-learn warns on every call when a model fitted on a data frame gets a matrix; the
# matrix's columns are already in the model's order (the input schema guarantees it).
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


# --- entry points --------------------------------------------------------------------------------------
def resolve_format(declared: str | ModelFormat | None, data: bytes) -> ModelFormat:
    if declared is None:
        return detect_format(data[:HEAD_BYTES], io.BytesIO(data), len(data))
    try:
        return ModelFormat(declared)
    except ValueError:
        raise ModelLoadError(
            "unsupported_format", f"Models in the {str(declared)[:50]!r} format cannot be served"
        ) from None


def load_runtime(
    data: bytes,
    *,
    format: str | ModelFormat | None,
    trusted: bool = False,
    model_schema: Mapping[str, Any] | None = None,
    validation_sample: Any = None,
    convert: bool = True,
    threads: int = 1,
    inter_op_threads: int = 1,
    max_bytes: int | None = None,
    unpacked_max_bytes: int | None = None,
    check_trees: bool = True,
) -> Runtime:
    """A runtime for a model file. ``format`` is the version's recognised format (None:
    recognise it from the bytes); ``trusted`` is the admin's mark on the version. A
    scikit-learn model is served as ONNX when conversion agrees with it on
    ``validation_sample`` (rows) or on rows generated from the schema. ``max_bytes``
    bounds the file, and with ``unpacked_max_bytes`` what an archive unpacks to.
    ``check_trees=False`` hands XGBoost and LightGBM files to the native code unchecked:
    only to test what isolation contains."""
    started = time.perf_counter()
    fmt = resolve_format(format, data)
    if fmt in CODE_EXECUTING_FORMATS and not trusted:
        raise not_trusted(fmt)
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelLoadError("too_large", BYTE_LIMIT_MESSAGE.format(size=len(data), limit=max_bytes))
    declared = parse_model_schema(model_schema)
    classes = schema_classes(model_schema)
    runtime: Runtime
    if fmt is ModelFormat.onnx:
        runtime = OnnxRuntime(
            data,
            declared=declared,
            classes=classes,
            intra_op_threads=threads,
            inter_op_threads=inter_op_threads,
        )
    elif fmt is ModelFormat.xgboost_json:
        if check_trees:
            check_tree_model(data, fmt)
        runtime = XGBoostRuntime(data, declared=declared, classes=classes, threads=threads)
    elif fmt is ModelFormat.lightgbm_txt:
        if check_trees:
            check_tree_model(data, fmt)
        runtime = LightGBMRuntime(data, declared=declared, classes=classes, threads=threads)
    elif fmt in (ModelFormat.skops, ModelFormat.joblib, ModelFormat.pickle):
        from maestro.runtimes.conversion import serve_estimator

        limits = [limit for limit in (max_bytes, unpacked_max_bytes) if limit is not None]
        model = (
            load_skops(data, trusted=trusted, max_bytes=min(limits) if limits else None)
            if fmt is ModelFormat.skops
            else unpickle_trusted(data, fmt, trusted=trusted)
        )
        runtime = serve_estimator(
            model,
            fmt=fmt,
            declared=declared,
            file_size=len(data),
            convert=convert,
            validation_sample=validation_sample,
            threads=threads,
            inter_op_threads=inter_op_threads,
        )
    else:
        raise ModelLoadError(
            "unsupported_format",
            f"Models in the {fmt} format cannot be served; upload skops, ONNX, XGBoost JSON or LightGBM text",
        )
    runtime.name_classes(model_schema)
    runtime.load_seconds = time.perf_counter() - started
    return runtime


class VersionFile(Protocol):
    """What loading needs of a model version (a ``ModelVersion`` row, or a snapshot of one)."""

    id: str
    file_key: str | None
    sha256: str | None
    format: str | None
    trusted: bool
    model_schema: dict[str, Any] | None


def read_version_file(version: VersionFile, store: ArtifactStore, settings: Settings) -> bytes:
    """A version's file from the artifact store: an untrusted pickle is refused before
    its file is read, the size limit is checked before reading, and the bytes must match
    the checksum recorded at upload."""
    if not version.file_key:
        raise ModelLoadError("no_file", "This version has no model file")
    if version.format in CODE_EXECUTING_FORMATS and not version.trusted:
        raise not_trusted(ModelFormat(version.format))
    limit = settings.max_model_bytes
    try:
        size = store.size(version.file_key)
        if size > limit:
            raise ModelLoadError("too_large", BYTE_LIMIT_MESSAGE.format(size=size, limit=limit))
        data = store.read_bytes(version.file_key)
    except NotFound:
        raise ModelLoadError(
            "file_missing", "The version's model file is missing from the artifact store"
        ) from None
    if version.sha256 and hashlib.sha256(data).hexdigest() != version.sha256:
        raise ModelLoadError(
            "checksum_mismatch",
            "The stored model file does not match the checksum recorded when it was uploaded",
        )
    return data


def load_version(
    version: VersionFile,
    store: ArtifactStore,
    settings: Settings,
    *,
    validation_sample: Any = None,
    convert: bool = True,
    threads: int = 1,
    inter_op_threads: int = 1,
) -> Runtime:
    """A runtime for a version's file in the artifact store, loaded in this process
    (``read_version_file`` says what is refused before loading). Servers load versions
    through ``loading.load_checked_version``, which checks the file in an isolated
    process first and serves XGBoost and LightGBM from one."""
    return load_runtime(
        read_version_file(version, store, settings),
        format=version.format,
        trusted=version.trusted,
        model_schema=version.model_schema,
        validation_sample=validation_sample,
        convert=convert,
        threads=threads,
        inter_op_threads=inter_op_threads,
        max_bytes=settings.max_model_bytes,
    )
