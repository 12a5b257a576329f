"""Uploaded files: recording an upload once its bytes are stored and recognised,
reading, listing and deleting. A file belongs to a project and follows its access
rules (API key scope ``files``); another tenant's file id answers like a missing one."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from maestro.api.downloads import attachment
from maestro.api.multipart import ReceivedUpload
from maestro.db import run_after_commit
from maestro.errors import NotFound, ValidationFailed
from maestro.files.formats import (
    CONTENT_TYPES,
    GENERIC_CONTENT_TYPES,
    DatasetFormat,
    UnrecognisedDataset,
    agrees,
    claimed_format,
    detect_dataset_format,
)
from maestro.files.models import FileKind, StoredFile
from maestro.files.schemas import FileRead
from maestro.identity import audit
from maestro.identity.rbac import Action, Principal, Target, authorize
from maestro.identity.schemas import user_ref
from maestro.identity.service import users_by_id
from maestro.projects import service as projects_service
from maestro.projects.models import Project
from maestro.projects.sources import register_file_source
from maestro.runtimes.formats import ModelFormat, detect_format
from maestro.schemas import strip_invisible
from maestro.storage import ArtifactStore

NO_SUCH_FILE = "No such file"
MODEL_CONTENT_TYPE = "application/octet-stream"
# Model file extensions that say which format a file is; others claim nothing.
_MODEL_EXTENSIONS = {
    "skops": ModelFormat.skops,
    "onnx": ModelFormat.onnx,
    "pkl": ModelFormat.pickle,
    "pickle": ModelFormat.pickle,
    "joblib": ModelFormat.joblib,
}
# A model file declared as one of these is not a model file at all.
_NOT_MODEL_MEDIA = re.compile(r"^(image|audio|video|font)/|^text/(html|css|javascript|csv)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _authorize_files(
    session: Session, principal: Principal, action: Action, project: Project, *, missing: str | None = None
) -> None:
    authorize(session, principal, action, Target("files", project.organization_id, project), missing=missing)


def project_for_upload(session: Session, principal: Principal, project_id: str) -> Project:
    """The project, once ``principal`` may upload files to it."""
    project = projects_service.get_project(session, project_id)
    _authorize_files(session, principal, "write", project)
    return project


def files_prefix(project: Project, kind: FileKind) -> str:
    return f"files/{project.id.lower()}/{kind}s"


def get_visible_file(session: Session, principal: Principal, file_id: str, action: Action) -> StoredFile:
    row = session.get(StoredFile, file_id)
    if row is None:
        raise NotFound(NO_SUCH_FILE)
    project = projects_service.get_project(session, row.project_id)
    _authorize_files(session, principal, action, project, missing=NO_SUCH_FILE)
    return row


def clean_filename(filename: str | None) -> str | None:
    """The name a client sent, without control characters nor invisible or
    direction-changing ones (``\\u202egnp.exe`` would display as ``exe.png``); kept for
    display only."""
    if filename is None:
        return None
    cleaned = strip_invisible(_CONTROL.sub("", filename)).strip()[:255]
    return cleaned or None


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def recognise_dataset(
    store: ArtifactStore, upload: ReceivedUpload, *, max_expanded_bytes: int | None = None
) -> DatasetFormat:
    """The dataset's format from its bytes, checked against what its name and declared
    content type claim; a 422 names the disagreement. A workbook is decompressed to
    count the real size of its parts, refused past ``max_expanded_bytes``."""
    media = _media(upload.content_type)
    claim = claimed_format(upload.filename, upload.content_type)
    if claim is None and media not in GENERIC_CONTENT_TYPES:
        raise ValidationFailed(
            "This content type is not a dataset",
            details=[("file", f"content type {media} is not csv, json, jsonl, parquet or xlsx")],
        )
    try:
        with store.open(upload.stored.key) as file:
            detected = detect_dataset_format(
                upload.head, file, upload.stored.size, max_expanded_bytes=max_expanded_bytes
            )
    except UnrecognisedDataset as exc:
        raise ValidationFailed(
            "The file is not a dataset Maestro can read",
            details=[("file", f"{exc}; send csv, json, jsonl, parquet or xlsx")],
        ) from exc
    if claim is not None and not agrees(claim[1], detected):
        raise ValidationFailed(
            "The file's contents do not match its claimed format",
            details=[("file", f"the {claim[0]} says {claim[1]}, but the file is {detected}")],
        )
    return detected


def recognise_model_file(store: ArtifactStore, upload: ReceivedUpload, claimed: str | None) -> ModelFormat:
    """The model file's format from its bytes, checked against the ``format`` field and
    the name's extension when they claim one. Nothing is ever unpickled."""
    media = _media(upload.content_type)
    if _NOT_MODEL_MEDIA.search(media):
        raise ValidationFailed(
            "This content type is not a model file", details=[("file", f"content type {media}")]
        )
    with store.open(upload.stored.key) as file:
        detected = detect_format(upload.head, file, upload.stored.size)
    claims: list[tuple[str, ModelFormat]] = []
    if claimed:
        try:
            claims.append(("format field", ModelFormat(claimed)))
        except ValueError as exc:
            raise ValidationFailed(
                "Invalid upload",
                details=[("format", f"must be one of {', '.join(fmt.value for fmt in ModelFormat)}")],
            ) from exc
    if upload.filename and "." in upload.filename:
        extension = upload.filename.rsplit(".", 1)[1].lower()
        if extension in _MODEL_EXTENSIONS:
            claims.append((f"file name extension .{extension}", _MODEL_EXTENSIONS[extension]))
    for source, fmt in claims:
        # A joblib file is a pickle too; calling it .pkl is not a lie.
        if fmt != detected and not (fmt is ModelFormat.pickle and detected is ModelFormat.joblib):
            raise ValidationFailed(
                "The file's contents do not match its claimed format",
                details=[
                    (
                        "format" if source == "format field" else "file",
                        f"the {source} says {fmt}, but the file is {detected}",
                    )
                ],
            )
    return detected


def record_upload(
    session: Session,
    principal: Principal,
    project: Project,
    kind: FileKind,
    upload: ReceivedUpload,
    fmt: str,
    description: str | None,
) -> StoredFile:
    """Record a stored, recognised upload. The caller removes the stored file when
    this raises."""
    project = projects_service.get_project(session, project.id)  # in this transaction
    _authorize_files(session, principal, "write", project)
    content_type = CONTENT_TYPES[DatasetFormat(fmt)] if kind is FileKind.dataset else MODEL_CONTENT_TYPE
    row = StoredFile(
        organization_id=project.organization_id,
        project_id=project.id,
        kind=kind,
        filename=clean_filename(upload.filename),
        description=description or None,
        format=fmt,
        content_type=content_type,
        storage_key=upload.stored.key,
        size=upload.stored.size,
        sha256=upload.stored.sha256,
        created_by_id=principal.user_id,
    )
    session.add(row)
    session.flush()
    audit.describe(
        session,
        resource_type="files",
        resource_id=row.id,
        organization_id=project.organization_id,
        project_id=project.id,
        kind=str(kind),
        format=fmt,
        size=row.size,
        sha256=row.sha256,
    )
    return row


def files_query(project: Project, kind: FileKind | None) -> Select[StoredFile]:
    statement = select(StoredFile).where(StoredFile.project_id == project.id)
    if kind is not None:
        statement = statement.where(StoredFile.kind == kind)
    return statement


def project_for_listing(session: Session, principal: Principal, project_id: str) -> Project:
    project = projects_service.get_project(session, project_id)
    _authorize_files(session, principal, "read", project)
    return project


def file_reads(session: Session, rows: Sequence[StoredFile]) -> list[FileRead]:
    creators = users_by_id(session, (row.created_by_id for row in rows))
    return [
        FileRead(
            id=row.id,
            project_id=row.project_id,
            kind=FileKind(row.kind),
            filename=row.filename,
            description=row.description,
            format=row.format,
            content_type=row.content_type,
            size_bytes=row.size,
            sha256=row.sha256,
            download_url=f"/api/v1/files/{row.id}/download",
            created_by=user_ref(creators.get(row.created_by_id or "")),
            created_at=row.created_at,
        )
        for row in rows
    ]


def file_read(session: Session, row: StoredFile) -> FileRead:
    return file_reads(session, [row])[0]


def delete_file(session: Session, principal: Principal, file_id: str, store: ArtifactStore) -> None:
    """Delete the row now and the stored bytes once the deletion has committed."""
    row = get_visible_file(session, principal, file_id, "delete")
    audit.describe(
        session,
        resource_type="files",
        resource_id=row.id,
        organization_id=row.organization_id,
        project_id=row.project_id,
        filename=row.filename,
    )
    key = row.storage_key
    session.delete(row)
    session.flush()
    run_after_commit(session, lambda: store.delete(key))


def content_disposition(row: StoredFile, suffix: str) -> str:
    """An attachment header naming the file as it was uploaded (its last path
    component), or after its id when that name has nothing plain in it."""
    return attachment(row.filename, f"{row.id}{suffix}")


# --- what files hold per organisation and project ----------------------------------------
register_file_source(
    "project_files",
    select(StoredFile.storage_key),
    organization=StoredFile.organization_id,
    project=StoredFile.project_id,
)
