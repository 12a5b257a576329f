"""Reading a request body whole, under a size limit: what the JSON routes that parse
their own bodies (inference, the model server's predictions) and the plain-ASGI fast
paths standing in for them share, so both refuse the same bodies the same way.

The order of the checks is the rule everywhere: the caller checks the content type
first (415, before any byte of the body is read), then this reads the body, refusing
it (413) as soon as its declared length or the bytes received pass the limit. A body
that stalls is cut off by ``RequestBodyTimeoutMiddleware``, whose ``RequestTimeout``
comes out of ``receive`` here and ends as its 408; a client that goes away mid-body
gets a 422 nobody reads, not a logged 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from maestro.errors import MaestroError, ValidationFailed


async def read_limited(request: Request, limit: int, too_large: Callable[[int], MaestroError]) -> bytes:
    """The whole body of ``request``, at most ``limit`` bytes; past it ``too_large(limit)``
    is raised (by the Content-Length header before reading, else while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationFailed("Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise too_large(limit)
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise ValidationFailed("The client went away before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
