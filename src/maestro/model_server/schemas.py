"""The model server's documented request and response shapes, and the OpenAPI document
that shows them (bodies are parsed by hand for speed, so FastAPI cannot infer them)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

# --- documented shapes ---------------------------------------------------------------------------
JSON = "application/json"
Row = list[float] | dict[str, float | int | bool]


class PredictRequest(BaseModel):
    features: Row = Field(description="One row: numbers in the model's feature order, or named features.")
    model_name: str | None = Field(
        None, description='A loaded model; omitted or "default": the default model.'
    )
    return_probabilities: bool = False


class PredictResponse(BaseModel):
    prediction: Any
    prediction_label: str | None = Field(description="The class as text (null for a regressor).")
    probabilities: list[float] | None = Field(description="One per class, in `classes` order, when asked.")
    classes: list[Any] | None
    model_name: str
    model_version: str
    prediction_time: float = Field(description="Seconds the model took.")
    timestamp: str


class BatchPredictRequest(BaseModel):
    features: list[Row] = Field(description="Rows, at most MAESTRO_MODEL_SERVER_MAX_BATCH_ROWS (1000).")
    model_name: str | None = None
    return_probabilities: bool = False


class RowPrediction(BaseModel):
    prediction: Any
    prediction_label: str | None
    confidence: float | None = Field(description="The highest class probability (classifiers).")
    probabilities: list[float] | None = None


class BatchPredictResponse(BaseModel):
    predictions: list[RowPrediction]
    count: int
    classes: list[Any] | None
    model_name: str
    model_version: str
    prediction_time: float
    timestamp: str


class AsyncPredictRequest(BatchPredictRequest):
    features: list[Row] = Field(description="Rows, at most MAESTRO_MODEL_SERVER_ASYNC_MAX_ROWS (100,000).")


class AsyncJobRead(BaseModel):
    job_id: str
    status: str = Field(description="queued, running, completed or failed")
    progress: float
    model_name: str
    rows: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: BatchPredictResponse | None = None
    error: dict[str, Any] | None = None
    status_url: str | None = None


class ModelLoad(BaseModel):
    model_name: str | None = Field(
        None,
        description="Name to serve the model under; for a registry load without model_id, also the "
        "registry model's name.",
    )
    model_path: str | None = Field(None, description="A file of the models directory, relative to it.")
    model_id: str | None = Field(None, description="A registry model's id (model_…).")
    registry_model: str | None = Field(
        None, description="A registry model's name, when it differs from model_name."
    )
    project_id: str | None = Field(None, description="The project, when the registry name is not unique.")
    version: str | None = Field(None, description="The version to load; neither this nor alias: the latest.")
    alias: str | None = None
    model_type: str | None = Field(
        None, description="Accepted and ignored: the format is recognised from the file."
    )


class ModelRead(BaseModel):
    name: str
    version: str
    namespace: str | None = Field(
        description="The organisation whose callers address the model by this name; null: one of the "
        "server's own (loaded by its operator), which every caller addresses."
    )
    default: bool
    source: dict[str, Any]
    organization_id: str | None
    project_id: str | None
    loaded_at: str
    format: str
    serving: str
    task: str
    classes: list[Any] | None
    class_labels: list[str] | None
    supports_probabilities: bool
    n_features: int
    input_schema: dict[str, Any]
    conversion: dict[str, str] | None
    memory_bytes: int
    load_seconds: float


class ModelLoaded(ModelRead):
    replaced_version: str | None = Field(description="The version served under this name before, if any.")


class ModelList(BaseModel):
    models: list[ModelRead]
    default_model: str | None
    count: int


class HealthRead(BaseModel):
    status: str = Field(description="healthy, loading or unhealthy")
    ready: bool
    timestamp: str
    checks: dict[str, Any]
    version: str


class StatusRead(BaseModel):
    status: str
    version: str
    uptime_seconds: float
    models: list[dict[str, Any]] = Field(description="The models the caller may see.")
    default_model: str | None
    preload: dict[str, Any] | None = Field(description="Operators only.")
    cache: dict[str, Any] | None = Field(description="Operators only.")
    async_jobs: dict[str, int] = Field(description="Operators: every job; others: their own.")
    memory: dict[str, Any] | None = Field(description="Operators only.")
    settings: dict[str, Any] | None = Field(description="Operators only.")


DOCUMENTED_BODIES: dict[str, type[BaseModel]] = {}
_REF = "#/components/schemas/{model}"


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The request body in the OpenAPI document, for a route that parses it itself
    (``document_bodies`` adds the schema to the components)."""
    DOCUMENTED_BODIES[model.__name__] = model
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": _REF.format(model=model.__name__)}}},
        }
    }


def document_bodies(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in DOCUMENTED_BODIES.items():
            body = model.model_json_schema(ref_template=_REF)
            components.update(body.pop("$defs", {}))
            components[name] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # how FastAPI documents customising it
