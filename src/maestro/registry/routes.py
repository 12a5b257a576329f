from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Any, Literal

from anyio.to_thread import run_sync
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from maestro.api.deps import CurrentPrincipal, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from maestro.api.downloads import BINARY_RESPONSE, attachment, stored_file_response
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses, validation_details
from maestro.api.heavy import HeavyDep
from maestro.api.multipart import ReceivedUpload, UploadForm, receive_upload, staged_upload, stored_key
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import ProjectId
from maestro.db import release_write_lock
from maestro.errors import NotFound, ValidationFailed
from maestro.projects import service as projects_service
from maestro.registry import cards, labels, schemas, service
from maestro.registry.models import ModelType, ModelVersion, RegisteredModel, Stage
from maestro.registry.schemas import (
    ALIAS_PATTERN,
    SEMVER_PATTERN,
    TAG_KEY_PATTERN,
    VERSION_REF_PATTERN,
    AliasRead,
    AliasSet,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    StageChange,
    TagKey,
    TagRead,
    TagSet,
    TrustChange,
    VersionCreate,
    VersionRead,
)
from maestro.runtimes.formats import ModelFormat, detect_format
from maestro.storage import ArtifactStore

router = APIRouter(prefix="/api/v1", tags=["registry"])

ModelName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The model's exact name, URL-encoded.",
    ),
]
# Every route that takes a model takes its id or its name (``service.get_visible_model``).
ModelId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f/]+$",
        description="The model's id, or its name (URL-encoded) when one model you can see has it.",
    ),
]
TagKeyPath = Annotated[str, Path(pattern=TAG_KEY_PATTERN, description="The tag's key.")]
MAX_TAG_FILTERS = 20


@router.get(
    "/projects/{project_id}/models",
    response_model=Page[ModelRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_models(
    project_id: ProjectId,
    principal: CurrentPrincipal,
    session: SessionDep,
    params: PageParamsDep,
    model_type: Annotated[ModelType | None, Query(description="Only models of this type.")] = None,
    framework: Annotated[
        str | None,
        Query(max_length=50, pattern=r"^[^\x00]*$", description="Only models of this framework (any case)."),
    ] = None,
    tags: Annotated[
        list[TagKey] | None,
        Query(
            alias="tags[]",
            max_length=MAX_TAG_FILTERS,
            description="Only models having every one of these tag keys; repeat the parameter.",
        ),
    ] = None,
    search: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00]*$",
            description="Case-insensitive text in the name or description.",
        ),
    ] = None,
    sort: Annotated[service.SortKey, Query(description="Field to sort by.")] = "created_at",
    order: Annotated[Literal["asc", "desc"], Query(description="Sort direction.")] = "desc",
) -> Page[ModelRead]:
    """Models of a project, filtered and sorted, newest first by default."""
    project = projects_service.project_for(session, principal, "models", project_id, "read")
    statement = service.models_query(
        project, model_type=model_type, framework=framework, tags=tags or (), search=search
    )
    return paginate(
        session,
        statement,
        params,
        sort_column=service.SORT_COLUMNS[sort],
        id_column=RegisteredModel.id,
        order=order,
        to_item=lambda rows: service.model_reads(session, rows),
    )


@router.post(
    "/projects/{project_id}/models",
    status_code=201,
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def create_model(
    project_id: ProjectId, body: ModelCreate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ModelRead]:
    """Register a model in the project; its name must be unique there."""
    model = service.create_model(session, principal, project_id, body)
    return Envelope(data=service.model_read(session, model))


@router.get(
    "/projects/{project_id}/models/by-name/{model_name}",
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_model_by_name(
    project_id: ProjectId, model_name: ModelName, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ModelRead]:
    """The project's model with exactly this name."""
    model = service.get_model_by_name(session, principal, project_id, model_name)
    return Envelope(data=service.model_read(session, model))


@router.get(
    "/models/{model_id}",
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_model(model_id: ModelId, principal: CurrentPrincipal, session: SessionDep) -> Envelope[ModelRead]:
    """A model's details, with its version count and latest version."""
    model = service.get_visible_model(session, principal, model_id, "read")
    return Envelope(data=service.model_read(session, model))


@router.put(
    "/models/{model_id}",
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def update_model(
    model_id: ModelId, body: ModelUpdate, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ModelRead]:
    """Change a model's name, description, type, framework, task type or tag keys."""
    model = service.update_model(session, principal, model_id, body)
    return Envelope(data=service.model_read(session, model))


@router.delete(
    "/models/{model_id}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_model(
    model_id: ModelId, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> None:
    """Delete a model and all its versions, files included."""
    service.delete_model(session, principal, model_id, store)


@router.get(
    "/models/{model_id}/tags",
    response_model=Envelope[list[TagRead]],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_model_tags(
    model_id: ModelId, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[list[TagRead]]:
    """A model's tags with their values, by key."""
    tags = service.list_tags(session, principal, model_id)
    return Envelope(data=[TagRead(key=tag.key, value=tag.value) for tag in tags])


@router.put(
    "/models/{model_id}/tags/{key}",
    response_model=Envelope[TagRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def set_model_tag(
    model_id: ModelId, key: TagKeyPath, body: TagSet, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[TagRead]:
    """Set a tag on a model, adding it or replacing its value."""
    tag = service.set_tag(session, principal, model_id, key, body.value)
    return Envelope(data=TagRead(key=tag.key, value=tag.value))


@router.delete(
    "/models/{model_id}/tags/{key}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_model_tag(
    model_id: ModelId, key: TagKeyPath, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Remove a tag from a model."""
    service.delete_tag(session, principal, model_id, key)


# --- versions ------------------------------------------------------------------------------
VersionPath = Annotated[
    str,
    Path(
        max_length=50,
        pattern=VERSION_REF_PATTERN,
        description="The version, such as 1.2.0; an integer N is N.0.0.",
    ),
]
AliasPath = Annotated[str, Path(pattern=ALIAS_PATTERN, description="The alias, such as champion.")]
JSON_FIELDS = ("performance_metrics", "training_metrics", "model_schema")
VERSION_FORM = UploadForm(
    file_field="model_file",
    text_fields=frozenset({"version", "stage", "description", *JSON_FIELDS, "requirements", "format"}),
)
DOWNLOAD_SUFFIXES = {
    ModelFormat.skops: ".skops",
    ModelFormat.onnx: ".onnx",
    ModelFormat.joblib: ".joblib",
    ModelFormat.pickle: ".pkl",
    ModelFormat.xgboost_json: ".json",
    ModelFormat.lightgbm_txt: ".txt",
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model_file"],
                    "properties": {
                        "model_file": {"type": "string", "format": "binary"},
                        "version": {"type": "string", "pattern": SEMVER_PATTERN, "maxLength": 50},
                        "stage": {"type": "string", "enum": [stage.value for stage in Stage]},
                        "description": {"type": "string", "maxLength": 2000},
                        "performance_metrics": {"type": "string", "description": "A JSON object."},
                        "training_metrics": {"type": "string", "description": "A JSON object."},
                        "model_schema": {"type": "string", "description": "A JSON object."},
                        "requirements": {"type": "string"},
                        "format": {"type": "string", "enum": [fmt.value for fmt in ModelFormat]},
                    },
                }
            }
        },
    }
}


def _version_body(fields: dict[str, str]) -> VersionCreate:
    values: dict[str, Any] = dict(fields)
    for name in JSON_FIELDS:
        if name in values:
            try:
                values[name] = json.loads(values[name])
            except (ValueError, RecursionError) as exc:
                raise ValidationFailed("Invalid upload", details=[(name, "not valid JSON")]) from exc
    for name in ("version", "format"):
        if values.get(name) == "":
            values.pop(name)
    try:
        return VersionCreate.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed("Invalid upload", details=validation_details(exc.errors())) from exc


def _detect(store: ArtifactStore, upload: ReceivedUpload) -> ModelFormat:
    with store.open(upload.stored.key) as file:
        return detect_format(upload.head, file, upload.stored.size)


@router.post(
    "/models/{model_id}/versions",
    status_code=201,
    response_model=Envelope[VersionRead],
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429),
    openapi_extra=UPLOAD_BODY,
)
async def create_model_version(
    model_id: ModelId,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> Envelope[VersionRead]:
    """Upload a model file as a new version (multipart/form-data)."""
    model = await run_sync(partial(service.get_visible_model, session, principal, model_id, "write"))
    prefix = service.model_files_prefix(model)

    async def before_file(_fields: dict[str, str]) -> str:
        return prefix

    receiving = receive_upload(request, store, VERSION_FORM, before_file, max_bytes=settings.max_model_bytes)
    async with staged_upload(session, store, receiving, stored_key) as upload:
        body = _version_body(upload.fields)
        detected = await run_sync(partial(_detect, store, upload))
        row = await run_sync(
            partial(
                service.create_version,
                session,
                principal,
                model_id,
                body,
                upload.stored,
                detected,
                settings=settings,
                store=store,
            )
        )
    read = await run_sync(partial(service.version_read, session, row))
    return Envelope(data=read)


@router.get(
    "/models/{model_id}/versions",
    response_model=Page[VersionRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_model_versions(
    model_id: ModelId, principal: CurrentPrincipal, session: SessionDep, params: PageParamsDep
) -> Page[VersionRead]:
    """A model's versions, newest first."""
    model = service.get_visible_model(session, principal, model_id, "read")
    return paginate(
        session,
        service.versions_query(model),
        params,
        sort_column=ModelVersion.created_at,
        id_column=ModelVersion.id,
        order="desc",
        to_item=lambda rows: service.version_reads(session, rows),
    )


@router.get(
    "/models/{model_id}/versions/{version}",
    response_model=Envelope[VersionRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_model_version(
    model_id: ModelId, version: VersionPath, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[VersionRead]:
    """One version of a model."""
    _, row = service.get_version(session, principal, model_id, version, "read")
    return Envelope(data=service.version_read(session, row))


@router.delete(
    "/models/{model_id}/versions/{version}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_model_version(
    model_id: ModelId, version: VersionPath, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> None:
    """Delete a version and its file."""
    service.delete_version(session, principal, model_id, version, store)


@router.get(
    "/models/{model_id}/versions/{version}/file",
    response_class=StreamingResponse,
    responses={**BINARY_RESPONSE, **error_responses(401, 403, 404, 422, 429)},
)
def download_model_version(
    model_id: ModelId, version: VersionPath, principal: CurrentPrincipal, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    """Download a version's model file, byte for byte as uploaded."""
    model, row = service.get_version(session, principal, model_id, version, "read")
    if not row.file_key:
        raise NotFound("This version has no file")
    suffix = DOWNLOAD_SUFFIXES.get(ModelFormat(row.format or "other"), ".bin")
    filename = f"{model.id}-{row.version}{suffix}"
    return stored_file_response(
        store, row.file_key, size=row.file_size or 0, disposition=attachment(filename, filename)
    )


@router.put(
    "/models/{model_id}/versions/{version}/stage",
    response_model=Envelope[VersionRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def change_model_version_stage(
    model_id: ModelId,
    version: VersionPath,
    body: StageChange,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[VersionRead]:
    """Move a version to another stage, optionally archiving other production versions."""
    row = service.change_stage(session, principal, model_id, version, body)
    return Envelope(data=service.version_read(session, row))


@router.put(
    "/models/{model_id}/versions/{version}/trusted",
    response_model=Envelope[VersionRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def set_model_version_trusted(
    model_id: ModelId,
    version: VersionPath,
    body: TrustChange,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[VersionRead]:
    """Trust (or distrust) a version's file for loading; organisation admins only."""
    row = service.set_trusted(session, principal, model_id, version, body.trusted)
    return Envelope(data=service.version_read(session, row))


# --- aliases -------------------------------------------------------------------------------
@router.get(
    "/models/{model_id}/aliases/{alias}",
    response_model=Envelope[AliasRead],
    responses=error_responses(401, 403, 404, 422, 429),
)
def get_model_alias(
    model_id: ModelId, alias: AliasPath, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AliasRead]:
    """The version an alias names."""
    row, version = labels.resolve_alias(session, principal, model_id, alias)
    return Envelope(data=AliasRead(alias=row.alias, version=service.version_read(session, version)))


@router.put(
    "/models/{model_id}/aliases/{alias}",
    response_model=Envelope[AliasRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def set_model_alias(
    model_id: ModelId, alias: AliasPath, body: AliasSet, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[AliasRead]:
    """Point an alias at a version of the model."""
    row, version = labels.set_alias(session, principal, model_id, alias, body.version)
    return Envelope(data=AliasRead(alias=row.alias, version=service.version_read(session, version)))


@router.delete(
    "/models/{model_id}/aliases/{alias}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_model_alias(
    model_id: ModelId, alias: AliasPath, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Remove an alias from a model."""
    labels.delete_alias(session, principal, model_id, alias)


# --- version tags --------------------------------------------------------------------------
@router.get(
    "/models/{model_id}/versions/{version}/tags",
    response_model=Envelope[list[TagRead]],
    responses=error_responses(401, 403, 404, 422, 429),
)
def list_version_tags(
    model_id: ModelId, version: VersionPath, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[list[TagRead]]:
    """A version's tags with their values, by key."""
    tags = labels.list_version_tags(session, principal, model_id, version)
    return Envelope(data=[TagRead(key=tag.key, value=tag.value) for tag in tags])


@router.put(
    "/models/{model_id}/versions/{version}/tags/{key}",
    response_model=Envelope[TagRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def set_version_tag(
    model_id: ModelId,
    version: VersionPath,
    key: TagKeyPath,
    body: TagSet,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[TagRead]:
    """Set a tag on a version, adding it or replacing its value."""
    tag = labels.set_version_tag(session, principal, model_id, version, key, body.value)
    return Envelope(data=TagRead(key=tag.key, value=tag.value))


@router.delete(
    "/models/{model_id}/versions/{version}/tags/{key}",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def delete_version_tag(
    model_id: ModelId, version: VersionPath, key: TagKeyPath, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Remove a tag from a version."""
    labels.delete_version_tag(session, principal, model_id, version, key)


# --- model cards ---------------------------------------------------------------------------
CARD_ERRORS = error_responses(401, 403, 404, 422, 429)
CARD_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The card as JSON (the default), or a Markdown document with `format=markdown`.",
        "content": {"text/markdown": {"schema": {"type": "string"}}},
    },
    **CARD_ERRORS,
}
CARD_PDF_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The card as a PDF document.",
        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
    },
    **CARD_ERRORS,
    **error_responses(503),
}


def _download(content: bytes | str, media_type: str, filename: str) -> Response:
    return Response(
        content,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/models/{model_id}/versions/{version}/stages",
    response_model=Envelope[list[schemas.StageTransitionRead]],
    responses=CARD_ERRORS,
)
def list_model_version_stages(
    model_id: ModelId, version: VersionPath, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[list[schemas.StageTransitionRead]]:
    """A version's stage history, oldest first: from, to, note, who and when."""
    return Envelope(data=cards.version_stage_history(session, principal, model_id, version))


@router.get(
    "/models/{model_id}/versions/{version}/card",
    response_model=Envelope[schemas.ModelCard],
    responses=CARD_READ_RESPONSES,
)
def get_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: SessionDep,
    format_: Annotated[
        Literal["json", "markdown"],
        Query(alias="format", description="`markdown` answers a downloadable text/markdown document."),
    ] = "json",
) -> Envelope[schemas.ModelCard] | Response:
    """A version's model card: what the registry knows about it and the sections people wrote."""
    card = cards.get_card(session, principal, model_id, version)
    if format_ == "markdown":
        from maestro.registry import card_documents  # fpdf2 and its fonts load on first use

        markdown = card_documents.render_markdown(card)
        return _download(
            markdown, "text/markdown; charset=utf-8", card_documents.document_filename(card, ".md")
        )
    return Envelope(data=card)


@router.put(
    "/models/{model_id}/versions/{version}/card",
    response_model=Envelope[schemas.ModelCard],
    responses=CARD_ERRORS,
)
def update_model_card(
    model_id: ModelId,
    version: VersionPath,
    body: schemas.ModelCardSections,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[schemas.ModelCard]:
    """Replace the narrative sections of a version's card (intended use, limitations…)."""
    card = cards.save_sections(session, principal, model_id, version, body)
    return Envelope(data=card)


@router.post(
    "/models/{model_id}/versions/{version}/card/generate",
    response_class=Response,
    responses=CARD_PDF_RESPONSES,
)
def generate_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    heavy: HeavyDep,
    body: schemas.ModelCardRender | None = None,
) -> Response:
    """Render a version's card as a PDF; overrides apply to this document only."""
    overrides = body.overrides if body else None
    # A reader: rendering changes nothing, so it takes no write lock and leaves no audit row.
    card = cards.get_card(session, principal, model_id, version, overrides, rendering="pdf")
    release_write_lock(session)  # no snapshot held while the document renders
    from maestro.registry import card_documents  # fpdf2 and its fonts load on first use

    document = card_documents.render_pdf_in_turn(heavy, principal, card)
    return _download(document, "application/pdf", card_documents.document_filename(card, ".pdf"))


@router.post(
    "/models/{model_id}/versions/{version}/card/validate",
    response_model=Envelope[schemas.ModelCardValidation],
    responses=CARD_ERRORS,
)
def validate_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    body: schemas.ModelCardRender | None = None,
) -> Envelope[schemas.ModelCardValidation]:
    """Check a version's card (with any overrides) for missing and invalid sections."""
    overrides = body.overrides if body else None
    return Envelope(data=cards.validate_card(session, principal, model_id, version, overrides))
