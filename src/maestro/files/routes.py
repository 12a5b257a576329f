from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from anyio.to_thread import run_sync
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from maestro.api.deps import CurrentPrincipal, SessionDep, SettingsDep, StoreDep
from maestro.api.downloads import BINARY_RESPONSE, stored_file_response
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.multipart import UploadForm, receive_upload, staged_upload, stored_key
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import ID_MAX_LENGTH, ID_PATTERN, FileId, ProjectId
from maestro.db import release_write_lock
from maestro.errors import ValidationFailed
from maestro.files import service
from maestro.files.formats import SUFFIXES, DatasetFormat
from maestro.files.models import FileKind, StoredFile
from maestro.files.schemas import FileRead
from maestro.projects.models import Project
from maestro.runtimes.formats import ModelFormat
from maestro.schemas import find_invisible, invisible_message

router = APIRouter(prefix="/api/v1", tags=["files"])

DESCRIPTION_LIMIT = 2000
MODEL_FORM = UploadForm(file_field="file", text_fields=frozenset({"project_id", "description", "format"}))
DATASET_FORM = UploadForm(file_field="file", text_fields=frozenset({"project_id", "description"}))
QueryProjectId = Annotated[
    str | None,
    Query(
        max_length=ID_MAX_LENGTH,
        pattern=ID_PATTERN,
        description="The project the file belongs to; or send the form field `project_id` before the file.",
    ),
]


def _upload_body(with_format: bool) -> dict:
    properties: dict[str, dict] = {
        "file": {"type": "string", "format": "binary"},
        "project_id": {
            "type": "string",
            "pattern": ID_PATTERN,
            "maxLength": ID_MAX_LENGTH,
            "description": "Send it before the file part, or as the `project_id` query parameter.",
        },
        "description": {"type": "string", "maxLength": DESCRIPTION_LIMIT},
    }
    if with_format:
        properties["format"] = {"type": "string", "enum": [fmt.value for fmt in ModelFormat]}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                }
            },
        }
    }


def _description(fields: dict[str, str]) -> str | None:
    text = fields.get("description", "").strip()
    if len(text) > DESCRIPTION_LIMIT:
        raise ValidationFailed(
            "Invalid upload", details=[("description", f"at most {DESCRIPTION_LIMIT} characters")]
        )
    if any(ord(char) < 32 and char not in "\t\n\r" for char in text):
        raise ValidationFailed(
            "Invalid upload", details=[("description", "must not contain control characters")]
        )
    if (char := find_invisible(text)) is not None:
        raise ValidationFailed("Invalid upload", details=[("description", invisible_message(char))])
    return text or None


async def _receive(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    store: StoreDep,
    project_id: str | None,
    kind: FileKind,
    form: UploadForm,
    max_bytes: int,
) -> FileRead:
    """Authorise against the project named before the file, stream the file into the
    store, recognise it, and record it; a refused upload leaves nothing behind."""
    project: Project | None = None

    async def before_file(fields: dict[str, str]) -> str:
        nonlocal project
        named = fields.get("project_id") or project_id
        if not named:
            raise ValidationFailed(
                "Say which project the file belongs to",
                details=[("project_id", "send it as a query parameter or a form field before the file")],
            )
        if project_id and fields.get("project_id") and fields["project_id"] != project_id:
            raise ValidationFailed(
                "Invalid upload", details=[("project_id", "the form field and the query parameter differ")]
            )
        if len(named) > ID_MAX_LENGTH or not re.fullmatch(ID_PATTERN, named):
            raise ValidationFailed("Invalid upload", details=[("project_id", "not a valid id")])
        project = await run_sync(partial(service.project_for_upload, session, principal, named))
        await run_sync(release_write_lock, session)  # checked: now the file may stream in
        return service.files_prefix(project, kind)

    receiving = receive_upload(request, store, form, before_file, max_bytes=max_bytes)
    async with staged_upload(session, store, receiving, stored_key, release=False) as upload:
        assert project is not None  # before_file ran: the file part arrived
        description = _description(upload.fields)
        if kind is FileKind.dataset:
            expands = request.app.state.settings.dataset_max_expanded_bytes
            fmt: str = await run_sync(
                partial(service.recognise_dataset, store, upload, max_expanded_bytes=expands)
            )
        else:
            claimed = upload.fields.get("format", "").strip() or None
            fmt = await run_sync(partial(service.recognise_model_file, store, upload, claimed))
        row = await run_sync(
            partial(service.record_upload, session, principal, project, kind, upload, fmt, description)
        )
    return await run_sync(partial(service.file_read, session, row))


@router.post(
    "/upload/models",
    status_code=201,
    response_model=Envelope[FileRead],
    responses=error_responses(401, 403, 404, 413, 415, 422, 429),
    openapi_extra=_upload_body(with_format=True),
)
async def upload_model_file(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    project_id: QueryProjectId = None,
) -> Envelope[FileRead]:
    """Upload a model file to a project (multipart/form-data, field `file`). Its format
    is recognised from its bytes; nothing in it is ever executed."""
    read = await _receive(
        request, principal, session, store, project_id, FileKind.model, MODEL_FORM, settings.max_model_bytes
    )
    return Envelope(data=read)


@router.post(
    "/upload/datasets",
    status_code=201,
    response_model=Envelope[FileRead],
    responses=error_responses(401, 403, 404, 413, 415, 422, 429),
    openapi_extra=_upload_body(with_format=False),
)
async def upload_dataset(
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    project_id: QueryProjectId = None,
) -> Envelope[FileRead]:
    """Upload a dataset to a project (multipart/form-data, field `file`): CSV or other
    delimited text, JSON, JSON lines, Parquet or XLSX, recognised from its bytes."""
    read = await _receive(
        request,
        principal,
        session,
        store,
        project_id,
        FileKind.dataset,
        DATASET_FORM,
        settings.max_dataset_bytes,
    )
    return Envelope(data=read)


@router.get(
    "/projects/{project_id}/files",
    response_model=Page[FileRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_project_files(
    project_id: ProjectId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    kind: Annotated[FileKind | None, Query(description="Only model files or only datasets.")] = None,
) -> Page[FileRead]:
    """A project's uploaded files, newest first."""
    project = service.project_for_listing(session, principal, project_id)
    return paginate(
        session,
        service.files_query(project, kind),
        params,
        sort_column=StoredFile.created_at,
        id_column=StoredFile.id,
        order="desc",
        to_item=lambda rows: service.file_reads(session, rows),
    )


@router.get(
    "/files/{file_id}",
    response_model=Envelope[FileRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_file(file_id: FileId, principal: CurrentPrincipal, session: SessionDep) -> Envelope[FileRead]:
    """An uploaded file's details."""
    row = service.get_visible_file(session, principal, file_id, "read")
    return Envelope(data=service.file_read(session, row))


@router.get(
    "/files/{file_id}/download",
    response_class=StreamingResponse,
    responses={**BINARY_RESPONSE, **error_responses(401, 403, 404, 422, 429)},
)
def download_file(
    file_id: FileId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    """Download a file, byte for byte as uploaded."""
    row = service.get_visible_file(session, principal, file_id, "read")
    suffix = SUFFIXES.get(DatasetFormat(row.format), "") if row.kind == FileKind.dataset else ".bin"
    return stored_file_response(
        store,
        row.storage_key,
        size=row.size,
        disposition=service.content_disposition(row, suffix),
        media_type=row.content_type,
    )


@router.delete(
    "/files/{file_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_file(file_id: FileId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep) -> None:
    """Delete a file and its stored bytes."""
    service.delete_file(session, principal, file_id, store)
