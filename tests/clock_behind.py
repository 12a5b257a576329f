"""Run ``maestro`` with its wall clock behind: ``python clock_behind.py SECONDS ARGS…``.

A real server that answered its traffic "yesterday": ``time.time`` is moved back before
Maestro is imported, so every request is stamped, logged and counted that many seconds
in the past, while the database, the sockets and the event loop's monotonic clock are
untouched. Tests reach it through the ``spawn``/``serve`` fixtures' ``clock_behind``."""

from __future__ import annotations

import runpy
import sys
import time

behind = float(sys.argv.pop(1))
wall_clock = time.time
time.time = lambda: wall_clock() - behind
runpy.run_module("maestro", run_name="__main__", alter_sys=True)
