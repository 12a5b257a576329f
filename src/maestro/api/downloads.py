"""Streaming a stored file to a client: one way for every download route, so each
answers with its exact length, an attachment name that cannot inject anything, and
``nosniff`` so a browser never renders uploaded bytes as a page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from maestro.schemas import strip_invisible
from maestro.storage import CHUNK_SIZE, ArtifactStore

BINARY_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def attachment(name: str | None, fallback: str) -> str:
    """A Content-Disposition header naming the last path component of ``name``: plain
    characters only in ``filename`` (``fallback`` when nothing is left), and the whole
    name percent-encoded in ``filename*`` when it held anything else. Control characters
    and invisible or direction-changing ones are dropped first, so the name a browser
    shows is the name it saves (``\\u202egnp.exe`` is ``gnp.exe``, not ``exe.png``)."""
    visible = strip_invisible(_CONTROL.sub("", name or ""))
    base = visible.replace("\\", "/").rsplit("/", 1)[-1].strip(" .")[:200]
    plain = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .") or fallback
    header = f'attachment; filename="{plain}"'
    if base and base != plain:
        header += f"; filename*=UTF-8''{quote(base, safe='')}"
    return header


def stored_file_response(
    store: ArtifactStore,
    key: str,
    *,
    size: int,
    disposition: str | None = None,
    media_type: str = "application/octet-stream",
) -> StreamingResponse:
    """The stored object under ``key``, streamed chunk by chunk (404 when it is gone)."""
    file = store.open(key)

    def chunks() -> Iterator[bytes]:
        with file:
            while chunk := file.read(CHUNK_SIZE):
                yield chunk

    headers = {"Content-Length": str(size), "X-Content-Type-Options": "nosniff"}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
