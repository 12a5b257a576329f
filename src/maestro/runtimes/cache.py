"""The model cache: loaded runtimes keyed by version id, shared by every request.

- Lazy: a version loads on first use, and its first prediction (the warm-up) runs
  before any request sees it.
- One load per key: concurrent requests for a cold version wait for the same load.
  Different versions load in parallel.
- Bounded: least recently used runtimes are dropped when the count or the memory
  passes its limit, but never one a live name points at (nor one prepared for a swap).
  A runtime's memory is what it was measured to cost (``Runtime.memory_bytes``: the load
  check's measurement, or an isolated process's resident memory). Preparing or swapping
  in a runtime that would take the runtimes in use past ``max_bytes`` is refused
  (``too_large_for_cache``) rather than letting the process grow; past the count limit
  the cache may stay over while every runtime in it is in use.
- Dropped runtimes are closed (``Runtime.close``: an isolated process ends), outside the lock.
- Hot swap: ``prepare(key)`` loads and warms a new version while the old one keeps
  serving; ``swap(name, key)`` then moves the name in one step. A request that already
  holds the old runtime finishes on it, so a deploy or rollback never fails a request.
  ``move(name, key, serving=old)`` is the same swap made only while the name still
  serves ``old``: for a change another process made, learnt after the fact.

A failed load (``ModelLoadError``: the file itself is the problem) is remembered for
``failure_ttl`` seconds, so a broken model is not reloaded by every request;
``invalidate(key)`` forgets it at once (after an admin trusts the version, say).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from maestro.runtimes.base import Runtime
from maestro.runtimes.errors import ModelLoadError

logger = logging.getLogger("maestro.serving")

Loader = Callable[[str], Runtime]


def _mib(value: int) -> str:
    return f"{value / 1024**2:,.1f} MiB"


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
    the lock held, so it must be quick and must not call back into the cache.
    ``on_wait(key)`` runs outside the lock when a request starts waiting for a load of
    ``key`` that another request is doing: a signal that lets tests hold a load until
    every request they sent waits on it, instead of guessing how long that takes."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_models: int,
        max_bytes: int,
        warm_up: bool = True,
        failure_ttl: float = 5.0,
        on_evict: Callable[[str, Runtime], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if max_models < 1 or max_bytes < 1:
            raise ValueError("the cache needs room for at least one model")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._loader = loader
        self._warm_up = warm_up
        self._failure_ttl = failure_ttl
        self._on_evict = on_evict
        self._on_wait = on_wait
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future[Runtime]] = {}
        self._failures: dict[str, tuple[ModelLoadError, float]] = {}
        self._names: dict[str, str] = {}  # live name → key
        self._prepared: Counter[str] = Counter()
        self._total_bytes = 0
        self._stats = CacheStats()
        self._dropped: list[Runtime] = []  # to close once the lock is released

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
            if self._on_wait is not None:
                self._on_wait(key)
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
        self._close_dropped()
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
        try:
            with self._lock:
                if key not in self._entries:  # evicted between the load and now
                    self._insert(key, runtime)
                self._check_room(key, replacing=None)
                self._prepared[key] += 1
        finally:
            self._close_dropped()
        return runtime

    def discard(self, key: str) -> None:
        """Undo a ``prepare`` that will not be swapped in."""
        with self._lock:
            self._release_prepared(key)
            self._evict_over_limits()
        self._close_dropped()

    def swap(self, name: str, key: str) -> str | None:
        """Point ``name`` at ``key`` in one step, loading ``key`` first if ``prepare``
        did not. Returns the key the name served before. If loading fails the name keeps
        serving what it served."""
        runtime = self.get(key)
        try:
            with self._lock:
                previous = self._swap_in(name, key, runtime)
        finally:
            self._close_dropped()
        logger.info("model name %s now serves %s (was %s)", name, key, previous)
        return previous

    def move(self, name: str, key: str, *, serving: str | None) -> bool:
        """Swap a prepared ``key`` in for ``name`` only while the name still serves
        ``serving`` (None: nothing), else let the preparation go; True if it moved. For a
        change learnt late, so that it never undoes a newer swap made meanwhile."""
        runtime = self.get(key)
        try:
            with self._lock:
                if self._names.get(name) != serving:
                    self._release_prepared(key)
                    self._evict_over_limits()
                    return False
                self._swap_in(name, key, runtime)
        finally:
            self._close_dropped()
        logger.info("model name %s now serves %s (was %s)", name, key, serving)
        return True

    def release(self, name: str) -> str | None:
        """Stop serving ``name``; its runtime stays cached but may now be evicted."""
        with self._lock:
            key = self._names.pop(name, None)
            self._evict_over_limits()
        self._close_dropped()
        return key

    def evict(self, key: str) -> bool:
        """Drop ``key`` now; refused (False) while a live name or a prepared swap uses it."""
        with self._lock:
            if key not in self._entries or key in self._pinned():
                return False
            self._drop(key)
        self._close_dropped()
        return True

    def invalidate(self, key: str) -> None:
        """Forget a remembered load failure and drop the runtime unless it is in use,
        so the next request loads the version afresh."""
        with self._lock:
            self._failures.pop(key, None)
            if key in self._entries and key not in self._pinned():
                self._drop(key)
        self._close_dropped()

    def peek(self, key: str) -> Runtime | None:
        """The loaded runtime for ``key``, if any, without loading or counting a use."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.runtime if entry is not None else None

    def close(self) -> None:
        """Drop every runtime (shutdown): isolated processes end."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
            self._names.clear()
            self._prepared.clear()
        self._close_dropped()

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
        """Add a loaded runtime, counted at what it was measured to cost."""
        now = time.monotonic()
        self._entries[key] = _Entry(runtime, runtime.memory_bytes, now, now)
        self._total_bytes += runtime.memory_bytes
        self._evict_over_limits(keep=key)

    def _swap_in(self, name: str, key: str, runtime: Runtime) -> str | None:
        if key not in self._entries:
            self._insert(key, runtime)
        if self._names.get(name) != key:
            self._check_room(key, replacing=name)
        previous = self._names.get(name)
        self._names[name] = key
        self._release_prepared(key)
        self._stats.swaps += 1
        self._evict_over_limits(keep=key)
        return previous

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._total_bytes -= entry.size
        self._stats.evictions += 1
        self._dropped.append(entry.runtime)
        if self._on_evict is not None:
            try:
                self._on_evict(key, entry.runtime)
            except Exception:
                logger.exception("eviction callback failed for %s", key)

    def _check_room(self, key: str, *, replacing: str | None) -> None:
        """Refuse to make ``key`` live when the runtimes in use would then take more
        memory than the cache may hold; ``replacing``: the name it will take over, whose
        runtime stops counting unless something else uses it. A refused runtime that
        nothing uses is dropped."""
        pinned = self._pinned() - {key}
        old = self._names.get(replacing) if replacing is not None else None
        only_that_name = sum(1 for other in self._names.values() if other == old) == 1
        if old is not None and old != key and self._prepared[old] == 0 and only_that_name:
            pinned.discard(old)
        in_use = sum(self._entries[other].size for other in pinned if other in self._entries)
        size = self._entries[key].size
        if in_use + size <= self.max_bytes:
            return
        if key not in self._pinned():
            self._drop(key)
        raise ModelLoadError(
            "too_large_for_cache",
            f"This model takes {_mib(size)} of memory; the {len(pinned)} other model(s) this process serves "
            f"take {_mib(in_use)}, and together they may take at most {_mib(self.max_bytes)} "
            "(MAESTRO_SERVING_CACHE_MAX_BYTES). Stop serving another model, or raise the limit.",
        )

    def _close_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for runtime in dropped:
            try:
                runtime.close()
            except Exception:
                logger.exception("could not close a dropped %s runtime", runtime.serving)

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
            runtime.close()
            raise ModelLoadError(
                "too_large_for_cache",
                f"The model needs {runtime.memory_bytes:,} bytes of memory; the models of this process may "
                f"take at most {self.max_bytes:,} (MAESTRO_SERVING_CACHE_MAX_BYTES)",
            )
        if self._warm_up:
            runtime.warm_up()
        _settle()
        logger.info("loaded %s as %s in %.3f s", key, runtime.serving, time.perf_counter() - started)
        return runtime


def _settle() -> None:
    """Collect the garbage a load left (converters build cyclic graphs), then move what
    remains, the model among it, out of the cyclic collector's sight as at startup
    (``server.freeze_startup_objects``): each full collection while serving would
    otherwise scan the model's objects again, a pause of tens of milliseconds."""
    gc.collect()
    gc.freeze()
