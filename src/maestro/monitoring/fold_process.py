"""The fold in a process of its own: ``python -m maestro.monitoring.fold_process``,
started by ``folding.fold_in_child_process``.

A worker that runs inside an API server (``MAESTRO_RUN_WORKER_IN_PROCESS``, the default
of ``maestro serve``) folds here rather than in one of its threads. Folding is
interpreter-bound (decoding logs, building sketches): in a thread it would hold the
interpreter's lock for tens of milliseconds at a time, and every request served
meanwhile would wait for it, which is most of the tail latency that logging added. The
child runs at a lower CPU priority, so on a busy machine requests come first; it reads
the server's settings from its standard input, logs to the same standard error, and
prints its result as JSON."""

from __future__ import annotations

import json
import sys

from maestro.config import Settings
from maestro.db import Database
from maestro.logs import configure_logging
from maestro.monitoring.folding import fold_and_prune


def main() -> None:
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
