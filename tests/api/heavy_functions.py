"""Functions the worker-process tests of ``maestro.api.heavy`` run: in a module of their
own that imports nothing heavy, since each new worker process imports it."""

from __future__ import annotations

import os


def twice(value: int) -> int:
    return value * 2


def pid_and_niceness(_: int) -> tuple[int, int]:
    return os.getpid(), os.nice(0)


def refuse(value: int) -> int:
    raise ValueError(f"no {value}")


def die(_: int) -> int:
    os._exit(3)
