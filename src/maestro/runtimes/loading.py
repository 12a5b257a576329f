"""Loading a registry version or a file through its load check: isolated when its format
calls for it (XGBoost, LightGBM) or when the check must run, in process otherwise."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from maestro.runtimes.base import MIN_MEMORY_BYTES, Runtime
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.isolation import (
    ISOLATED_FORMATS,
    CrashCallback,
    IsolatedRuntime,
    Isolation,
    LoadCheck,
    _mib,
    check_model,
    needs_check,
)
from maestro.runtimes.service import VersionFile, load_runtime, read_version_file, resolve_format
from maestro.sandbox import (
    Sandbox,
)

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.storage import ArtifactStore


# --- loading a registry version ---------------------------------------------------------------------
def load_checked_version(
    version: VersionFile,
    store: ArtifactStore,
    settings: Settings,
    *,
    threads: int = 1,
    inter_op_threads: int = 1,
    record: Callable[[LoadCheck], None] | None = None,
    on_crash: CrashCallback | None = None,
    sandbox: Sandbox | None = None,
) -> Runtime:
    """A runtime for a version's file, as servers load it: the stored load check is used
    when it is current, else the file is checked now (and ``record`` keeps the result);
    a file that failed is refused with the check's reason. XGBoost and LightGBM are
    served from an isolated process, other formats in this one."""
    data = read_version_file(version, store, settings)
    return load_checked_file(
        data,
        format=version.format,
        trusted=version.trusted,
        model_schema=version.model_schema,
        settings=settings,
        store=store,
        stored_check=getattr(version, "load_check", None),
        sha256=version.sha256,
        threads=threads,
        inter_op_threads=inter_op_threads,
        record=record,
        on_crash=on_crash,
        sandbox=sandbox,
    )


def load_checked_file(
    data: bytes,
    *,
    format: ModelFormat | str | None,
    trusted: bool,
    model_schema: Mapping[str, Any] | None,
    settings: Settings,
    store: ArtifactStore | None = None,
    stored_check: Any = None,
    sha256: str | None = None,
    threads: int = 1,
    inter_op_threads: int = 1,
    record: Callable[[LoadCheck], None] | None = None,
    on_crash: CrashCallback | None = None,
    sandbox: Sandbox | None = None,
) -> Runtime:
    """``load_checked_version`` for bytes at hand (a file of the model server's models
    directory, say)."""
    fmt = resolve_format(format, data)
    isolation = Isolation.from_settings(settings, store)
    check = None
    if needs_check(fmt, trusted):
        digest = sha256 or hashlib.sha256(data).hexdigest()
        check = LoadCheck.from_dict(stored_check)
        if check is None or not check.current_for(sha256=digest, fmt=fmt, trusted=trusted):
            check = check_model(
                data,
                format=fmt,
                trusted=trusted,
                model_schema=model_schema,
                isolation=isolation,
                sha256=digest,
                sandbox=sandbox,
            )
            if record is not None:
                record(check)
        if not check.passed:
            raise check.refusal()
        if check.memory_bytes is not None and check.memory_bytes > isolation.memory_bytes:
            raise ModelLoadError(
                "out_of_memory",
                f"The model takes {_mib(check.memory_bytes)} of memory once loaded, over the "
                f"{_mib(isolation.memory_bytes)} budget of a model (MAESTRO_MODEL_MEMORY_BUDGET_BYTES)",
            )
    if fmt in ISOLATED_FORMATS:
        return IsolatedRuntime(
            data,
            format=fmt,
            trusted=trusted,
            model_schema=model_schema,
            isolation=isolation,
            sandbox=sandbox,
            on_crash=on_crash,
        )
    started = time.perf_counter()
    runtime = load_runtime(
        data,
        format=fmt,
        trusted=trusted,
        model_schema=model_schema,
        threads=threads,
        inter_op_threads=inter_op_threads,
        max_bytes=settings.max_model_bytes,
        unpacked_max_bytes=isolation.memory_bytes,
    )
    if check is not None and check.memory_bytes is not None:
        runtime.memory_bytes = max(check.memory_bytes, MIN_MEMORY_BYTES)  # measured, not estimated
    runtime.load_seconds = time.perf_counter() - started
    return runtime
