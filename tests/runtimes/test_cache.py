"""The model cache: lazy, bounded by count and memory, one load per key, and hot swaps
that never fail a request."""

from __future__ import annotations

import gc
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from maestro.runtimes import ModelCache, ModelLoadError, Runtime, load_runtime
from tests.runtimes.modelfiles import FEATURES, linear_onnx

ROWS = np.ones((4, FEATURES))
FILES = {
    "v1": linear_onnx(1.0),
    "v2": linear_onnx(2.0),
    "v3": linear_onnx(3.0),
    "v4": linear_onnx(4.0),
    "fails-on-use": linear_onnx(1.0, fixed_reshape=True),
    "not-onnx": b"\x08\x07 not a model",
}


class Loads:
    """A loader over real model files that counts its calls per key."""

    def __init__(self, files: dict[str, bytes] = FILES, before: Callable[[str], None] | None = None) -> None:
        self.files = files
        self.calls: Counter[str] = Counter()
        self.before = before
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Runtime:
        with self._lock:
            self.calls[key] += 1
        if self.before is not None:
            self.before(key)
        return load_runtime(self.files[key], format="onnx")


def scale_of(runtime: Runtime) -> float:
    return float(runtime.predict(ROWS)[0]) / FEATURES


def make(loads: Loads | None = None, **options: Any) -> tuple[ModelCache, Loads]:
    loads = loads or Loads()
    options.setdefault("max_models", 10)
    options.setdefault("max_bytes", 10**9)
    return ModelCache(loads, **options), loads


@pytest.fixture(scope="module")
def model_size() -> int:
    return load_runtime(FILES["v1"], format="onnx").memory_bytes


class TestLazyLoading:
    def test_first_use_loads_and_later_uses_hit(self) -> None:
        cache, loads = make()
        assert "v1" not in cache
        first = cache.get("v1")
        assert cache.get("v1") is first
        assert scale_of(first) == 1.0
        assert loads.calls["v1"] == 1
        stats = cache.stats()
        assert (stats.loads, stats.misses, stats.hits) == (1, 1, 1)
        assert stats.entries[0]["key"] == "v1"

    def test_a_model_failing_its_warm_up_is_not_served(self) -> None:
        cache, _ = make()
        with pytest.raises(ModelLoadError) as caught:
            cache.get("fails-on-use")
        assert caught.value.reason == "warm_up_failed"
        assert "fails-on-use" not in cache

    def test_a_failed_load_is_remembered_until_invalidated(self) -> None:
        cache, loads = make(failure_ttl=3600)
        for _ in range(3):
            with pytest.raises(ModelLoadError) as caught:
                cache.get("not-onnx")
            assert caught.value.reason == "corrupt"
        assert loads.calls["not-onnx"] == 1
        cache.invalidate("not-onnx")
        with pytest.raises(ModelLoadError):
            cache.get("not-onnx")
        assert loads.calls["not-onnx"] == 2

    def test_other_failures_are_retried(self) -> None:
        attempts = Counter[str]()

        def flaky(key: str) -> None:
            attempts[key] += 1
            if attempts[key] == 1:
                raise OSError("storage unreachable")

        cache, _ = make(Loads(before=flaky))
        with pytest.raises(OSError, match="unreachable"):
            cache.get("v1")
        assert scale_of(cache.get("v1")) == 1.0

    def test_a_model_larger_than_the_cache(self, model_size: int) -> None:
        cache, _ = make(max_bytes=model_size - 1)
        with pytest.raises(ModelLoadError) as caught:
            cache.get("v1")
        assert caught.value.reason == "too_large_for_cache"


class TestLimits:
    def test_least_recently_used_goes_first_by_count(self) -> None:
        cache, loads = make(max_models=2)
        cache.get("v1")
        cache.get("v2")
        cache.get("v1")  # v2 is now the least recently used
        cache.get("v3")
        assert ("v1" in cache, "v2" in cache, "v3" in cache) == (True, False, True)
        cache.get("v2")
        assert loads.calls["v2"] == 2
        assert cache.stats().evictions == 2

    def test_least_recently_used_goes_first_by_memory(self, model_size: int) -> None:
        cache, _ = make(max_bytes=int(model_size * 2.5))
        for key in ("v1", "v2", "v3"):
            cache.get(key)
        assert "v1" not in cache and {"v2", "v3"} <= {k for k in FILES if k in cache}
        assert cache.total_bytes <= cache.max_bytes

    def test_a_live_name_is_never_evicted(self) -> None:
        cache, loads = make(max_models=1)
        cache.swap("churn", "v1")
        serving = cache.runtime_for("churn")
        for key in ("v2", "v3", "v4"):
            cache.get(key)
        assert "v1" in cache
        assert cache.runtime_for("churn") is serving
        assert loads.calls["v1"] == 1
        assert len(cache) == 2  # over the limit rather than dropping what a name serves

    def test_a_released_name_can_be_evicted(self) -> None:
        cache, _ = make(max_models=1)
        cache.swap("churn", "v1")
        cache.get("v2")
        assert cache.release("churn") == "v1"
        assert "v1" not in cache
        with pytest.raises(KeyError):
            cache.runtime_for("churn")

    def test_evict_refuses_what_is_in_use(self) -> None:
        cache, _ = make()
        cache.swap("churn", "v1")
        cache.get("v2")
        assert not cache.evict("v1")
        assert cache.evict("v2")
        assert "v2" not in cache
        assert not cache.evict("v2")

    def test_a_prepared_version_waits_for_its_swap(self) -> None:
        cache, loads = make(max_models=1)
        cache.swap("churn", "v1")
        cache.prepare("v2")
        cache.get("v3")
        cache.get("v4")
        assert "v2" in cache
        cache.swap("churn", "v2")
        assert loads.calls["v2"] == 1
        assert "v1" not in cache  # released by the swap, then evicted
        cache.prepare("v3")
        cache.discard("v3")
        assert "v3" not in cache

    def test_a_change_learnt_late_never_undoes_a_newer_swap(self) -> None:
        cache, _ = make(max_models=1)
        cache.swap("churn", "v1")
        cache.prepare("v2")  # another process deployed v2 while this one served v1
        assert cache.move("churn", "v2", serving="v1")
        assert cache.key_for("churn") == "v2"
        cache.prepare("v3")  # learnt late: meanwhile this process deployed v4
        cache.swap("churn", "v4")
        assert not cache.move("churn", "v3", serving="v2")
        assert cache.key_for("churn") == "v4"
        assert "v3" not in cache  # let go, not kept as if still to be swapped in


class Held:
    """Holds a load until ``waiters`` other requests wait on it (the cache's ``on_wait``
    signal), so that they overlap the load however slow the machine is. A load the
    others never wait on fails after a minute instead of hanging the test."""

    def __init__(self, waiters: int) -> None:
        self.waiters = waiters
        self.waiting = 0
        self.everyone_waits = threading.Event()
        self._lock = threading.Lock()

    def wait(self, _key: str) -> None:
        with self._lock:
            self.waiting += 1
            if self.waiting == self.waiters:
                self.everyone_waits.set()

    def hold(self, _key: str) -> None:
        if not self.everyone_waits.wait(timeout=60):
            raise AssertionError(f"{self.waiting} of {self.waiters} requests waited on the load")


def concurrently(request: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=request) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class TestConcurrentLoads:
    def test_concurrent_first_requests_share_one_load(self) -> None:
        held = Held(waiters=7)
        cache, loads = make(Loads(before=held.hold), on_wait=held.wait)
        results: list[Runtime] = []
        errors: list[BaseException] = []

        def request() -> None:
            try:
                results.append(cache.get("v1"))
            except BaseException as exc:
                errors.append(exc)

        concurrently(request, 8)
        assert errors == []
        assert held.waiting == 7
        assert loads.calls["v1"] == 1
        assert cache.stats().misses == 1
        assert len(results) == 8 and all(runtime is results[0] for runtime in results)

    def test_different_versions_load_side_by_side(self) -> None:
        started = {key: threading.Event() for key in ("v1", "v2")}
        other = {"v1": "v2", "v2": "v1"}
        overlapped: list[bool] = []

        def meet(key: str) -> None:
            started[key].set()
            overlapped.append(started[other[key]].wait(timeout=30))

        cache, _ = make(Loads(before=meet))
        threads = [threading.Thread(target=cache.get, args=(key,)) for key in ("v1", "v2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert overlapped == [True, True]
        assert "v1" in cache and "v2" in cache

    def test_waiters_share_a_failure(self) -> None:
        held = Held(waiters=3)
        # Nothing remembers the failure: a request that came after it would load again.
        cache, loads = make(Loads(before=held.hold), failure_ttl=0, on_wait=held.wait)
        reasons: list[str] = []

        def request() -> None:
            try:
                cache.get("not-onnx")
            except ModelLoadError as exc:
                reasons.append(exc.reason)

        concurrently(request, 4)
        assert reasons == ["corrupt"] * 4
        assert held.waiting == 3
        assert loads.calls["not-onnx"] == 1


class TestHotSwap:
    def test_deploys_and_rollbacks_under_traffic_fail_no_request(self) -> None:
        # One model slot: every swap evicts the version it replaced, so each rollback
        # loads it afresh while requests keep arriving.
        cache, loads = make(max_models=1)
        cache.swap("churn", "v1")
        stop = threading.Event()
        failures: list[BaseException] = []
        answered: Counter[float] = Counter()
        answer = threading.Condition()

        def client() -> None:
            while not stop.is_set():
                try:
                    scale = scale_of(cache.runtime_for("churn"))
                except BaseException as exc:
                    failures.append(exc)
                    continue
                with answer:
                    answered[scale] += 1
                    answer.notify_all()

        def wait_for_answers(scale: float, more: int) -> None:
            """Until the clients have answered ``more`` more times from ``scale``."""
            with answer:
                target = answered[scale] + more
                if not answer.wait_for(lambda: answered[scale] >= target, timeout=60):
                    raise AssertionError(f"the clients answered {dict(answered)}, waiting for {scale}")

        clients = [threading.Thread(target=client) for _ in range(3)]
        for thread in clients:
            thread.start()
        try:
            for step in range(6):
                target = "v2" if step % 2 == 0 else "v1"
                cache.prepare(target)
                previous = cache.swap("churn", target)
                assert previous == ("v1" if target == "v2" else "v2")
                assert scale_of(cache.runtime_for("churn")) == float(target[1])
                with pytest.raises(ModelLoadError):
                    cache.swap("churn", "not-onnx")  # a broken deploy leaves the name serving
                assert cache.key_for("churn") == target
                wait_for_answers(float(target[1]), 50)  # traffic reaches the new version
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        assert failures == []
        assert answered[1.0] > 0 and answered[2.0] > 0
        assert set(answered) == {1.0, 2.0}
        assert loads.calls["v1"] >= 3  # evicted after each deploy, reloaded by each rollback
        assert cache.stats().swaps == 7  # the first deploy and six changes


def test_a_loaded_model_is_out_of_the_collectors_sight() -> None:
    """Full collections while serving never scan a loaded model's objects again: the
    load's garbage is collected and what remains is frozen (unfrozen here afterwards)."""
    cache, _ = make()
    try:
        runtime = cache.get("v1")
        assert not any(tracked is runtime for tracked in gc.get_objects())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        cache.close()
