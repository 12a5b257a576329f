"""The name-addressed registry API: `GET/POST /api/v1/models`, `PATCH /models/{model}`,
`POST …/versions/{version}/stage`, tags set and removed with bodies, and model cards
under `/api/v1/model-cards/…`. Aliases beside the platform's routes: a model is its id
or its name, a version semantic or an integer, and every route calls the service
functions (and so the authorisation) of the platform route it stands beside. Answers
keep the platform's envelope."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from maestro.api.deps import CurrentPrincipal, ReadSessionDep, SessionDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.heavy import HeavyDep
from maestro.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageParams, paginate
from maestro.errors import ValidationFailed
from maestro.registry import labels, routes, schemas, scope, service
from maestro.registry.filters import MAX_FILTER_LENGTH
from maestro.registry.models import RegisteredModel
from maestro.registry.routes import CARD_ERRORS, CARD_PDF_RESPONSES, CARD_READ_RESPONSES, ModelId, VersionPath
from maestro.registry.schemas import (
    ModelPatch,
    ModelRead,
    ModelRegister,
    StageRequest,
    TagKey,
    TagKeyBody,
    TagPair,
    TagRead,
    VersionRead,
    tag_values,
)

router = APIRouter(prefix="/api/v1", tags=["registry"])

PROJECT_HEADER = "X-Maestro-Project"


@router.get(
    "/models",
    response_model=Page[ModelRead],
    responses=error_responses(401, 403, 422, 429),
)
def list_all_models(
    principal: CurrentPrincipal,
    session: SessionDep,
    max_results: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Models per page.")] = DEFAULT_LIMIT,
    filter_string: Annotated[
        str | None,
        Query(
            max_length=MAX_FILTER_LENGTH,
            description="Such as `name LIKE '%fraud%'`, `name = 'x'`, `tags.team = 'growth'`, joined by AND.",
        ),
    ] = None,
    page_token: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512, description="The same as `page_token`.")] = None,
    page: Annotated[
        int | None, Query(ge=1, le=100_000, description="Page number, for offset paging.")
    ] = None,
) -> Page[ModelRead]:
    """Models of every project you can see in the organisation you act in, by name."""
    if page_token and cursor and page_token != cursor:
        raise ValidationFailed(
            "Send page_token or cursor, not two different ones",
            details=[("page_token", "differs from cursor")],
        )
    params = PageParams(limit=max_results, cursor=page_token or cursor, page=page)
    return paginate(
        session,
        scope.readable_models(session, principal, filter_string),
        params,
        sort_column=RegisteredModel.name,
        id_column=RegisteredModel.id,
        order="asc",
        to_item=lambda rows: service.model_reads(session, rows),
    )


@router.post(
    "/models",
    status_code=201,
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def register_model(
    body: ModelRegister,
    principal: CurrentPrincipal,
    session: SessionDep,
    project: Annotated[
        str | None,
        Header(
            alias=PROJECT_HEADER,
            max_length=64,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The project to register in, when the body names none.",
        ),
    ] = None,
) -> Envelope[ModelRead]:
    """Register a model by name, with tags as key/value pairs; the project comes from
    `project_id`, the `X-Maestro-Project` header, or is your only project."""
    project_id = scope.project_to_register_in(session, principal, body.project_id, project)
    model = service.create_model(session, principal, project_id, body.create_body(), tag_values(body.tags))
    return Envelope(data=service.model_read(session, model))


@router.patch(
    "/models/{model_id}",
    response_model=Envelope[ModelRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def patch_model(
    model_id: ModelId, body: ModelPatch, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[ModelRead]:
    """Change the fields sent; `tags` as key/value pairs replaces the model's tags."""
    model = service.update_model(session, principal, model_id, body)
    return Envelope(data=service.model_read(session, model))


@router.post(
    "/models/{model_id}/versions/{version}/stage",
    response_model=Envelope[VersionRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def transition_model_version_stage(
    model_id: ModelId,
    version: VersionPath,
    body: StageRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[VersionRead]:
    """Move a version to Staging, Production, Archived or None (any case), optionally
    archiving the model's other Production versions."""
    row = service.change_stage(session, principal, model_id, version, body.change())
    return Envelope(data=service.version_read(session, row))


def _one_key(query: str | None, body: TagKeyBody | None) -> str:
    keys = {key for key in (query, body.key if body else None) if key}
    if len(keys) != 1:
        reason = (
            "required: key in the body, or tag in the query" if not keys else "the body and the query differ"
        )
        raise ValidationFailed(f"Name the tag's key once: {reason}", details=[("key", reason)])
    return keys.pop()


# `?key=` would be refused as a credential in a query string (every route refuses those),
# so the query names the tag's key `tag`.
KeyQuery = Annotated[
    TagKey | None, Query(alias="tag", description='The tag\'s key, when the body (`{"key"}`) has none.')
]


@router.post(
    "/models/{model_id}/tags",
    response_model=Envelope[TagRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def add_model_tag(
    model_id: ModelId, body: TagPair, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[TagRead]:
    """Set a tag on a model from a `{"key", "value"}` body."""
    tag = service.set_tag(session, principal, model_id, body.key, body.value)
    return Envelope(data=TagRead(key=tag.key, value=tag.value))


@router.delete(
    "/models/{model_id}/tags",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def remove_model_tag(
    model_id: ModelId,
    principal: CurrentPrincipal,
    session: SessionDep,
    key: KeyQuery = None,
    body: TagKeyBody | None = None,
) -> None:
    """Remove a model's tag named by `key` in the body, or by the query's `tag`."""
    service.delete_tag(session, principal, model_id, _one_key(key, body))


@router.post(
    "/models/{model_id}/versions/{version}/tags",
    response_model=Envelope[TagRead],
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
def add_version_tag(
    model_id: ModelId, version: VersionPath, body: TagPair, principal: CurrentPrincipal, session: SessionDep
) -> Envelope[TagRead]:
    """Set a tag on a version from a `{"key", "value"}` body."""
    tag = labels.set_version_tag(session, principal, model_id, version, body.key, body.value)
    return Envelope(data=TagRead(key=tag.key, value=tag.value))


@router.delete(
    "/models/{model_id}/versions/{version}/tags",
    status_code=204,
    responses=error_responses(401, 403, 404, 422, 429),
)
def remove_version_tag(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: SessionDep,
    key: KeyQuery = None,
    body: TagKeyBody | None = None,
) -> None:
    """Remove a version's tag named by `key` in the body, or by the query's `tag`."""
    labels.delete_version_tag(session, principal, model_id, version, _one_key(key, body))


# --- model cards: the card routes of a version, under /model-cards ------------------------
CARD = "/model-cards/{model_id}/versions/{version}"


@router.get(
    CARD,
    response_model=Envelope[schemas.ModelCard],
    responses=CARD_READ_RESPONSES,
)
def read_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: SessionDep,
    format_: Annotated[
        Literal["json", "markdown"],
        Query(alias="format", description="`markdown` answers a downloadable text/markdown document."),
    ] = "json",
) -> Envelope[schemas.ModelCard] | Response:
    """A version's model card, as `GET /models/{model}/versions/{version}/card`."""
    return routes.get_model_card(model_id, version, principal, session, format_)


@router.post(
    f"{CARD}/generate",
    response_class=Response,
    responses=CARD_PDF_RESPONSES,
)
def render_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    heavy: HeavyDep,
    body: schemas.ModelCardRender | None = None,
) -> Response:
    """The card as a PDF, with `overrides` for this document only."""
    return routes.generate_model_card(model_id, version, principal, session, heavy, body)


@router.post(
    f"{CARD}/validate",
    response_model=Envelope[schemas.ModelCardValidation],
    responses=CARD_ERRORS,
)
def check_model_card(
    model_id: ModelId,
    version: VersionPath,
    principal: CurrentPrincipal,
    session: ReadSessionDep,
    body: schemas.ModelCardRender | None = None,
) -> Envelope[schemas.ModelCardValidation]:
    """Missing and invalid sections of the card (with any overrides)."""
    return routes.validate_model_card(model_id, version, principal, session, body)
