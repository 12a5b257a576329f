"""The fold in a process of its own: ``python -m maestro.monitoring.fold_process``.

A worker that runs inside an API server (``MAESTRO_RUN_WORKER_IN_PROCESS``, the default
of ``maestro serve``) folds here rather than in one of its threads. Folding is
interpreter-bound (decoding logs, building sketches): in a thread it would hold the
interpreter's lock for tens of milliseconds at a time, and every request served
meanwhile would wait for it, which is most of the tail latency that logging added. The
child runs at a lower CPU priority, so on a busy machine requests come first; it reads
the server's settings from its standard input, logs to the same standard error, and
prints its result as JSON."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Any

from maestro.config import Settings

NICENESS = 10  # added to the server's own: the fold yields the CPU to requests


def run(settings: Settings) -> dict[str, Any]:
    """Fold and prune in a child process; its result, or RuntimeError if it failed."""
    command = [sys.executable, "-m", "maestro.monitoring.fold_process"]  # this interpreter, no shell
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
    with contextlib.suppress(OSError):  # lowering a priority needs no privilege; a child gone needs none
        os.setpriority(os.PRIO_PROCESS, child.pid, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    out, _ = child.communicate(json.dumps(settings.model_dump(mode="json")).encode())
    if child.returncode != 0:
        raise RuntimeError(f"the fold process exited with code {child.returncode}; its log says why")
    return dict(json.loads(out))


def main() -> None:
    from maestro.db import Database
    from maestro.logs import configure_logging
    from maestro.monitoring.folding import fold_and_prune

    settings = Settings(**json.loads(sys.stdin.buffer.read()))
    configure_logging(settings)
    database = Database(settings, create=False)
    try:
        result = fold_and_prune(database, settings)
    finally:
        database.dispose()
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
