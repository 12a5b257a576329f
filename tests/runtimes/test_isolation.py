"""Model files are loaded in isolated processes: the load check reports what a file
costs and refuses what crashes, overruns or does not load, naming why; XGBoost and
LightGBM answer from a process of their own whose crashes fail one request, restart,
and past a limit stop the model; the model cache counts what models really cost."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest

from maestro.config import Settings
from maestro.runtimes import ModelCache, ModelLoadError, PredictionError, ServingError, load_runtime
from maestro.runtimes.formats import ModelFormat
from maestro.runtimes.isolation import IsolatedRuntime, Isolation, LoadCheck, check_model
from maestro.runtimes.loading import load_checked_file
from maestro.sandbox import Sandbox
from tests.conftest import wait_until
from tests.runtimes import crafted
from tests.runtimes.fixtures import Data
from tests.runtimes.modelfiles import lightgbm_bytes, onnx_bytes, skops_bytes, xgboost_bytes

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024**2
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(python_path=[str(ROOT)])
    yield box
    box.close()


@pytest.fixture
def isolation(tmp_path: Path) -> Isolation:
    settings = Settings(_env_file=None, environment="test", data_dir=tmp_path / "data")  # type: ignore[call-arg]
    return Isolation.from_settings(settings)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return True


# --- the load check ----------------------------------------------------------------------------
def test_the_check_reports_what_each_format_costs(
    sandbox: Sandbox, isolation: Isolation, logreg: Any, booster: Any, lgbm: Any, tmp_path: Path
) -> None:
    files = {
        "skops": skops_bytes(logreg),
        "onnx": onnx_bytes(logreg),
        "xgboost-json": xgboost_bytes(booster, tmp_path),
        "lightgbm-txt": lightgbm_bytes(lgbm),
    }
    for fmt, data in files.items():
        check = check_model(data, format=fmt, isolation=isolation, sandbox=sandbox)
        assert check.passed, (fmt, check.message)
        assert 64 * 1024 <= (check.memory_bytes or 0) < isolation.memory_bytes
        assert check.format == fmt and check.trusted is False
        assert LoadCheck.from_dict(check.to_dict()) == check  # stored and read back as plain data
    assert check_model(files["skops"], format="skops", isolation=isolation, sandbox=sandbox).serving == (
        "onnx (converted from skops)"
    )


def test_a_file_that_does_not_load_fails_with_its_reason(sandbox: Sandbox, isolation: Isolation) -> None:
    check = check_model(b"\x08\x07not a graph", format="onnx", isolation=isolation, sandbox=sandbox)
    assert (check.status, check.reason) == ("failed", "corrupt")
    assert "ONNX" in (check.message or "")
    refused = check_model(crafted.killswitch(), format="lightgbm-txt", isolation=isolation, sandbox=sandbox)
    assert refused.reason == "corrupt"
    assert "right_child is -2000000000" in (refused.message or "")


def test_files_past_the_tree_checks_crash_only_their_process(sandbox: Sandbox, isolation: Isolation) -> None:
    """Defence in depth: with the tree checks off, the native libraries get the crafted
    files, and only the isolated process dies (this test process goes on)."""
    unchecked = dataclasses.replace(isolation, check_trees=False)
    aborted = check_model(
        crafted.min_treesizes(), format="lightgbm-txt", isolation=unchecked, sandbox=sandbox
    )
    assert (aborted.reason, aborted.message) == (
        "crashed",
        "The model's isolated process aborted while loading it",
    )
    killed = check_model(crafted.killswitch(), format="lightgbm-txt", isolation=unchecked, sandbox=sandbox)
    assert killed.reason == "crashed"  # the extreme rows reach the kill switch during the check
    assert "segmentation fault" in (killed.message or "")


def test_a_model_asking_for_more_memory_than_its_budget_is_refused(
    sandbox: Sandbox, isolation: Isolation
) -> None:
    bomb = crafted.onnx_constant_bomb()
    assert len(bomb) < 1024
    small = dataclasses.replace(isolation, memory_bytes=256 * MIB)
    check = check_model(bomb, format="onnx", isolation=small, sandbox=sandbox)
    assert check.reason == "out_of_memory"
    assert "256 MiB memory budget" in (check.message or "")


@pytest.mark.slow
def test_a_skops_file_is_counted_at_what_it_unpacks_to(sandbox: Sandbox, isolation: Isolation) -> None:
    junk = crafted.skops_with_junk()
    assert len(junk) < 1024 * 1024  # a quarter of a megabyte on disk
    roomy = dataclasses.replace(isolation, memory_bytes=1024 * MIB)
    check = check_model(junk, format="skops", isolation=roomy, sandbox=sandbox)
    assert check.passed, check.message
    assert (check.memory_bytes or 0) >= 256 * MIB  # the 32 Mi zeros, not an estimate from 257 KB
    tight = dataclasses.replace(isolation, memory_bytes=128 * MIB)
    refused = check_model(junk, format="skops", isolation=tight, sandbox=sandbox)
    assert not refused.passed
    assert refused.reason in ("out_of_memory", "too_large")  # past the budget, or unpacking past it


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """The zip with ``name``'s uncompressed size declared as ``size`` in both its headers."""
    patched = bytearray(data)
    for signature, name_offset, size_offset in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        position = patched.find(signature)
        while position >= 0:
            if patched[position + name_offset : position + name_offset + len(name)] == name.encode():
                patched[position + size_offset : position + size_offset + 4] = size.to_bytes(4, "little")
            position = patched.find(signature, position + 4)
    return bytes(patched)


def test_skops_members_are_measured_by_what_they_unpack_to() -> None:
    """The sizes a zip declares can lie: what each member really yields is counted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", "{}")
        archive.writestr("0.npy", bytes(8 * MIB))
    honest = buffer.getvalue()
    with pytest.raises(ModelLoadError) as caught:
        load_runtime(honest, format="skops", max_bytes=4 * MIB)
    assert caught.value.reason == "too_large"
    with pytest.raises(ModelLoadError) as lied:
        load_runtime(_declare_size(honest, "0.npy", 1000), format="skops", max_bytes=4 * MIB)
    assert lied.value.reason in ("too_large", "corrupt")  # never loaded as if it were 1,000 bytes


# --- serving from an isolated process ------------------------------------------------------------
@pytest.fixture
def lightgbm_model(data: Data) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lightgbm.LGBMClassifier(n_estimators=10, num_leaves=8, verbose=-1, n_jobs=1).fit(
            data.X, data.y3
        )


def test_an_isolated_model_answers_as_it_would_in_process(
    sandbox: Sandbox, isolation: Isolation, lightgbm_model: Any, booster: Any, data: Data, tmp_path: Path
) -> None:
    schema = {"classes": ["low", "mid", "high"]}
    files = [
        (lightgbm_bytes(lightgbm_model), ModelFormat.lightgbm_txt, schema),
        (xgboost_bytes(booster, tmp_path), ModelFormat.xgboost_json, None),
    ]
    for content, fmt, model_schema in files:
        here = load_runtime(content, format=fmt, model_schema=model_schema)
        isolated = IsolatedRuntime(
            content, format=fmt, model_schema=model_schema, isolation=isolation, sandbox=sandbox
        )
        try:
            assert isolated.classes == here.classes
            assert isolated.input_schema == here.input_schema
            labels, proba = isolated.predict_with_proba(data.fresh)
            expected_labels, expected_proba = here.predict_with_proba(data.fresh)
            assert labels.tolist() == expected_labels.tolist()
            np.testing.assert_allclose(proba, expected_proba, rtol=1e-12)
            assert isolated.predict(data.fresh[:1]).tolist() == expected_labels[:1].tolist()
            assert isolated.describe()["isolated"] is True
            assert 64 * 1024 <= isolated.memory_bytes < isolation.memory_bytes
        finally:
            isolated.close()


def test_a_killed_process_is_replaced_for_the_next_request(
    sandbox: Sandbox, isolation: Isolation, lgbm: Any, data: Data
) -> None:
    crashes: list[tuple[str, bool]] = []
    runtime = IsolatedRuntime(
        lightgbm_bytes(lgbm),
        format="lightgbm-txt",
        isolation=isolation,
        sandbox=sandbox,
        on_crash=lambda _runtime, message, failed: crashes.append((message, failed)),
    )
    expected = runtime.predict(data.fresh)
    first = runtime.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(first))
    assert runtime.predict(data.fresh).tolist() == expected.tolist()  # nothing in flight: nothing fails
    assert runtime.pid not in (None, first)
    assert crashes == [("was killed between requests", False)]
    runtime.close()


def test_a_kill_switch_that_loading_trips_crashes_only_its_process(
    sandbox: Sandbox, isolation: Isolation
) -> None:
    unchecked = dataclasses.replace(isolation, check_trees=False)
    with pytest.raises(ModelLoadError) as caught:
        IsolatedRuntime(crafted.killswitch(), format="lightgbm-txt", isolation=unchecked, sandbox=sandbox)
    assert caught.value.reason == "crashed"
    assert "segmentation fault" in caught.value.message


def test_a_model_that_passed_the_check_but_crashes_later_is_stopped(
    sandbox: Sandbox, isolation: Isolation
) -> None:
    """A kill switch only a narrow range of one feature trips (loading's rows do not):
    each request that trips it fails alone (422), the rows around it are answered by a
    new process, and the third crash stops the model (503) until it is revived."""
    unchecked = dataclasses.replace(isolation, check_trees=False, max_crashes=3)
    crashes: list[tuple[str, bool]] = []
    runtime = IsolatedRuntime(
        crafted.lightgbm_window_switch(),
        format="lightgbm-txt",
        isolation=unchecked,
        sandbox=sandbox,
        on_crash=lambda _runtime, message, failed: crashes.append((message, failed)),
    )
    safe = np.array([[2.0, 0.0, 0.0]])
    trip = np.array([[0.12345, 0.0, 0.0]])
    for attempt in range(3):
        assert runtime.predict(safe).shape == (1,)
        with pytest.raises(PredictionError) as caught:
            runtime.predict(trip)
        assert caught.value.reason == "model_crashed"
        assert caught.value.status_code == 422
        assert "crashed (segmentation fault) on this input" in caught.value.message
        assert len(crashes) == attempt + 1
    assert [failed for _message, failed in crashes] == [False, False, True]
    with pytest.raises(ServingError) as stopped:
        runtime.predict(safe)
    assert stopped.value.status_code == 503
    assert "crashed 3 times" in stopped.value.message
    runtime.revive()  # what a new deploy does
    assert runtime.predict(safe).shape == (1,)
    pid = runtime.pid
    runtime.close()
    assert pid is not None and gone(pid)


def test_a_model_that_does_not_answer_in_time_is_stopped(
    sandbox: Sandbox, isolation: Isolation, lgbm: Any, data: Data
) -> None:
    runtime = IsolatedRuntime(
        lightgbm_bytes(lgbm), format="lightgbm-txt", isolation=isolation, sandbox=sandbox
    )
    pid = runtime.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a process that hangs
    runtime.isolation = dataclasses.replace(isolation, request_seconds=0.2)
    with pytest.raises(PredictionError) as caught:
        runtime.predict(data.fresh)
    assert "did not answer within 0.2 s" in caught.value.message
    runtime.isolation = isolation
    assert runtime.predict(data.fresh).shape == (len(data.fresh),)
    assert gone(pid)
    runtime.close()


# --- memory accounting ---------------------------------------------------------------------------
def test_the_cache_counts_measured_memory_and_refuses_past_its_limit(
    tmp_path: Path, sandbox: Sandbox, logreg: Any, lgbm: Any
) -> None:
    settings = Settings(_env_file=None, environment="test", data_dir=tmp_path / "data")  # type: ignore[call-arg]
    files = {"skops": skops_bytes(logreg), "lightgbm": lightgbm_bytes(lgbm)}
    loaded: dict[str, Any] = {}
    pids: dict[str, int | None] = {}

    def loader(key: str) -> Any:
        runtime = load_checked_file(
            files[key.split(":")[0]],
            format=None,
            trusted=False,
            model_schema=None,
            settings=settings,
            sandbox=sandbox,
        )
        loaded[key], pids[key] = runtime, getattr(runtime, "pid", None)
        return runtime

    cache = ModelCache(loader, max_models=10, max_bytes=10**12)
    cache.swap("a", "skops:1")
    cache.swap("b", "lightgbm:1")
    skops_cost, lightgbm_cost = loaded["skops:1"].memory_bytes, loaded["lightgbm:1"].memory_bytes
    assert skops_cost > 1024 * 1024  # measured in the check: not the 64 KiB floor of an estimate
    assert isinstance(loaded["lightgbm:1"], IsolatedRuntime)
    entries = {entry["key"]: entry["memory_bytes"] for entry in cache.stats().entries}
    assert entries == {"skops:1": skops_cost, "lightgbm:1": lightgbm_cost}

    cache.max_bytes = skops_cost + lightgbm_cost + lightgbm_cost // 2
    with pytest.raises(ModelLoadError) as caught:
        cache.swap("c", "lightgbm:2")  # a third live model would pass the limit
    assert caught.value.reason == "too_large_for_cache"
    assert "MAESTRO_SERVING_CACHE_MAX_BYTES" in caught.value.message
    assert "lightgbm:2" not in cache and cache.key_for("c") is None
    refused = pids["lightgbm:2"]
    assert refused is not None and gone(refused)  # the refused model's process ended
    cache.swap("b", "lightgbm:2")  # replacing what a name serves fits
    assert cache.key_for("b") == "lightgbm:2"
    first = pids["lightgbm:1"]
    assert "lightgbm:1" not in cache  # no longer served, and over the limit: dropped
    assert first is not None and gone(first)  # and its process ended
    last = pids["lightgbm:2"]
    cache.close()
    assert last is not None and gone(last)
