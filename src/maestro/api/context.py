"""Per-request values visible to any code running for that request."""

from __future__ import annotations

import re
from contextvars import ContextVar

from maestro.db import random_bytes

request_id_var: ContextVar[str] = ContextVar("request_id", default="req_none")

_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return f"req_{random_bytes(8).hex()}"


def accept_request_id(candidate: str | None) -> str:
    """Echo a caller's request id when it is safe to log and return; otherwise mint one."""
    if candidate and _ACCEPTABLE_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def current_request_id() -> str:
    return request_id_var.get()
