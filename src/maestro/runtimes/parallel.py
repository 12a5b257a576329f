"""One large prediction spread over the machine's cores.

Runtimes run with one thread inside a model call (``MAESTRO_MODEL_SERVER_MODEL_THREADS``;
more threads per call degrade badly under concurrent load). A single 1,000-row batch
on a 100-tree forest then takes several milliseconds on one core while the others
idle. ``RowSplitter`` cuts such a batch into one block of rows per core and runs the
blocks at once on an onnxruntime session (thread-safe, and it releases the GIL while
it runs), then joins the answers in order. Rows are independent, so the answer is the
same; a block that fails is run again as the whole batch, so an error names the same
row it would have named.

Only batches worth it are split: ONNX runtimes, at least ``SPLIT_MIN_ROWS`` rows, and
a model whose last unsplit call of that size cost more than ``SPLIT_MIN_SECONDS`` of
processor time (a linear model's 1,000 rows take microseconds: splitting would only
add a hop).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, TypeVar

import numpy as np

from maestro.runtimes.base import Runtime
from maestro.runtimes.errors import ServingError
from maestro.runtimes.onnx import OnnxRuntime

T = TypeVar("T")
SPLIT_MIN_ROWS = 256
SPLIT_MIN_SECONDS = 0.002
MAX_PARTS = 4


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def splittable(runtime: Runtime) -> bool:
    """ONNX sessions answer concurrent calls; a graph that takes one row per call is
    already run row by row."""
    return isinstance(runtime, OnnxRuntime) and not runtime._batch_of_one


def _join(parts: list[Any]) -> Any:
    if isinstance(parts[0], tuple):  # (labels, probabilities or None)
        return tuple(
            None if parts[0][k] is None else np.concatenate([part[k] for part in parts])
            for k in range(len(parts[0]))
        )
    return np.concatenate(parts)


class RowSplitter:
    def __init__(self, parts: int | None = None) -> None:
        self.parts = max(1, min(parts if parts is not None else available_cores(), MAX_PARTS))
        self._pool: ThreadPoolExecutor | None = None  # started on the first split
        self._lock = threading.Lock()
        self._seconds_per_row: weakref.WeakKeyDictionary[Runtime, float] = weakref.WeakKeyDictionary()

    def _workers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parts - 1, thread_name_prefix="predict-rows")
            return self._pool

    def close(self) -> None:
        """Stop the helper threads (a later split starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def run(self, runtime: Runtime, method: Callable[[np.ndarray], T], matrix: np.ndarray) -> T:
        """``method(matrix)``, with the rows split over the cores when it pays."""
        rows = len(matrix)
        if self.parts == 1 or rows < SPLIT_MIN_ROWS or not splittable(runtime):
            return method(matrix)
        per_row = self._seconds_per_row.get(runtime)
        if per_row is None or per_row * rows < SPLIT_MIN_SECONDS:
            # The processor time this thread spent, not the time that passed: a call that
            # waited for the interpreter's lock or for a busy core must not mark a cheap
            # model as slow, for then every later batch would pay for the split's hops.
            started = time.thread_time()
            result = method(matrix)
            self._seconds_per_row[runtime] = (time.thread_time() - started) / rows
            return result
        blocks = np.array_split(matrix, self.parts)
        try:
            futures = [self._workers().submit(method, block) for block in blocks[1:]]
        except RuntimeError:  # closing: shut down while this request ran
            return method(matrix)
        try:
            first = method(blocks[0])
            answers = [first, *(future.result() for future in futures)]
        except ServingError:
            wait_for(futures)
            return method(matrix)  # the whole batch again: the error names its own row
        return _join(answers)
