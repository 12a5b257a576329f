from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from maestro.api.deps import CurrentPrincipal, SessionDep
from maestro.api.envelope import Envelope, Page
from maestro.api.errors import error_responses
from maestro.api.pagination import PageParamsDep, paginate
from maestro.api.params import ModelId, ProjectId
from maestro.registry import service
from maestro.registry.models import ModelType, RegisteredModel
from maestro.registry.schemas import (
    TAG_KEY_PATTERN,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    TagKey,
    TagRead,
    TagSet,
)

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
    project = service.get_project_for_models(session, principal, project_id, "read")
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
def delete_model(model_id: ModelId, principal: CurrentPrincipal, session: SessionDep) -> None:
    """Delete a model and all its versions."""
    service.delete_model(session, principal, model_id)


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
