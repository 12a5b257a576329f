"""Model files are loaded first in an isolated process, and XGBoost and LightGBM models
are served from one, so that no model file can crash, stall, exhaust or read the
server.

The native libraries behind the formats Maestro serves do not defend themselves
against crafted files: a LightGBM or XGBoost file with out-of-range indices crashes the
process that loads it or reads its memory (``tree_checks`` refuses those it can
recognise), and a tiny ONNX or skops file can ask for gigabytes when it is loaded. So:

- **The load check** (``check_model``) runs in a confined child process of the sandbox
  (``maestro.sandbox``) with the per-model memory budget, a CPU budget and no file
  writes. It checks XGBoost and LightGBM trees in pure Python, loads the file with the
  real runtime (``load_runtime``, which converts scikit-learn to ONNX where it agrees),
  warms it up and predicts rows of extreme values (±3e38, 0 and NaN where the model
  takes missing values). The server reads from /proc what loading cost the child (its
  peak resident memory after loading and warming up, minus what it held before) and
  refuses a model over the budget. The result (``LoadCheck``) is plain data kept on the
  version: versions are checked at upload, and again before loading when they have no
  result or a stale one (another file, another trust, another Maestro).
- **Isolated serving** (``IsolatedRuntime``): XGBoost and LightGBM answer from a
  long-lived child process that holds the model. A crash or a time-out fails only the
  request that caused it (422), the next request starts a new process, and after
  ``max_crashes`` failures within the crash window the runtime answers 503 until the
  model is loaded again. ONNX and skops models that passed the check are served in the
  server's own process, counted at the memory the check measured.

Children start from the sandbox's clean zygote (forked in milliseconds, no secrets in
memory), may read no file of the data directory or the artifact store, and answer in
the sandbox's pickle-free message format, which the server reads as hostile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from maestro import __version__
from maestro.errors import ServiceUnavailable
from maestro.runtimes.base import MIN_MEMORY_BYTES, Runtime
from maestro.runtimes.errors import ModelLoadError, PredictionError, ServingError
from maestro.runtimes.formats import CODE_EXECUTING_FORMATS, ModelFormat
from maestro.runtimes.inputs import InputSchema, parse_model_schema
from maestro.sandbox import (
    Child,
    ChildDied,
    ChildFailed,
    ChildTimedOut,
    Limits,
    Message,
    Sandbox,
    SandboxError,
    shared_sandbox,
)
from maestro.sandbox import describe_exit as _describe_exit

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.storage import ArtifactStore

logger = logging.getLogger("maestro.serving")

ENTRY = "maestro.runtimes.model_process:model_process"
# Raised when what the check covers changes, so that older results are checked again.
CHECK_VERSION = 1
ISOLATED_FORMATS = frozenset({ModelFormat.xgboost_json, ModelFormat.lightgbm_txt})
CHECKED_FORMATS = frozenset(
    {*ISOLATED_FORMATS, ModelFormat.onnx, ModelFormat.skops, ModelFormat.pickle, ModelFormat.joblib}
)
# Refusals an organisation admin lifts by trusting the version: not a reason to refuse an upload.
TRUST_REASONS = frozenset({"not_trusted", "untrusted_types"})
EXTREME = 3e38  # near the float32 limit, so every model's input type holds it
MAX_DESCRIPTION_BYTES = 64 * 1024**2
MAX_CLASSES = 10_000
MAX_OUTPUTS = 100_000
_REASON = re.compile(r"[a-z][a-z_]{0,39}\Z")
# Models loading at once in isolated processes of this server: each may take its whole
# memory budget, so a burst of uploads waits its turn instead of piling up.
_LOADING = threading.BoundedSemaphore(
    max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
)
# How the libraries word a failed allocation once it reaches Python as another error.
OUT_OF_MEMORY = re.compile(r"MemoryError|bad_alloc|[Ff]ailed to allocate|[Oo]ut of memory")


def needs_check(fmt: ModelFormat | str | None, trusted: bool) -> bool:
    """Whether a file of this format is loaded at all (pickles only once trusted)."""
    try:
        known = ModelFormat(fmt) if fmt is not None else None
    except ValueError:
        return False
    return known in CHECKED_FORMATS and (known not in CODE_EXECUTING_FORMATS or trusted)


def _mib(value: int) -> str:
    return f"{value / 1024**2:,.0f} MiB"


# --- limits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Isolation:
    """The budgets of model processes, from the settings."""

    memory_bytes: int
    cpu_seconds: int
    load_seconds: float
    request_seconds: float
    max_crashes: int
    crash_window_seconds: float
    max_file_bytes: int
    check_trees: bool = True
    protected: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, store: ArtifactStore | None = None) -> Isolation:
        """The budgets, and the directories no model process may read: the data
        directory (database, signing key) and the local artifact store."""
        protected = {str(Path(settings.data_dir).resolve())}
        if "://" not in settings.resolved_storage_url:
            protected.add(str(Path(settings.resolved_storage_url).resolve()))
        if store is not None and store.is_local:
            protected.add(str(Path(store.root).resolve()))
        return cls(
            memory_bytes=settings.model_memory_budget_bytes,
            cpu_seconds=settings.model_check_cpu_seconds,
            load_seconds=settings.model_load_timeout_seconds,
            request_seconds=settings.model_process_request_seconds,
            max_crashes=settings.model_process_max_crashes,
            crash_window_seconds=settings.model_process_crash_window_seconds,
            max_file_bytes=settings.max_model_bytes,
            check_trees=settings.model_check_trees,
            protected=tuple(sorted(protected)),
        )


# --- the result of a check --------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadCheck:
    """What loading a file in an isolated process showed. ``memory_bytes`` is what the
    model costs once loaded and warmed up; a failure names its ``reason`` (a stable code)
    and ``message``. Stored on the version as ``to_dict()``."""

    status: str  # "passed" or "failed"
    format: str
    trusted: bool
    sha256: str
    memory_bytes: int | None = None
    reason: str | None = None
    message: str | None = None
    serving: str | None = None  # what answers, e.g. "onnx (converted from skops)"
    seconds: float = 0.0
    checked_at: str = ""
    maestro_version: str = __version__
    check_version: int = CHECK_VERSION
    description: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name != "description"}

    @classmethod
    def from_dict(cls, value: Any) -> LoadCheck | None:
        """A stored result, or None when there is none (or it cannot be read)."""
        if not isinstance(value, Mapping):
            return None
        try:
            return cls(
                status=str(value["status"]),
                format=str(value["format"]),
                trusted=bool(value["trusted"]),
                sha256=str(value["sha256"]),
                memory_bytes=int(value["memory_bytes"]) if value.get("memory_bytes") is not None else None,
                reason=value.get("reason"),
                message=value.get("message"),
                serving=value.get("serving"),
                seconds=float(value.get("seconds") or 0.0),
                checked_at=str(value.get("checked_at") or ""),
                maestro_version=str(value.get("maestro_version") or ""),
                check_version=int(value.get("check_version") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def current_for(self, *, sha256: str, fmt: ModelFormat, trusted: bool) -> bool:
        """Whether this result still speaks for the file: the same bytes, format and
        trust, checked by this Maestro."""
        return (
            self.sha256 == sha256
            and self.format == str(fmt)
            and self.trusted == trusted
            and self.maestro_version == __version__
            and self.check_version == CHECK_VERSION
        )

    def refusal(self) -> ModelLoadError:
        return ModelLoadError(
            self.reason or "corrupt", self.message or "The model file failed its load check"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _sha256_of(data: bytes | None, path: str | None) -> str:
    digest = hashlib.sha256()
    if data is not None:
        digest.update(data)
    elif path is not None:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def check_model(
    data: bytes | None = None,
    *,
    format: ModelFormat | str,
    isolation: Isolation,
    trusted: bool = False,
    model_schema: Mapping[str, Any] | None = None,
    path: str | None = None,
    sha256: str | None = None,
    sandbox: Sandbox | None = None,
) -> LoadCheck:
    """Load the file (its bytes, or a local ``path`` the isolated process may read) in an
    isolated process, warm it up, predict extreme rows and measure its memory. Never
    raises for the file's sake: a file that fails is a failed ``LoadCheck``. Raises
    ``ServiceUnavailable`` when no isolated process can be started."""
    fmt = ModelFormat(format)
    digest = sha256 or _sha256_of(data, path)
    started = time.perf_counter()
    common: dict[str, Any] = {"format": str(fmt), "trusted": trusted, "sha256": digest, "checked_at": _now()}
    try:
        child, description, _baseline, cost = _start_process(
            sandbox or shared_sandbox(),
            fmt,
            data,
            path,
            trusted=trusted,
            model_schema=model_schema,
            isolation=isolation,
            cpu_seconds=isolation.cpu_seconds,
        )
    except ModelLoadError as exc:
        seconds = round(time.perf_counter() - started, 4)
        return LoadCheck(status="failed", reason=exc.reason, message=exc.message, seconds=seconds, **common)
    child.kill()
    return LoadCheck(
        status="passed",
        memory_bytes=cost,
        serving=str(description.get("serving") or ""),
        seconds=round(time.perf_counter() - started, 4),
        description=description,
        **common,
    )


# --- the server's side of a model process -----------------------------------------------------------
def _imports(fmt: ModelFormat) -> list[str]:
    """onnxruntime starts threads when imported, so the zygote cannot hold it: children
    that may need it (ONNX, and scikit-learn models converted to ONNX) import it."""
    return [] if fmt in ISOLATED_FORMATS else ["onnxruntime"]


def json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(orjson.dumps(value), dtype=np.uint8)


def _spawn(
    sandbox: Sandbox, fmt: ModelFormat, path: str | None, *, isolation: Isolation, cpu_seconds: int | None
) -> Child:
    try:
        return sandbox.spawn(
            ENTRY,
            {},
            limits=Limits(memory_bytes=isolation.memory_bytes, cpu_seconds=cpu_seconds, file_bytes=0),
            imports=_imports(fmt),
            readable=[path] if path else [],
            protected=isolation.protected,
            start_timeout=isolation.load_seconds,
        )
    except SandboxError as exc:
        logger.error("could not start an isolated model process: %s", exc.message)
        raise ServiceUnavailable(
            "Model files cannot be loaded in an isolated process on this server right now; try again later"
        ) from None


def _start_process(
    sandbox: Sandbox,
    fmt: ModelFormat,
    data: bytes | None,
    path: str | None,
    *,
    trusted: bool,
    model_schema: Mapping[str, Any] | None,
    isolation: Isolation,
    cpu_seconds: int | None,
) -> tuple[Child, dict[str, Any], int, int]:
    """A process holding the loaded, warmed model: (process, its trusted description,
    its resident memory before loading, what loading cost)."""
    if not _LOADING.acquire(timeout=isolation.load_seconds):
        raise ServiceUnavailable("Too many models are being loaded on this server; try again shortly")
    try:
        child = _spawn(sandbox, fmt, path, isolation=isolation, cpu_seconds=cpu_seconds)
        meta = {
            "op": "load",
            "format": str(fmt),
            "trusted": trusted,
            "path": path,
            "max_bytes": isolation.max_file_bytes,
            "unpacked_max_bytes": isolation.memory_bytes,
            "check_trees": isolation.check_trees,
        }
        arrays = [
            json_bytes(dict(model_schema) if model_schema else None),
            np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8),
        ]
        try:
            before = child.memory().rss_bytes
            reply = child.request(
                meta, arrays, timeout=isolation.load_seconds, max_reply_bytes=MAX_DESCRIPTION_BYTES
            )
            cost = max(child.memory().peak_bytes - before, 0)
            if cost > isolation.memory_bytes:
                raise ModelLoadError(
                    "out_of_memory",
                    f"Loading the model took {_mib(cost)} of memory; it ran out of its "
                    f"{_mib(isolation.memory_bytes)} memory budget (MAESTRO_MODEL_MEMORY_BUDGET_BYTES)",
                )
            description = _trusted_description(reply, fmt, model_schema)
        except SandboxError as exc:
            child.kill()
            raise _load_failure(exc, isolation) from None
        except BaseException:
            child.kill()
            raise
        return child, description, before, cost

    finally:
        _LOADING.release()


def _load_failure(exc: SandboxError, isolation: Isolation) -> ModelLoadError:
    """Why loading failed, in words for the model's owner."""
    if isinstance(exc, ChildFailed):
        reason = exc.details.get("reason") if exc.kind == "Refused" else None
        if reason == "out_of_memory" or exc.kind.endswith("MemoryError"):
            return ModelLoadError(
                "out_of_memory",
                f"Loading the model ran out of its {_mib(isolation.memory_bytes)} memory budget "
                "(MAESTRO_MODEL_MEMORY_BUDGET_BYTES)",
            )
        if reason is not None:
            return ModelLoadError(
                reason if isinstance(reason, str) and _REASON.match(reason) else "corrupt", exc.message
            )
        return ModelLoadError("corrupt", f"The model could not be loaded ({exc.kind}: {exc.message})")
    if isinstance(exc, ChildTimedOut):
        return ModelLoadError(
            "timed_out",
            f"Loading the model did not finish within {isolation.load_seconds:g} s; it was stopped",
        )
    if isinstance(exc, ChildDied):
        if exc.exit_code == -24:  # SIGXCPU
            return ModelLoadError(
                "cpu_time",
                f"Loading the model used up its CPU time ({isolation.cpu_seconds} s, "
                "MAESTRO_MODEL_CHECK_CPU_SECONDS)",
            )
        return ModelLoadError(
            "crashed", f"The model's isolated process {_describe_exit(exc.exit_code)} while loading it"
        )
    return ModelLoadError("crashed", f"The model's isolated process failed while loading it ({exc.message})")


def _trusted_description(
    reply: Message, fmt: ModelFormat, model_schema: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The process's description of the model, checked as hostile input: a corrupted
    process may send anything. For a model the server will serve from that process,
    what it relies on (inputs, classes, outputs) must be well formed and agree with the
    version's declarations; of other models only what is shown (``serving``) is kept."""
    try:
        if len(reply.arrays) != 1 or reply.arrays[0].dtype != np.uint8:
            raise ValueError("no description")
        raw = orjson.loads(reply.arrays[0].tobytes())
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        serving = raw.get("serving")
        if not isinstance(serving, str) or len(serving) > 200:
            raise ValueError("bad serving")
        if fmt not in ISOLATED_FORMATS:
            return {"serving": serving}
        schema = parse_model_schema({"inputs": raw.get("inputs")})
        if schema is None:
            raise ValueError("no inputs")
        declared = parse_model_schema(model_schema)
        if declared is not None and schema != declared:
            raise ValueError("inputs other than the version declares")
        classes = raw.get("classes")
        declared_classes = (model_schema or {}).get("classes")
        if classes is not None:
            if not isinstance(classes, list) or not 0 < len(classes) <= MAX_CLASSES:
                raise ValueError("bad classes")
            if classes != (declared_classes if declared_classes is not None else list(range(len(classes)))):
                raise ValueError("classes other than the version declares")
        outputs = raw.get("outputs")
        if type(outputs) is not int or not 1 <= outputs <= MAX_OUTPUTS:
            raise ValueError("bad output width")
        supports_proba, accepts_missing = raw.get("supports_proba"), raw.get("accepts_missing")
        if not isinstance(supports_proba, bool) or not isinstance(accepts_missing, bool):
            raise ValueError("bad flags")
        if supports_proba and classes is None:
            raise ValueError("probabilities without classes")
    except (ValueError, TypeError, ModelLoadError, orjson.JSONDecodeError) as exc:
        raise SandboxError(f"it described the model wrongly ({str(exc)[:200]})") from None
    source = raw.get("schema_source")
    return {
        "schema": InputSchema(
            schema.features, source if source in ("model", "generated", "model_schema") else "model"
        ),
        "classes": classes,
        "outputs": outputs,
        "supports_proba": supports_proba,
        "accepts_missing": accepts_missing,
        "serving": serving,
    }


# --- serving from a model process ---------------------------------------------------------------------
CrashCallback = Callable[["IsolatedRuntime", str, bool], None]


class IsolatedRuntime(Runtime):
    """An XGBoost or LightGBM model answering from its own isolated process.

    One request at a time goes to the process (the libraries predict a request in
    microseconds to milliseconds; the lock queues the rest). When the process dies or
    does not answer in time, that request fails with 422 and the next request starts a
    new process; ``on_crash(runtime, message, failed)`` hears of each crash, ``failed``
    once ``max_crashes`` happened within the crash window, after which every request
    answers 503 until ``revive``. ``close`` ends the process (once the request it
    serves, if any, is answered)."""

    def __init__(
        self,
        data: bytes,
        *,
        format: ModelFormat | str,
        isolation: Isolation,
        trusted: bool = False,
        model_schema: Mapping[str, Any] | None = None,
        sandbox: Sandbox | None = None,
        on_crash: CrashCallback | None = None,
    ) -> None:
        self.format = ModelFormat(format)
        if self.format not in ISOLATED_FORMATS:
            raise ValueError(f"{self.format} models are not served from isolated processes")
        self.serving_form = "xgboost" if self.format is ModelFormat.xgboost_json else "lightgbm"
        self._data = data
        self._trusted = trusted
        self._model_schema = dict(model_schema) if model_schema else None
        self.isolation = isolation
        self._sandbox = sandbox or shared_sandbox()
        self.on_crash = on_crash
        self._lock = threading.Lock()
        self._crashes: deque[float] = deque()
        self.failure: str | None = None
        self._closed = False
        started = time.perf_counter()
        self._child: Child | None
        self._child, description, self._baseline, self._cost = self._spawn()
        self.input_schema = description["schema"]
        self.classes = description["classes"]
        self.supports_proba = description["supports_proba"]
        self.accepts_missing = description["accepts_missing"]
        self._outputs = description["outputs"]
        self._labels = np.asarray(self.classes) if self.classes is not None else None
        self.name_classes(model_schema)
        self.load_seconds = time.perf_counter() - started

    def _spawn(self) -> tuple[Child, dict[str, Any], int, int]:
        return _start_process(
            self._sandbox,
            self.format,
            self._data,
            None,
            trusted=self._trusted,
            model_schema=self._model_schema,
            isolation=self.isolation,
            cpu_seconds=None,  # a long-lived process: each request has its own time limit instead
        )

    # --- what the server sees -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.alive else None

    @property
    def memory_bytes(self) -> int:  # type: ignore[override]  # read live, where Runtime stores a figure
        """What the model costs its process now (resident memory beyond what the process
        held before loading), read from /proc."""
        child = self._child
        if child is None or not child.alive:
            return max(self._cost, MIN_MEMORY_BYTES)
        return max(child.memory().rss_bytes - self._baseline, MIN_MEMORY_BYTES)

    @property
    def crash_count(self) -> int:
        return len(self._crashes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "isolated": True}

    def warm_up(self) -> None:
        """The process warmed the model up when it loaded it."""

    # --- predicting ----------------------------------------------------------------------------------
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self._call(matrix, proba=False)[0]

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if not self.supports_proba:
            return super().predict_proba(matrix)  # the base class's clear refusal
        probabilities = self._call(matrix, proba=True)[1]
        assert probabilities is not None
        return probabilities

    def predict_with_proba(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._call(matrix, proba=self.supports_proba)

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.predict(matrix)

    def _call(self, matrix: np.ndarray, *, proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self._check(matrix)
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        crashes: list[tuple[str, bool]] = []  # reported once the lock is released
        try:
            with self._lock:
                return self._answer(matrix, proba, crashes)
        finally:
            for message, failed in crashes:
                if self.on_crash is not None:
                    try:
                        self.on_crash(self, message, failed)
                    except Exception:
                        logger.exception("could not report a crash of a model process")

    def _answer(
        self, matrix: np.ndarray, proba: bool, crashes: list[tuple[str, bool]]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One request to the process (called with the lock held)."""
        if self.failure is None and self._child is not None and self._child.hung_up():
            # It ended between requests: counted, but this request goes to a new process.
            crashes.append(self._note_crash(f"{_describe_exit(self._child.exit_code)} between requests"))
        if self.failure is not None:
            raise ServingError("model_failed", self.failure, status=503)
        if self._closed:
            raise ServingError(
                "model_unloaded",
                "The model was unloaded while this request waited; send it again",
                status=503,
            )
        child = self._child
        try:
            if child is None:
                child = self._restart()
            reply = child.request(
                {"op": "predict", "proba": proba},
                [matrix],
                timeout=self.isolation.request_seconds,
                max_reply_bytes=self._reply_limit(len(matrix)),
            )
            return self._read_outputs(reply, len(matrix), proba)
        except ChildFailed as exc:
            if exc.kind == "Refused":  # the model refused the input; the process is fine
                reason = exc.details.get("reason")
                code = reason if isinstance(reason, str) and _REASON.match(reason) else "prediction_failed"
                raise PredictionError(code, exc.message) from None
            crash = self._note_crash(f"failed unexpectedly ({exc.kind})")
        except ChildTimedOut:
            crash = self._note_crash(f"did not answer within {self.isolation.request_seconds:g} s")
        except ChildDied as exc:
            crash = self._note_crash(_describe_exit(exc.exit_code))
        except (SandboxError, ModelLoadError) as exc:
            crash = self._note_crash(f"failed ({getattr(exc, 'message', exc)})")
        finally:
            if self._closed and self._child is not None:
                self._child.kill()
        crashes.append(crash)
        message, failed = crash
        raise PredictionError(
            "model_crashed",
            f"The model's process {message} on this input; the request was not answered"
            + (" and the model stopped serving after repeated crashes" if failed else ""),
        )

    def _restart(self) -> Child:
        """A new process for the next request (called with the lock held)."""
        try:
            self._child, _description, self._baseline, self._cost = self._spawn()
        except ServiceUnavailable as exc:
            raise SandboxError(exc.message) from None
        logger.info("restarted the isolated process of a %s model (pid %s)", self.format, self._child.pid)
        return self._child

    def _note_crash(self, what: str) -> tuple[str, bool]:
        """Count a crash (with the lock held); the process is gone or killed."""
        if self._child is not None:
            self._child.kill()
            self._child = None
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.isolation.crash_window_seconds:
            self._crashes.popleft()
        failed = len(self._crashes) >= self.isolation.max_crashes
        if failed:
            self.failure = (
                f"The model's process crashed {len(self._crashes)} times within "
                f"{self.isolation.crash_window_seconds:g} s (MAESTRO_MODEL_PROCESS_MAX_CRASHES); it "
                "no longer answers until the model is deployed or loaded again"
            )
        logger.warning(
            "an isolated %s model process %s (%d recent crashes)", self.format, what, len(self._crashes)
        )
        return what, failed

    def _reply_limit(self, rows: int) -> int:
        width = max(self._outputs, len(self.classes or ()))
        return 4096 + rows * 8 * (width + width + 1)

    def _read_outputs(self, reply: Message, rows: int, proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The process's answer, checked as hostile input."""
        arrays = reply.arrays
        expected = 2 if proba and self.supports_proba else 1
        if len(arrays) != expected:
            raise SandboxError("it answered with the wrong number of arrays")
        labels = arrays[0]
        if labels.ndim not in (1, 2) or labels.shape[0] != rows:
            raise SandboxError("it answered with the wrong number of rows")
        if self._labels is not None:
            if labels.ndim != 1 or labels.dtype.kind not in "iu":
                raise SandboxError("it answered classes that are not positions")
            if rows and (labels.min() < 0 or labels.max() >= len(self._labels)):
                raise SandboxError("it answered classes the model does not have")
            labels = self._labels[labels]
        elif labels.dtype.kind not in "fiu":
            raise SandboxError("it answered values that are not numbers")
        probabilities = None
        if expected == 2:
            probabilities = arrays[1]
            assert self.classes is not None
            if probabilities.dtype != np.float64 or probabilities.shape != (rows, len(self.classes)):
                raise SandboxError("it answered probabilities of the wrong shape")
        return labels, probabilities

    # --- lifecycle -------------------------------------------------------------------------------------
    def revive(self) -> None:
        """Forget the crashes: the next request starts a new process (a redeploy)."""
        with self._lock:
            self.failure = None
            self._crashes.clear()
            self._closed = False

    def close(self) -> None:
        """End the process; a request it is serving finishes first."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                if self._child is not None:
                    self._child.kill()
            finally:
                self._lock.release()


__all__ = [
    "CHECKED_FORMATS",
    "ISOLATED_FORMATS",
    "TRUST_REASONS",
    "IsolatedRuntime",
    "Isolation",
    "LoadCheck",
    "check_model",
    "needs_check",
]
