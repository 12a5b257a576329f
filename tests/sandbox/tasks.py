"""Tasks the sandbox tests run in isolated processes (imported by the zygote)."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from typing import Any

import numpy as np

from maestro.sandbox import Message, serve_requests, wire


def echo(channel: socket.socket, args: dict[str, Any]) -> None:
    def handle(request: Message) -> Message | None:
        op = request.meta.get("op")
        if op == "stop":
            return None
        if op == "double":
            return Message({"args": args}, [~a if a.dtype == np.bool_ else a * 2 for a in request.arrays])
        if op == "allocate":
            block = np.ones(int(request.meta["bytes"]), dtype=np.uint8)
            return Message({"allocated": int(block.sum())})
        if op == "crash":
            ctypes.string_at(0)
        if op == "spin":
            while True:
                pass
        if op == "hang":
            channel.recv(1)  # nothing ever comes
        if op == "fail":
            raise ValueError("\x1b[31mbad\x00 input")
        raise AssertionError(f"unknown op {op}")

    serve_requests(channel, handle)


def probe(channel: socket.socket, args: dict[str, Any]) -> None:
    """Tries what a compromised process would try; answers what it could do."""

    def attempt(action: Any) -> str:
        try:
            action()
        except Exception as exc:
            return f"refused: {type(exc).__name__}"
        return "allowed"

    def read(path: str) -> None:
        with open(path, "rb") as handle:
            handle.read(1)

    def write(path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(b"x")

    def connect() -> None:
        with socket.create_connection(("127.0.0.1", int(args["port"])), timeout=2):
            pass

    def run() -> None:
        subprocess.run(["/bin/true"], check=True)

    def signal_server() -> None:
        os.kill(int(args["server_pid"]), 0)

    def own_process() -> None:
        os.kill(os.getpid(), 0)

    report = {
        "read_protected": attempt(lambda: read(args["protected_file"])),
        "write_scratch": attempt(lambda: write(os.path.join(args["scratch"], "out.txt"))),
        "write_elsewhere": attempt(lambda: write(args["elsewhere"])),
        "connect": attempt(connect),
        "execute": attempt(run),
        "signal_server": attempt(signal_server),
        "signal_itself": attempt(own_process),
        "secret_in_environment": any("SECRET" in key or key.startswith("MAESTRO_") for key in os.environ),
        "import_onnxruntime": attempt(lambda: __import__("onnxruntime")),
    }
    wire.send(channel, report)
    channel.recv(1)


def liar(channel: socket.socket, args: dict[str, Any]) -> None:
    """Answers every request with a message that is not what it claims to be."""
    channel.recv(1 << 16)
    kind = args["kind"]
    if kind == "huge":
        channel.sendall(wire.FRAME.pack(2, 1 << 40) + b"{}")
    elif kind == "object_array":
        header = b'{"_arrays": [{"dtype": "|O", "shape": [1]}]}'
        channel.sendall(wire.FRAME.pack(len(header), 8) + header + b"\0" * 8)
    elif kind == "short":
        header = b'{"_arrays": [{"dtype": "<f8", "shape": [1000]}]}'
        channel.sendall(wire.FRAME.pack(len(header), 8) + header + b"\0" * 8)
    channel.recv(1)
