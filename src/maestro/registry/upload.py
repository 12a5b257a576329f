"""Receiving a model version upload: a multipart/form-data body parsed as it arrives.

The file part goes chunk by chunk into the artifact store under a generated key,
with the byte limit enforced as bytes arrive, so an oversized upload is refused
without being held in memory or kept on disk. The other parts are small form
fields, each with its own limit. The file name a client sent is kept as metadata
only; it never becomes part of a key or a path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from maestro.api.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from maestro.registry.formats import HEAD_BYTES
from maestro.storage import ArtifactStore, ArtifactWriter, StoredObject

FILE_FIELD = "model_file"
TEXT_FIELDS = frozenset(
    {
        "version",
        "stage",
        "description",
        "performance_metrics",
        "training_metrics",
        "model_schema",
        "requirements",
        "format",
    }
)
MAX_FIELD_BYTES = 1024 * 1024  # per form field
MAX_PARTS = 16
# Room for the form fields, part headers and boundaries beside the file itself.
BODY_OVERHEAD = len(TEXT_FIELDS) * MAX_FIELD_BYTES + 64 * 1024


@dataclass
class ReceivedUpload:
    fields: dict[str, str]
    stored: StoredObject
    head: bytes  # the file's first bytes, for format recognition
    filename: str | None = None
    content_type: str | None = None


@dataclass
class _State:
    parts: int = 0
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str | None = None
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)
    fields: dict[str, str] = field(default_factory=dict)
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
        if name == FILE_FIELD:
            if state.file_seen:
                raise _invalid(FILE_FIELD, "only one file may be sent")
            state.file_seen = state.is_file = True
            filename = options.get(b"filename")
            state.filename = filename.decode("utf-8", "replace")[:255] if filename is not None else None
            content_type = state.headers.get("content-type")
            state.content_type = content_type.decode("latin-1")[:100] if content_type else None
        elif name not in TEXT_FIELDS:
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
            if len(state.value) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(
                    "A form field is too large",
                    details=[(state.name, f"larger than {MAX_FIELD_BYTES} bytes")],
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
        {  # type: ignore[arg-type]
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
            "Send the model version as multipart/form-data",
            details=[("content-type", "expected multipart/form-data with a boundary")],
        )
    return boundary


async def receive_upload(
    request: Request, store: ArtifactStore, prefix: str, *, max_bytes: int
) -> ReceivedUpload:
    """Parse the request body, storing the file part as it arrives. On any error the
    partly written file is removed; on success the file is committed and the caller
    owns it (and must delete it if it cannot record it)."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + BODY_OVERHEAD:
        raise PayloadTooLarge(
            f"The upload exceeds the limit of {max_bytes} bytes",
            details=[(FILE_FIELD, f"larger than {max_bytes} bytes")],
        )
    state = _State()
    parser = _parser(boundary, state)
    writer: ArtifactWriter | None = None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + BODY_OVERHEAD:
                raise PayloadTooLarge(
                    f"The upload exceeds the limit of {max_bytes} bytes",
                    details=[(FILE_FIELD, f"larger than {max_bytes} bytes")],
                )
            try:
                parser.write(chunk)
            except (ValidationFailed, PayloadTooLarge):
                raise
            except Exception as exc:  # the parser's own errors: a malformed body
                raise _invalid(None, "malformed multipart body") from exc
            if state.pending:
                data = b"".join(state.pending)
                state.pending.clear()
                if writer is None:
                    writer = await anyio.to_thread.run_sync(lambda: store.writer(prefix, max_bytes=max_bytes))
                await anyio.to_thread.run_sync(writer.write, data)
        if not state.ended:
            raise _invalid(None, "the multipart body ended early")
        if not state.file_seen:
            raise _invalid(FILE_FIELD, "a model file is required")
        if writer is None or writer.size == 0:
            raise _invalid(FILE_FIELD, "the model file is empty")
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
