"""Isolated processes for work on untrusted input: loading and running uploaded model
files, reading uploaded datasets.

Native parsers (XGBoost, LightGBM, onnxruntime, Parquet and spreadsheet readers) do not
defend themselves against crafted files: a malformed file can abort or corrupt the
process that reads it, or make it allocate without bound. Such work runs in a child
process whose death, memory and time cannot touch the server: it starts from a clean
zygote (no secrets in its memory or environment), confines itself (``confine``:
resource limits, Landlock, seccomp) and talks to the server only through
``wire`` messages, which the server reads as hostile.

    child = shared_sandbox().spawn("maestro.runtimes.isolation:worker", {"threads": 1},
                                   limits=Limits(memory_bytes=512 * 1024**2, cpu_seconds=30))
    with child:
        reply = child.request({"op": "predict"}, [matrix], timeout=10, max_reply_bytes=1 << 24)

A task is a function ``task(channel: socket.socket, args: dict) -> None`` in a module the
zygote can import; ``serve_requests`` is the usual loop inside one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from maestro.sandbox import wire
from maestro.sandbox.confine import Limits
from maestro.sandbox.wire import Message

__all__ = [
    "Child",
    "ChildDied",
    "ChildFailed",
    "ChildTimedOut",
    "Limits",
    "MemoryUsage",
    "Message",
    "Sandbox",
    "SandboxError",
    "serve_requests",
    "shared_sandbox",
]

logger = logging.getLogger("maestro.sandbox")

# Third-party libraries the zygote imports once, so children start in milliseconds. Each
# must import without starting a thread (onnxruntime and polars do; children import them).
PRELOAD = ("numpy", "scipy.special", "sklearn.base", "sklearn.tree", "xgboost", "lightgbm", "skops.io")
# Environment passed to the zygote: nothing that could be a credential.
_PASSED_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
_CHILD_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "random",
}
_SIGNAL_CAUSES = {
    signal.SIGSEGV: "crashed (segmentation fault)",
    signal.SIGBUS: "crashed (bus error)",
    signal.SIGABRT: "aborted",
    signal.SIGILL: "crashed (illegal instruction)",
    signal.SIGFPE: "crashed (arithmetic error)",
    signal.SIGKILL: "was killed",
    signal.SIGXCPU: "used up its CPU time",
}
_CONTROL_TIMEOUT = 60.0


class SandboxError(Exception):
    """Isolated work did not complete. ``message`` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ChildFailed(SandboxError):
    """The task raised an exception in the isolated process (``kind`` is its type name)."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details or {}


class ChildDied(SandboxError):
    """The isolated process ended while working: crashed, aborted or was killed."""

    def __init__(self, exit_code: int | None) -> None:
        self.exit_code = exit_code
        super().__init__(f"The isolated process {describe_exit(exit_code)}")


class ChildTimedOut(SandboxError):
    """The isolated process did not answer in time and was killed."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            sig = signal.Signals(-code)
            return _SIGNAL_CAUSES.get(sig, f"was ended by {sig.name}")
        return f"was ended by signal {-code}"
    return f"exited with status {code}"


def _printable(text: Any, limit: int = 500) -> str:
    """Text from an isolated process, fit to show: no control characters, bounded."""
    value = "".join(ch if ch.isprintable() else " " for ch in str(text)[: limit * 2])
    return value[:limit]


@dataclass(frozen=True)
class MemoryUsage:
    rss_bytes: int  # resident now
    peak_bytes: int  # the most it has been resident


class Child:
    """The server's handle on one isolated process. One request at a time (a lock);
    ``kill`` is safe from any thread and idempotent."""

    def __init__(self, sandbox: Sandbox, pid: int, sock: socket.socket) -> None:
        self.sandbox = sandbox
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False
        self.exit_code: int | None = None
        self.confinement: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return not self._closed

    def request(
        self,
        meta: dict[str, Any],
        arrays: Sequence[np.ndarray] = (),
        *,
        timeout: float | None,
        max_reply_bytes: int,
    ) -> Message:
        """Send one request and read its answer. Raises ``ChildFailed`` when the task
        answered with an error, ``ChildTimedOut`` (the process is killed) after
        ``timeout`` seconds, ``ChildDied`` when the process ended."""
        with self._lock:
            if self._closed:
                raise ChildDied(self.exit_code)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                wire.send(self._sock, meta, list(arrays))
                reply = wire.receive(self._sock, max_reply_bytes, deadline)
            except TimeoutError:
                self._end(kill=True)
                raise ChildTimedOut(f"The isolated process did not answer within {timeout:g} s") from None
            except (wire.Closed, ConnectionError, BrokenPipeError):
                self._end(kill=False)
                raise ChildDied(self.exit_code) from None
            except wire.WireError as exc:
                self._end(kill=True)
                raise SandboxError(f"The isolated process sent an invalid answer ({exc})") from None
        return _checked(reply)

    def receive(self, *, timeout: float | None, max_reply_bytes: int) -> Message:
        """Read one more message the task sends unasked (progress, the greeting)."""
        with self._lock:
            if self._closed:
                raise ChildDied(self.exit_code)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                reply = wire.receive(self._sock, max_reply_bytes, deadline)
            except TimeoutError:
                self._end(kill=True)
                raise ChildTimedOut(f"The isolated process did not answer within {timeout:g} s") from None
            except (wire.Closed, ConnectionError):
                self._end(kill=False)
                raise ChildDied(self.exit_code) from None
            except wire.WireError as exc:
                self._end(kill=True)
                raise SandboxError(f"The isolated process sent an invalid answer ({exc})") from None
        return _checked(reply)

    def hung_up(self) -> bool:
        """Whether the process has ended (or closed its end) while idle, checked without
        blocking, so the server can start a new one before sending it work."""
        if self._closed:
            return True
        with self._lock:
            if self._closed:
                return True
            try:
                readable, _, _ = select.select([self._sock], [], [], 0)
                ended = bool(readable) and not self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                ended = False
            except OSError:
                ended = True
            if ended:
                self._end(kill=False)
        return ended

    def memory(self) -> MemoryUsage:
        """Read from the kernel, not from the process (which could lie)."""
        values = {"VmRSS": 0, "VmHWM": 0}
        if not self._closed:
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    key, _, rest = line.partition(":")
                    if key in values:
                        values[key] = int(rest.split()[0]) * 1024
        return MemoryUsage(rss_bytes=values["VmRSS"], peak_bytes=values["VmHWM"])

    def kill(self) -> None:
        if not self._closed:
            self._end(kill=True)

    def _end(self, *, kill: bool) -> None:
        """Kill (when asked) before hanging up, so the process cannot act on the hang-up."""
        self._closed = True
        if kill:
            self.exit_code = self.sandbox._finish(self.pid, kill=True)
        with contextlib.suppress(OSError):
            self._sock.close()
        if not kill:
            self.exit_code = self.sandbox._finish(self.pid, kill=False)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()

    def __del__(self) -> None:
        # Only hang up: the process sees its channel close and ends; the zygote reaps it.
        # (Asking the zygote from a finaliser could interleave with another exchange.)
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self._sock.close()


def _checked(reply: Message) -> Message:
    error = reply.meta.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"message": error}
        details = error.get("details") if isinstance(error.get("details"), dict) else None
        raise ChildFailed(
            _printable(error.get("type", "Error"), 100), _printable(error.get("message", "")), details
        )
    return reply


class Sandbox:
    """Starts the zygote on first use and forks isolated processes from it. Thread-safe."""

    def __init__(self, *, python_path: Iterable[str] = (), preload: Iterable[str] = PRELOAD) -> None:
        self._python_path = list(python_path)
        self._preload = list(preload)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    # --- the zygote ---------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_ENVIRONMENT if name in os.environ}
        paths = [*self._python_path, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(_CHILD_ENVIRONMENT)
        return env

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-P", "-m", "maestro.sandbox.zygote", str(theirs.fileno()), *self._preload]
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            env=self._environment(),
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
            close_fds=True,
            cwd="/",
        )
        theirs.close()
        ours.settimeout(_CONTROL_TIMEOUT)
        self._control = ours
        logger.info("started the sandbox zygote (pid %s)", self._process.pid)
        return ours

    def _ask(self, request: dict[str, Any], *, start: bool) -> tuple[dict[str, Any], list[int]]:
        """One control exchange (call with the lock held)."""
        for attempt in range(2):
            control = self._control
            if control is None or (self._process is not None and self._process.poll() is not None):
                if not start:
                    return {"exit": None}, []
                self._reset()
                control = self._start()
            try:
                control.send(orjson.dumps(request))
                data, fds, _flags, _address = socket.recv_fds(control, wire.MAX_HEADER_BYTES, 1)
                if not data:
                    raise ConnectionError("the zygote closed its socket")
                return orjson.loads(data), fds
            except (OSError, orjson.JSONDecodeError):
                logger.warning("the sandbox zygote stopped answering; starting a new one", exc_info=True)
                self._reset()
                if attempt or not start:
                    raise SandboxError("Isolated processes cannot be started on this server") from None
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        self._control = None
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()
            with contextlib.suppress(Exception):
                self._process.wait(5)
        self._process = None

    def ping(self) -> dict[str, Any]:
        with self._lock:
            reply, _ = self._ask({"op": "ping"}, start=True)
        return reply

    def close(self) -> None:
        """Stop the zygote; its children die with it."""
        with self._lock:
            self._reset()

    # --- children ------------------------------------------------------------------------------------
    def spawn(
        self,
        entry: str,
        args: dict[str, Any] | None = None,
        *,
        limits: Limits,
        imports: Sequence[str] = (),
        readable: Sequence[str] = (),
        writable: Sequence[str] = (),
        protected: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> Child:
        """Fork an isolated process running ``entry`` (``"module:function"``) with ``args``
        (plain JSON from the server). It imports ``imports`` (libraries that start
        threads, which the zygote cannot hold), then confines itself: it may read
        ``readable`` and Python's own files, write only ``writable``, and never reach
        anything under ``protected`` (the data directory)."""
        request = {
            "op": "spawn",
            "entry": entry,
            "args": args or {},
            "limits": limits.to_dict(),
            "imports": list(imports),
            "readable": [str(path) for path in readable],
            "writable": [str(path) for path in writable],
            "protected": [str(path) for path in protected],
        }
        with self._lock:
            reply, fds = self._ask(request, start=True)
        if "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            raise SandboxError(f"Could not start an isolated process: {reply.get('error', 'no socket')}")
        child = Child(self, int(reply["pid"]), socket.socket(fileno=fds[0]))
        greeting = child.receive(timeout=start_timeout, max_reply_bytes=0)
        child.confinement = greeting.meta.get("confinement") or {}
        return child

    def _finish(self, pid: int, *, kill: bool) -> int | None:
        with self._lock:
            try:
                reply, _ = self._ask({"op": "kill" if kill else "status", "pid": pid}, start=False)
            except SandboxError:
                return None
        code = reply.get("exit")
        return int(code) if isinstance(code, int) else None


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def serve_requests(channel: socket.socket, handle: Callable[[Message], Message | None]) -> None:
    """Inside an isolated process: answer requests until the server hangs up. An
    exception becomes an error answer (``ChildFailed`` on the server's side); a handler
    that returns None ends the loop after answering ``{}``."""
    while True:
        try:
            request = wire.receive(channel, max_data_bytes=1 << 40)
        except wire.Closed:
            return
        stop = False
        try:
            reply = handle(request)
            if reply is None:
                reply, stop = Message({}), True
        except MemoryError:
            reply = Message({"error": {"type": "MemoryError", "message": "out of memory"}})
        except Exception as exc:
            error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:2000]}
            details = getattr(exc, "sandbox_details", None)
            if isinstance(details, dict):
                error["details"] = details
            reply = Message({"error": error})
        wire.send(channel, reply.meta, reply.arrays)
        if stop:
            return


_shared: Sandbox | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """This process's sandbox (a new one after a fork). Its children import from where
    this process imports (the code a trusted pickle names must be found there too)."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            _shared = Sandbox(python_path=[entry for entry in sys.path if entry and os.path.isabs(entry)])
            _shared_pid = os.getpid()
        return _shared


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared_pid == os.getpid():
        _shared.close()
