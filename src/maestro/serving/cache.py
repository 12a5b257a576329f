"""The model cache: loaded runtimes keyed by version id, shared by every request.

- Lazy: a version loads on first use, and its first prediction (the warm-up) runs
  before any request sees it.
- One load per key: concurrent requests for a cold version wait for the same load.
  Different versions load in parallel.
- Bounded: least recently used runtimes are dropped when the count or the estimated
  memory passes its limit, but never one a live name points at (nor one prepared for a
  swap), so the cache may stay over its limits while every runtime in it is in use.
- Hot swap: ``prepare(key)`` loads and warms a new version while the old one keeps
  serving; ``swap(name, key)`` then moves the name in one step. A request that already
  holds the old runtime finishes on it, so a deploy or rollback never fails a request.

A failed load (``ModelLoadError``: the file itself is the problem) is remembered for
``failure_ttl`` seconds, so a broken model is not reloaded by every request;
``invalidate(key)`` forgets it at once (after an admin trusts the version, say).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from maestro.serving.errors import ModelLoadError
from maestro.serving.runtimes import Runtime

logger = logging.getLogger("maestro.serving")

Loader = Callable[[str], Runtime]


@dataclass
class _Entry:
    runtime: Runtime
    size: int
    loaded_at: float
    last_used: float
    hits: int = 0


@dataclass
class CacheStats:
    loads: int = 0
    load_failures: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    swaps: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)


class ModelCache:
    """``loader(key)`` builds a runtime (``load_version`` for the version ``key`` names);
    it runs outside the cache's lock, one call per key at a time. ``on_evict`` runs with
    the lock held, so it must be quick and must not call back into the cache."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_models: int,
        max_bytes: int,
        warm_up: bool = True,
        failure_ttl: float = 5.0,
        on_evict: Callable[[str, Runtime], None] | None = None,
    ) -> None:
        if max_models < 1 or max_bytes < 1:
            raise ValueError("the cache needs room for at least one model")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._loader = loader
        self._warm_up = warm_up
        self._failure_ttl = failure_ttl
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future[Runtime]] = {}
        self._failures: dict[str, tuple[ModelLoadError, float]] = {}
        self._names: dict[str, str] = {}  # live name → key
        self._prepared: Counter[str] = Counter()
        self._total_bytes = 0
        self._stats = CacheStats()

    # --- reading -----------------------------------------------------------------------------
    def get(self, key: str) -> Runtime:
        """The runtime for ``key``, loading (and warming) it on first use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._touch(key, entry)
                return entry.runtime
            failure = self._failures.get(key)
            if failure is not None:
                if failure[1] > time.monotonic():
                    raise ModelLoadError(failure[0].reason, failure[0].message)
                del self._failures[key]
            future = self._loading.get(key)
            owner = future is None
            if future is None:
                future = self._loading[key] = Future()
                self._stats.misses += 1
        if not owner:
            return future.result()
        try:
            runtime = self._load(key)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
                self._stats.load_failures += 1
                if isinstance(exc, ModelLoadError) and self._failure_ttl > 0:
                    self._failures[key] = (exc, time.monotonic() + self._failure_ttl)
            future.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            self._insert(key, runtime)
        future.set_result(runtime)
        return runtime

    def runtime_for(self, name: str) -> Runtime:
        """The runtime a live name serves; ``KeyError`` when the name serves nothing."""
        with self._lock:
            key = self._names[name]
            entry = self._entries.get(key)
            if entry is not None:
                self._touch(key, entry)
                return entry.runtime
        return self.get(key)

    def key_for(self, name: str) -> str | None:
        with self._lock:
            return self._names.get(name)

    def names(self) -> dict[str, str]:
        with self._lock:
            return dict(self._names)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total_bytes

    def stats(self) -> CacheStats:
        with self._lock:
            by_key: dict[str, list[str]] = {}
            for name, key in self._names.items():
                by_key.setdefault(key, []).append(name)
            entries = [
                {
                    "key": key,
                    "names": sorted(by_key.get(key, [])),
                    "prepared": self._prepared[key] > 0,
                    "memory_bytes": entry.size,
                    "hits": entry.hits,
                    "serving": entry.runtime.serving,
                    "loaded_seconds_ago": round(time.monotonic() - entry.loaded_at, 3),
                }
                for key, entry in self._entries.items()
            ]
            return CacheStats(
                loads=self._stats.loads,
                load_failures=self._stats.load_failures,
                hits=self._stats.hits,
                misses=self._stats.misses,
                evictions=self._stats.evictions,
                swaps=self._stats.swaps,
                entries=entries,
            )

    # --- deploying -----------------------------------------------------------------------------
    def prepare(self, key: str) -> Runtime:
        """Load and warm ``key`` ahead of a swap, keeping it from eviction until it is
        swapped in or ``discard``-ed. The names it will replace keep serving meanwhile."""
        runtime = self.get(key)
        with self._lock:
            self._prepared[key] += 1
            if key not in self._entries:  # evicted between the load and now
                self._insert(key, runtime)
        return runtime

    def discard(self, key: str) -> None:
        """Undo a ``prepare`` that will not be swapped in."""
        with self._lock:
            self._release_prepared(key)
            self._evict_over_limits()

    def swap(self, name: str, key: str) -> str | None:
        """Point ``name`` at ``key`` in one step, loading ``key`` first if ``prepare``
        did not. Returns the key the name served before. If loading fails the name keeps
        serving what it served."""
        runtime = self.get(key)
        with self._lock:
            if key not in self._entries:
                self._insert(key, runtime)
            previous = self._names.get(name)
            self._names[name] = key
            self._release_prepared(key)
            self._stats.swaps += 1
            self._evict_over_limits(keep=key)
        logger.info("model name %s now serves %s (was %s)", name, key, previous)
        return previous

    def release(self, name: str) -> str | None:
        """Stop serving ``name``; its runtime stays cached but may now be evicted."""
        with self._lock:
            key = self._names.pop(name, None)
            self._evict_over_limits()
            return key

    def evict(self, key: str) -> bool:
        """Drop ``key`` now; refused (False) while a live name or a prepared swap uses it."""
        with self._lock:
            if key not in self._entries or key in self._pinned():
                return False
            self._drop(key)
            return True

    def invalidate(self, key: str) -> None:
        """Forget a remembered load failure and drop the runtime unless it is in use,
        so the next request loads the version afresh."""
        with self._lock:
            self._failures.pop(key, None)
            if key in self._entries and key not in self._pinned():
                self._drop(key)

    # --- inside the lock ----------------------------------------------------------------------------
    def _touch(self, key: str, entry: _Entry) -> None:
        self._entries.move_to_end(key)
        entry.hits += 1
        entry.last_used = time.monotonic()
        self._stats.hits += 1

    def _pinned(self) -> set[str]:
        return set(self._names.values()) | {key for key, count in self._prepared.items() if count > 0}

    def _release_prepared(self, key: str) -> None:
        if self._prepared[key] > 1:
            self._prepared[key] -= 1
        else:
            self._prepared.pop(key, None)

    def _insert(self, key: str, runtime: Runtime) -> None:
        now = time.monotonic()
        self._entries[key] = _Entry(runtime, runtime.memory_bytes, now, now)
        self._total_bytes += runtime.memory_bytes
        self._evict_over_limits(keep=key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._total_bytes -= entry.size
        self._stats.evictions += 1
        if self._on_evict is not None:
            try:
                self._on_evict(key, entry.runtime)
            except Exception:
                logger.exception("eviction callback failed for %s", key)

    def _evict_over_limits(self, keep: str | None = None) -> None:
        pinned = self._pinned()
        while len(self._entries) > self.max_models or self._total_bytes > self.max_bytes:
            victim = next((key for key in self._entries if key != keep and key not in pinned), None)
            if victim is None:
                return  # everything left is in use: stay over the limit rather than fail a name
            self._drop(victim)

    # --- outside the lock -------------------------------------------------------------------------
    def _load(self, key: str) -> Runtime:
        started = time.perf_counter()
        with self._lock:
            self._stats.loads += 1
        runtime = self._loader(key)
        if runtime.memory_bytes > self.max_bytes:
            raise ModelLoadError(
                "too_large_for_cache",
                f"The model needs about {runtime.memory_bytes:,} bytes of memory; the model cache holds "
                f"at most {self.max_bytes:,}",
            )
        if self._warm_up:
            runtime.warm_up()
        logger.info("loaded %s as %s in %.3f s", key, runtime.serving, time.perf_counter() - started)
        return runtime
