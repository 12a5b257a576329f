"""The zygote: a clean process that has imported the heavy libraries once and forks an
isolated process for each task in a few milliseconds.

It is started with an environment that holds no secrets (no database URL, no signing
key, no cloud credentials), it never reads untrusted input itself, and it stays
single-threaded so that forking it is safe. Each child confines itself (``confine``)
before it runs its task, talks to Maestro over its own socket, and dies with the
zygote; the zygote dies when Maestro closes the control socket.

Control messages are JSON datagrams on a ``SOCK_SEQPACKET`` socket:
``{"op": "spawn", ...}`` answers ``{"pid"}`` with the child's socket attached,
``{"op": "kill", "pid"}`` and ``{"op": "status", "pid"}`` answer ``{"exit"}`` (the exit
code, negative for a signal, or null while it runs), ``{"op": "ping"}`` answers
``{"threads"}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import OrderedDict
from typing import Any

import orjson

from maestro.sandbox import confine, wire

_PR_SET_PDEATHSIG = 1
MAX_CONTROL_BYTES = 1 << 20
_REMEMBERED_EXITS = 1024
_EXIT_WAIT_SECONDS = 2.0


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Zygote:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.children: set[int] = set()
        self.exits: OrderedDict[int, int] = OrderedDict()
        self.entries: dict[str, Any] = {}

    # --- children -------------------------------------------------------------------------------
    def _remember(self, pid: int, status: int) -> None:
        self.children.discard(pid)
        self.exits[pid] = os.waitstatus_to_exitcode(status)
        while len(self.exits) > _REMEMBERED_EXITS:
            self.exits.popitem(last=False)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self._remember(pid, status)

    def wait(self, pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while pid in self.children:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._remember(pid, status)
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)
        return self.exits.get(pid)

    def kill(self, pid: int) -> int | None:
        if pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return self.wait(pid, 10.0)
        return self.exits.get(pid)

    def status(self, pid: int) -> int | None:
        """The exit code of a child whose socket closed; one that closed it but lives on is
        killed after a short wait, so every closed channel ends in a known exit."""
        if pid in self.children and self.wait(pid, _EXIT_WAIT_SECONDS) is None:
            return self.kill(pid)
        return self.exits.get(pid)

    # --- spawning ---------------------------------------------------------------------------------
    def _entry(self, name: str) -> Any:
        """Import the task's module here, once, so children start with it loaded (unless
        importing it started a thread, which would make forking unsafe)."""
        if name not in self.entries:
            module_name, _, function = name.partition(":")
            module = importlib.import_module(module_name)
            self.entries[name] = getattr(module, function)
        return self.entries[name]

    def spawn(self, request: dict[str, Any]) -> tuple[dict[str, Any], socket.socket | None]:
        try:
            entry = self._entry(str(request["entry"]))
        except Exception as exc:
            return {"error": f"cannot load task {request.get('entry')!r}: {exc}"}, None
        if _threads() != 1:
            return {"error": "the zygote has started threads; forking it would not be safe"}, None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the child
            code = 70
            try:
                self.control.close()
                parent_end.close()
                code = _child(child_end, entry, request)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        child_end.close()
        self.children.add(pid)
        return {"pid": pid}, parent_end

    # --- the loop ---------------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.control], [], [], 0.5)
            self.reap()
            if not ready:
                continue
            try:
                data = self.control.recv(MAX_CONTROL_BYTES)
            except ConnectionError:
                data = b""
            if not data:
                return
            request = orjson.loads(data)
            op = request.get("op")
            attached: socket.socket | None = None
            if op == "spawn":
                reply, attached = self.spawn(request)
            elif op == "kill":
                reply = {"exit": self.kill(int(request["pid"]))}
            elif op == "status":
                reply = {"exit": self.status(int(request["pid"]))}
            elif op == "ping":
                reply = {"threads": _threads(), "pid": os.getpid()}
            else:
                reply = {"error": f"unknown operation {op!r}"}
            if attached is not None:
                socket.send_fds(self.control, [orjson.dumps(reply)], [attached.fileno()])
                attached.close()
            else:
                self.control.send(orjson.dumps(reply))

    def shutdown(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)


def _child(channel: socket.socket, entry: Any, request: dict[str, Any]) -> int:
    """Runs in the forked child: detach, confine, greet, then run the task."""
    zygote = os.getppid()
    os.setsid()  # its own process group: a signal to "the group" reaches only itself
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != zygote:
        return 1
    for name in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(name, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    keep = channel.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    for module in request.get("imports") or []:
        importlib.import_module(module)
    writable = [str(path) for path in request.get("writable") or []]
    if writable:
        os.environ["TMPDIR"] = writable[0]
        tempfile.tempdir = writable[0]
    applied = confine.apply(
        confine.Limits(**(request.get("limits") or {})),
        readable=[str(path) for path in request.get("readable") or []],
        writable=writable,
        protected=[str(path) for path in request.get("protected") or []],
    )
    wire.send(channel, {"ready": True, "confinement": applied})
    entry(channel, request.get("args") or {})
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's to handle
    control = socket.socket(fileno=int(sys.argv[1]))
    os.chdir("/")
    for module in sys.argv[2:]:
        importlib.import_module(module)
    zygote = Zygote(control)
    try:
        zygote.serve()
    finally:
        zygote.shutdown()


if __name__ == "__main__":
    main()
