"""Running the API under uvicorn.

With several workers uvicorn binds the listening socket itself with protocol number
0, and asyncio only enables TCP_NODELAY on sockets whose protocol is IPPROTO_TCP, so
accepted connections keep Nagle's algorithm on. On a reused connection that delays
small responses by up to ~40 ms (Nagle against delayed ACK). The protocol classes
below switch it off for every accepted connection, whatever created the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from maestro.config import Settings


def freeze_startup_objects() -> None:
    """Move what the process holds at startup (modules, the app, the ORM's mappers,
    several hundred thousand objects) out of the cyclic garbage collector's sight.

    A 1,000-row request allocates thousands of short-lived lists and dicts, and the
    prediction log keeps some until it is written, so full collections come often; each
    would scan every object of the process, costing more than the request itself. The
    frozen objects are still freed by reference counting; ``gc.unfreeze()`` at shutdown
    hands them back to the collector."""
    gc.freeze()


SERVING_SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005


def switch_threads_often() -> None:
    """Hand the interpreter's lock to a waiting thread after 1 ms instead of 5. A serving
    process runs its event loop beside threads busy in Python (the prediction-log and
    access-log writers, prediction threads); with 5 ms, each of their turns holds every
    request on the loop up that long. Measured with ``bench/serving.py``: about 10 %
    more one-row requests per second at concurrency 8, and less CPU per request."""
    sys.setswitchinterval(SERVING_SWITCH_INTERVAL)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the application loads: importing it creates
    several hundred thousand long-lived objects, and each collection on the way would
    scan them all again (about a third of the import time). Nothing made then is garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (taken, or not an address of this machine),
    or None: checked before the slow part of the start, so a busy port is said at once
    in one line. The socket is closed again at once; uvicorn binds it for real."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown address ({exc.strerror})"
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is already in use"
            return exc.strerror or str(exc)
    return None


def enable_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the peer may already have gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:
        enable_nodelay(transport)
        super().connection_made(transport)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            enable_nodelay(transport)
            super().connection_made(transport)

    HTTP_PROTOCOL: type[asyncio.Protocol] = NoDelayHttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn
    HTTP_PROTOCOL = NoDelayH11Protocol


def run(settings: Settings, *, host: str, port: int, workers: int, reload: bool, loop: str = "auto") -> None:
    options: dict[str, Any] = {
        "loop": loop,
        "host": host,
        "port": port,
        "factory": True,
        "http": HTTP_PROTOCOL,
        "log_config": None,  # Maestro configures logging itself
        "access_log": False,  # Maestro writes its own access log with request ids
        "proxy_headers": True,
        "timeout_graceful_shutdown": 20,
        "server_header": False,
    }
    if reload:
        options.update(reload=True, reload_dirs=[str(Path(__file__).parent)])
    else:
        options["workers"] = workers
    uvicorn.run("maestro.app:create_app", **options)
