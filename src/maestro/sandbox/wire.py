"""Messages between Maestro and its isolated processes: a JSON header and raw arrays.

The other side may be hostile (a model that corrupted its process can write anything
to the socket), so reading never unpickles, never trusts a declared size beyond the
caller's limit, and accepts only plain numeric array types whose byte length matches
their shape. A frame is ``!II`` (header length, data length), the JSON header, then the
arrays' bytes back to back as the header's ``_arrays`` describes them.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

FRAME = struct.Struct("!II")
MAX_HEADER_BYTES = 1 << 20
# Little-endian numbers and booleans: nothing that holds Python objects or pointers.
ARRAY_TYPES = frozenset({"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1"})
MAX_DIMENSIONS = 8


class WireError(Exception):
    """The other side sent something that is not a valid message."""


class Closed(WireError):
    """The other side closed the connection (or died) before a whole message arrived."""


@dataclass
class Message:
    meta: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list)


def _array_bytes(array: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not _little_endian()):
        array = array.astype(array.dtype.newbyteorder("<"))
    dtype = array.dtype.str
    if dtype not in ARRAY_TYPES:
        raise WireError(f"arrays of type {array.dtype} cannot be sent")
    return {"dtype": dtype, "shape": list(array.shape)}, array.data.cast("B")


def _little_endian() -> bool:
    return np.little_endian


def send(sock: socket.socket, meta: dict[str, Any], arrays: list[np.ndarray] | tuple[()] = ()) -> None:
    specs, buffers = [], []
    for array in arrays:
        spec, buffer = _array_bytes(array)
        specs.append(spec)
        buffers.append(buffer)
    header = orjson.dumps({**meta, "_arrays": specs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(header) > MAX_HEADER_BYTES:
        raise WireError("message header too large")
    data_length = sum(len(buffer) for buffer in buffers)
    sock.sendall(FRAME.pack(len(header), data_length) + header)
    for buffer in buffers:
        sock.sendall(buffer)


def _read_exactly(sock: socket.socket, length: int, deadline: float | None) -> bytearray:
    buffer = bytearray(length)
    view = memoryview(buffer)
    received = 0
    while received < length:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no whole message in time")
            sock.settimeout(remaining)
        count = sock.recv_into(view[received:], min(length - received, 1 << 20))
        if count == 0:
            raise Closed("connection closed mid-message")
        received += count
    return buffer


def receive(sock: socket.socket, max_data_bytes: int, deadline: float | None = None) -> Message:
    """One message; ``max_data_bytes`` bounds what the other side may make this side hold,
    and ``deadline`` (a ``time.monotonic()`` value) how long it may take to send it
    (``TimeoutError`` after that)."""
    if deadline is None:
        sock.settimeout(None)
    try:
        head = _read_exactly(sock, FRAME.size, deadline)
    except ConnectionError as exc:
        raise Closed(str(exc)) from None
    header_length, data_length = FRAME.unpack(head)
    if header_length > MAX_HEADER_BYTES:
        raise WireError(f"header of {header_length:,} bytes is over the limit")
    if data_length > max_data_bytes:
        raise WireError(f"message of {data_length:,} bytes is over the limit of {max_data_bytes:,}")
    try:
        header = _read_exactly(sock, header_length, deadline)
        data = _read_exactly(sock, data_length, deadline) if data_length else bytearray()
    except ConnectionError as exc:
        raise Closed(str(exc)) from None
    try:
        meta = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise WireError("header is not an object")
    return Message(meta, _arrays(meta.pop("_arrays", []), data))


def _arrays(specs: Any, data: bytearray) -> list[np.ndarray]:
    if not isinstance(specs, list):
        raise WireError("array descriptions must be a list")
    arrays, offset = [], 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise WireError("array description must be an object")
        dtype, shape = spec.get("dtype"), spec.get("shape")
        if dtype not in ARRAY_TYPES:
            raise WireError(f"array type {str(dtype)[:20]!r} is not accepted")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise WireError("array shape must be a short list of non-negative integers")
        count = math.prod(shape)
        length = count * np.dtype(dtype).itemsize
        if offset + length > len(data):
            raise WireError("arrays describe more bytes than the message holds")
        if count == 0:
            arrays.append(np.empty(shape, dtype=dtype))
        else:
            arrays.append(np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += length
    if offset != len(data):
        raise WireError("the message holds bytes no array describes")
    return arrays
