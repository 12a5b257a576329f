"""Receiving an upload: a multipart/form-data body with one file part, parsed as it
arrives.

The file part goes chunk by chunk into the artifact store under a generated key,
with the byte limit enforced as bytes arrive, so an oversized upload is refused
without being held in memory or kept on disk. The other parts are small form
fields, each with its own limit. The file name a client sent is kept as metadata
only; it never becomes part of a key or a path.

Before the first byte of the file is stored, the caller's ``before_file`` hook sees
the fields sent ahead of the file and answers with the key prefix to store under,
so it can authorise the upload (and refuse it) before the body is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.to_thread import run_sync
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from maestro.db import release_write_lock, run_after_rollback
from maestro.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from maestro.storage import ArtifactStore, ArtifactWriter, StoredObject

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Received = TypeVar("Received")

HEAD_BYTES = 4096  # what is kept of a file's start for recognising its format
MAX_FIELD_BYTES = 1024 * 1024  # per form field
MAX_PARTS = 16
# The longest boundary python-multipart accepts (RFC 2046 asks for at most 70 characters).
MAX_BOUNDARY_LENGTH = 256


@dataclass(frozen=True)
class UploadForm:
    """The shape of an upload form: the file part's name and the text fields allowed."""

    file_field: str
    text_fields: frozenset[str]
    max_field_bytes: int = MAX_FIELD_BYTES

    @property
    def body_overhead(self) -> int:
        """Room for the form fields, part headers and boundaries beside the file."""
        return len(self.text_fields) * self.max_field_bytes + 64 * 1024


@dataclass
class ReceivedUpload:
    fields: dict[str, str]  # every text field sent, before or after the file
    stored: StoredObject
    head: bytes  # the file's first bytes, for format recognition
    filename: str | None = None
    content_type: str | None = None


@dataclass
class _State:
    form: UploadForm
    parts: int = 0
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str | None = None
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)
    fields: dict[str, str] = field(default_factory=dict)
    fields_before_file: dict[str, str] = field(default_factory=dict)
    file_seen: bool = False
    filename: str | None = None
    content_type: str | None = None
    pending: list[bytes] = field(default_factory=list)
    head: bytearray = field(default_factory=bytearray)
    ended: bool = False


def _invalid(field_name: str | None, message: str) -> ValidationFailed:
    return ValidationFailed("Invalid upload", details=[(field_name, message)])


def _parser(boundary: bytes, state: _State) -> MultipartParser:
    def on_part_begin() -> None:
        state.parts += 1
        if state.parts > MAX_PARTS:
            raise _invalid(None, f"at most {MAX_PARTS} form parts")
        state.headers = {}
        state.name, state.is_file = None, False
        state.value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).decode("latin-1").lower()] = bytes(state.header_value)
        state.header_field, state.header_value = bytearray(), bytearray()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(state.headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise _invalid(None, "every part needs a form-data Content-Disposition with a name")
        name = options[b"name"].decode("utf-8", "replace")
        state.name = name
        if name == state.form.file_field:
            if state.file_seen:
                raise _invalid(name, "only one file may be sent")
            state.file_seen = state.is_file = True
            state.fields_before_file = dict(state.fields)
            filename = options.get(b"filename")
            state.filename = filename.decode("utf-8", "replace")[:255] if filename is not None else None
            content_type = state.headers.get("content-type")
            state.content_type = content_type.decode("latin-1")[:100] if content_type else None
        elif name not in state.form.text_fields:
            raise _invalid(name[:100], "unknown form field")
        elif name in state.fields:
            raise _invalid(name, "sent more than once")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state.is_file:
            if len(state.head) < HEAD_BYTES:
                state.head += chunk[: HEAD_BYTES - len(state.head)]
            state.pending.append(chunk)
        else:
            state.value += chunk
            if len(state.value) > state.form.max_field_bytes:
                raise PayloadTooLarge(
                    "A form field is too large",
                    details=[(state.name, f"larger than {state.form.max_field_bytes} bytes")],
                )

    def on_part_end() -> None:
        if not state.is_file and state.name is not None:
            try:
                state.fields[state.name] = bytes(state.value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _invalid(state.name, "not valid UTF-8") from exc

    def on_end() -> None:
        state.ended = True

    return MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(
            "Send the upload as multipart/form-data",
            details=[("content-type", "expected multipart/form-data with a boundary")],
        )
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise UnsupportedMediaType(
            "The multipart boundary is too long",
            details=[("content-type", f"a boundary of at most {MAX_BOUNDARY_LENGTH} characters")],
        )
    return boundary


BeforeFile = Callable[[dict[str, str]], Awaitable[str]]


async def receive_upload(
    request: Request,
    store: ArtifactStore,
    form: UploadForm,
    before_file: BeforeFile,
    *,
    max_bytes: int,
) -> ReceivedUpload:
    """Parse the request body, storing the file part as it arrives under the prefix
    ``before_file`` returns. On any error the partly written file is removed; on
    success the file is committed and the caller owns it (and must delete it if it
    cannot record it)."""
    boundary = _boundary(request)
    file_field = form.file_field
    too_large = PayloadTooLarge(
        f"The upload exceeds the limit of {max_bytes} bytes",
        details=[(file_field, f"larger than {max_bytes} bytes")],
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + form.body_overhead:
        raise too_large
    state = _State(form=form)
    try:
        parser = _parser(boundary, state)
    except Exception as exc:  # the parser refusing the boundary itself
        raise UnsupportedMediaType(
            "The multipart boundary is not usable", details=[("content-type", "invalid boundary")]
        ) from exc
    writer: ArtifactWriter | None = None
    prefix: str | None = None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + form.body_overhead:
                raise too_large
            try:
                parser.write(chunk)
            except (ValidationFailed, PayloadTooLarge):
                raise
            except Exception as exc:  # the parser's own errors: a malformed body
                raise _invalid(None, "malformed multipart body") from exc
            if state.file_seen and prefix is None:
                prefix = await before_file(dict(state.fields_before_file))
            if state.pending:
                data = b"".join(state.pending)
                state.pending.clear()
                if writer is None:
                    writer = await anyio.to_thread.run_sync(
                        partial(store.writer, prefix or "", max_bytes=max_bytes)
                    )
                await anyio.to_thread.run_sync(writer.write, data)
        if not state.ended:
            raise _invalid(None, "the multipart body ended early")
        if not state.file_seen:
            raise _invalid(file_field, "a file is required")
        if writer is None or writer.size == 0:
            raise _invalid(file_field, "the file is empty")
        stored = await anyio.to_thread.run_sync(writer.commit)
    except BaseException:
        if writer is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(writer.abort)
        raise
    return ReceivedUpload(
        fields=state.fields,
        stored=stored,
        head=bytes(state.head),
        filename=state.filename,
        content_type=state.content_type,
    )


def stored_key(upload: ReceivedUpload) -> str:
    return upload.stored.key


@contextlib.asynccontextmanager
async def staged_upload(
    session: Session | None,
    store: ArtifactStore,
    receiving: Awaitable[Received],
    key_of: Callable[[Received], str],
    *,
    release: bool = True,
) -> AsyncIterator[Received]:
    """Receive an upload into the store and own its file until a row records it: every
    upload route's one way of doing so.

    The database is released first (``release_write_lock``; pass ``release=False`` when
    the receiver releases it itself once it has checked what the body names), so a slow
    client holds no lock while the body streams in. The block records the upload in the
    request's transaction. If the block raises, the file is removed at once (even when
    the request is being cancelled); if it returns, the file is removed should that
    transaction roll back, so no file outlives the row that should point at it. Without
    a request session (``None``: the MLflow facade, whose block records the upload in a
    transaction of its own that has committed when the block returns) there is nothing
    to release and nothing left to watch."""
    if session is not None and release:
        await run_sync(release_write_lock, session)
    received = await receiving
    key = key_of(received)
    try:
        yield received
    except BaseException:
        with anyio.CancelScope(shield=True):
            await run_sync(store.delete, key)
        raise
    if session is not None:
        run_after_rollback(session, lambda: store.delete(key))
