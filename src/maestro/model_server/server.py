"""The standalone model server (``maestro model-server``): a separate app, on its own
port, that loads models into memory and answers predictions over three protocols:

- Maestro's own routes under ``/api/v1`` (``server_routes.py``), the serving spec's;
- the Open Inference Protocol under ``/v2`` (KServe, Triton and MLServer clients);
- MLflow's scoring protocol (``/invocations``, ``/ping``, ``/health``, ``/version``),
  so callers of ``mlflow models serve`` switch by changing the URL (and sending a key).

``ModelServer`` holds what every request shares: the served models by name (each a
``Runtime`` from the model cache), the authenticator, rate limits, metrics, the thread
pool that runs model calls and the asynchronous jobs. Nothing on the prediction path
touches the database: credentials and decisions are remembered (``server_auth.py``).

Served names live in namespaces, so that no organisation can take a name from another
or answer another's callers:

- the operator's names (operator keys, ``MAESTRO_MODEL_SERVER_PRELOAD``, the models
  directory), which every caller addresses; platform users cannot load or unload them,
  nor load a model of their own under one of them;
- one set of names per organisation: a platform principal loads its organisation's
  registry models under its organisation's names, and resolves a name among the
  operator's names first, then its organisation's. The same name in two organisations
  is two different models.

The default model (``/invocations``, ``/api/v1/predict`` without a name) is always one of
the operator's: ``MAESTRO_MODEL_SERVER_DEFAULT_MODEL``, else the first the operator loaded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from limits import parse

from maestro.api.ratelimit import RateLimiter
from maestro.config import Settings
from maestro.db import utc_timestamp
from maestro.errors import (
    Conflict,
    MaestroError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ValidationFailed,
)
from maestro.model_server.auth import Authenticator, Caller, platform_unavailable
from maestro.model_server.jobs import AsyncJobs
from maestro.model_server.metrics import ServerMetrics
from maestro.model_server.sources import (
    PreloadEntry,
    Source,
    check_served_name,
    file_source,
    parse_preload,
    read_model_file,
    registry_source,
    resolve_model_file,
    untrusted_file,
    version_snapshot,
)
from maestro.runtimes.base import Runtime
from maestro.runtimes.cache import ModelCache
from maestro.runtimes.class_labels import ClassLabels
from maestro.runtimes.errors import ModelLoadError, ServingError
from maestro.runtimes.isolation import IsolatedRuntime, LoadCheck
from maestro.runtimes.loading import load_checked_file, load_checked_version
from maestro.runtimes.onnx import OnnxRuntime
from maestro.runtimes.parallel import RowSplitter
from maestro.server import freeze_startup_objects

if TYPE_CHECKING:
    from maestro.db import Database
    from maestro.identity.rbac import Action
    from maestro.storage import ArtifactStore

logger = logging.getLogger("maestro.serving")
T = TypeVar("T")

RATE_GROUPS = ("predict", "batch", "management")
# A body this small holds a few rows: an ONNX model answers it in microseconds, less
# than handing it to a prediction thread and back costs, so it runs on the event loop.
INLINE_MAX_BODY = 4096


def guarded(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` with any unexpected exception turned into a 500 in the error shape.

    An exception that reaches an asyncio future from a worker thread must be one the
    future accepts: a ``StopIteration`` (a stray ``next()`` in a parser or a model
    library) cannot be set on a future, so the awaiting request would wait forever."""
    try:
        return call(*args)
    except MaestroError:
        raise
    except Exception as exc:
        logger.exception("a prediction call failed unexpectedly")
        raise ServingError(
            "internal", f"The model server could not answer this request ({type(exc).__name__})", status=500
        ) from None


def cache_name(namespace: str | None, name: str) -> str:
    """The name a served model holds in the model cache (and the logs): the operator's
    as they are, an organisation's behind its id (served names never hold a slash)."""
    return name if namespace is None else f"{namespace}/{name}"


@dataclass
class ServedModel:
    """A loaded model under the name clients address it by."""

    name: str
    source: Source
    runtime: Runtime
    metrics: ServerMetrics
    splitter: RowSplitter | None = None
    # The organisation whose callers address the model by this name; None: the operator's.
    namespace: str | None = None
    loaded_at: str = field(default_factory=utc_timestamp)
    # What answers call the classes (``prediction_label``), as platform inference does.
    labels: ClassLabels | None = None

    def __post_init__(self) -> None:
        self.labels = ClassLabels.of(self.runtime.classes, self.source.model_schema)
        labels = (self.namespace or "", self.name, self.version)
        self._rows_ok = self.metrics.predictions.labels(*labels, "success")
        self._rows_failed = self.metrics.predictions.labels(*labels, "error")
        self._seconds = self.metrics.prediction_seconds.labels(*labels)
        self._requests: dict[str, Any] = {}
        self.inline = isinstance(self.runtime, OnnxRuntime)  # small predictions may run on the loop

    @property
    def version(self) -> str:
        return self.source.version

    @property
    def key(self) -> str:
        return self.source.key

    def predict(self, matrix: np.ndarray, *, probabilities: bool, protocol: str) -> Prediction:
        """Labels (and probabilities when asked), timed and counted."""
        runtime = self.runtime
        splitter = self.splitter
        started = time.perf_counter()
        try:
            if probabilities:
                if not runtime.supports_proba:
                    runtime.predict_proba(matrix)  # raises the runtime's own clear error
                if splitter is not None:
                    labels, proba = splitter.run(runtime, runtime.predict_with_proba, matrix)
                else:
                    labels, proba = runtime.predict_with_proba(matrix)
            elif splitter is not None:
                labels, proba = splitter.run(runtime, runtime.predict, matrix), None
            else:
                labels, proba = runtime.predict(matrix), None
        except ServingError:
            self._rows_failed.inc(len(matrix))
            raise
        seconds = time.perf_counter() - started
        self._seconds.observe(seconds)
        self._rows_ok.inc(len(matrix))
        counter = self._requests.get(protocol)
        if counter is None:
            counter = self._requests[protocol] = self.metrics.prediction_requests.labels(
                self.namespace or "", self.name, self.version, protocol
            )
        counter.inc()
        return Prediction(np.asarray(labels), proba, seconds)

    def label_texts(self, values: list[Any]) -> list[str | None]:
        labels = self.labels
        if labels is None:
            return [None] * len(values)
        return list(labels.texts(values))

    def describe(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "name": self.name,
            "version": self.version,
            "namespace": self.namespace,
            "source": {"type": self.source.kind, **self.source.details},
            "organization_id": self.source.organization_id,
            "project_id": self.source.project_id,
            "loaded_at": self.loaded_at,
            "format": str(runtime.format),
            "serving": runtime.serving,
            "task": "classification" if runtime.classes is not None else "regression",
            "classes": runtime.classes,
            "class_labels": list(self.labels.names) if self.labels else None,
            "supports_probabilities": runtime.supports_proba,
            "n_features": runtime.n_features,
            "input_schema": runtime.input_schema.to_dict(),
            "conversion": runtime.conversion,
            "memory_bytes": runtime.memory_bytes,
            "load_seconds": round(runtime.load_seconds, 4),
        }


@dataclass
class Prediction:
    labels: np.ndarray
    probabilities: np.ndarray | None
    seconds: float


@dataclass
class LoadRequest:
    """What ``POST /api/v1/models/load`` (or a preload entry) asks for."""

    served_name: str | None = None
    model_path: str | None = None
    model_ref: str | None = None
    project_id: str | None = None
    version: str | None = None
    alias: str | None = None


@dataclass
class PreloadStatus:
    status: str = "pending"  # pending, loading, ready, failed
    total: int = 0
    loaded: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


class ModelServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.metrics = ServerMetrics()
        self._database: Database | None = None
        self._store: ArtifactStore | None = None
        self._resources_lock = threading.Lock()
        self.auth = Authenticator(settings, self.database)
        self.limiter = RateLimiter(settings)
        self.limits = {
            "predict": parse(settings.model_server_rate_limit_predict),
            "batch": parse(settings.model_server_rate_limit_batch),
            "management": parse(settings.model_server_rate_limit_management),
        }
        self.cache = ModelCache(
            self._load_key,
            max_models=settings.serving_cache_max_models,
            max_bytes=settings.serving_cache_max_bytes,
            failure_ttl=0,  # every load request tries again: a fixed file or a new trust must count
        )
        self.models: dict[str, ServedModel] = {}  # the operator's names: every caller's
        self.organization_models: dict[str, dict[str, ServedModel]] = {}  # by organisation
        self._manage = threading.Lock()
        self._pending_files: dict[str, bytes] = {}
        self.executor = ThreadPoolExecutor(settings.model_server_threads, thread_name_prefix="predict")
        self.splitter = RowSplitter()
        self.jobs = AsyncJobs(
            directory=settings.data_dir / "model-server" / "async-results",
            queue_size=settings.model_server_async_queue_size,
            keep_seconds=settings.model_server_async_result_seconds,
            max_bytes=settings.model_server_async_result_max_bytes,
            quota_bytes=settings.model_server_async_result_quota_bytes,
        )
        self.preload = PreloadStatus(total=len(settings.model_server_preload))
        self.preload_entries = [parse_preload(text) for text in settings.model_server_preload]
        self.preload_done = threading.Event()  # set once preloading has ended, however it ended

    # --- shared resources, created on first use (a server may run without the platform) -----
    def database(self) -> Database:
        with self._resources_lock:
            if self._database is None:
                from maestro.db import Database

                self._database = Database(self.settings, create=False)  # the platform's: never created here
            return self._database

    def store(self) -> ArtifactStore:
        with self._resources_lock:
            if self._store is None:
                from maestro.storage import ArtifactStore

                self._store = ArtifactStore(self.settings.resolved_storage_url)
            return self._store

    def close(self) -> None:
        self.jobs.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.splitter.close()
        self.cache.close()  # model processes end with the server
        with self._resources_lock:
            if self._database is not None:
                self._database.dispose()

    # --- running work off the event loop -----------------------------------------------------
    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """Run ``call`` on the prediction threads: model calls never block the event loop,
        and whatever the call raises ends as an answer (``guarded``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(guarded, call, *args))

    def runs_inline(self, caller: Caller, name: str | None, size: int) -> bool:
        """Whether a prediction of ``size`` body bytes for the model ``name`` addresses
        (None: the default model) may run on the event loop: an ONNX model, a small
        body, and an access decision already known (nothing asks the database)."""
        if size > INLINE_MAX_BODY:
            return False
        model = self._resolve(caller, name)
        if model is None or not model.inline:
            return False
        return self.auth.decided(
            caller,
            "read",
            kind="inference",
            organization_id=model.source.organization_id,
            project_id=model.source.project_id,
        )

    def rate_limit(self, group: str, caller: Caller) -> dict[str, str]:
        if not self.limiter.enabled:
            return {}
        return self.limiter.hit(self.limits[group], "model-server", group, caller.id)

    # --- which model answers ------------------------------------------------------------------
    @property
    def default_name(self) -> str | None:
        """The operator's choice: ``MAESTRO_MODEL_SERVER_DEFAULT_MODEL`` when it is loaded,
        else the first model loaded under the operator's names; never an organisation's."""
        configured = self.settings.model_server_default_model
        if configured and configured in self.models:
            return configured
        return next(iter(self.models), None)

    def _names(self, caller: Caller) -> dict[str, ServedModel]:
        """The organisation names the caller addresses besides the operator's."""
        organization = caller.organization_id
        return self.organization_models.get(organization, {}) if organization is not None else {}

    def _resolve(self, caller: Caller, name: str | None) -> ServedModel | None:
        """The operator's model of that name, else the caller's organisation's; None or
        "default" (when no model has that name): the default model."""
        model = None
        if name is not None:
            model = self.models.get(name) or self._names(caller).get(name)
        if model is None and name in (None, "default"):
            default = self.default_name
            model = self.models.get(default) if default else None
        return model

    def served(self, caller: Caller, name: str | None) -> ServedModel:
        """The model ``name`` addresses (None or "default": the default model), once the
        caller may predict with it; an invisible model answers like a missing one."""
        model = self._resolve(caller, name)
        if model is None and name in (None, "default"):
            raise NotFound("This server has no default model; name the model to use")
        if model is None or not self.may_read(caller, model):
            raise NotFound(f"No model named {name!r} is loaded on this server")
        return model

    def may_read(self, caller: Caller, model: ServedModel) -> bool:
        return self.auth.may(
            caller,
            "read",
            kind="inference",
            organization_id=model.source.organization_id,
            project_id=model.source.project_id,
        )

    def all_models(self) -> list[ServedModel]:
        every = list(self.models.values())
        for names in list(self.organization_models.values()):
            every.extend(list(names.values()))
        return every

    def visible_models(self, caller: Caller) -> list[ServedModel]:
        """What the caller may see: the operator's models and its organisation's that it
        may predict with; an operator without X-Organization-ID sees every model."""
        if caller.is_operator and caller.organization_id is None:
            return self.all_models()
        candidates = [*list(self.models.values()), *list(self._names(caller).values())]
        return [model for model in candidates if self.may_read(caller, model)]

    def default_for(self, caller: Caller) -> str | None:
        """The default model's name, when the caller may see it."""
        default = self.default_name
        model = self.models.get(default) if default else None
        return default if model is not None and self.may_read(caller, model) else None

    # --- loading and unloading (blocking: run on a worker thread) -----------------------------
    def _load_key(self, key: str) -> Runtime:
        """Every model is checked in an isolated process before it loads here (a
        registry version's stored check is reused while current); XGBoost and LightGBM
        are served from an isolated process (``serving.isolation``)."""
        threads = self.settings.model_server_model_threads
        if key.startswith("file:"):
            data = self._pending_files.pop(key, None)
            if data is None:
                raise ModelLoadError("file_missing", "The model file must be loaded again by name")
            try:
                return load_checked_file(
                    data,
                    format=None,
                    trusted=self.settings.model_server_trust_models_dir,
                    model_schema=None,
                    settings=self.settings,
                    threads=threads,
                )
            except ModelLoadError as exc:
                raise untrusted_file(exc) from None
        with self.database().session(write=False) as session:
            version = version_snapshot(session, key)
        return load_checked_version(
            version,
            self.store(),
            self.settings,
            threads=threads,
            record=functools.partial(self._record_check, key),
        )

    def _record_check(self, version_id: str, check: LoadCheck) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from maestro.registry.service import record_load_check

        try:
            with self.database().session() as session:
                record_load_check(session, version_id, check.to_dict())
        except SQLAlchemyError:
            logger.exception("could not record the load check of %s", version_id)

    def _revive(self, key: str) -> None:
        """A model whose process crashed too often answers again once loaded again."""
        loaded = self.cache.peek(key)
        if isinstance(loaded, IsolatedRuntime) and loaded.failure is not None:
            loaded.revive()

    def _source(self, caller: Caller, request: LoadRequest) -> Source:
        if request.model_path is not None:
            if not caller.is_operator:
                raise PermissionDenied(
                    "Files of the models directory are loaded with an operator key of this model server"
                )
            path, relative = resolve_model_file(self.settings.model_server_models_dir, request.model_path)
            data = read_model_file(path, self.settings.max_model_bytes)
            source = file_source(relative, data)
            self._pending_files[source.key] = data
            return source
        if not request.model_ref:
            raise ValidationFailed(
                "Name the model to load: model_path (a file of the models directory), or a registry "
                "model by model_id or model_name, with version or alias",
                details=[("model_path", "or model_id / model_name")],
            )
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.database().session(write=False) as session:
                return registry_source(
                    session,
                    caller,
                    model_ref=request.model_ref,
                    project_id=request.project_id,
                    version=request.version,
                    alias=request.alias,
                )
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(platform_unavailable(self.database(), "to find the model")) from exc

    def _namespace_for(self, caller: Caller, source: Source, name: str) -> str | None:
        """Where a load puts its name: an operator's, among the operator's names (or the
        organisation it named); a platform principal's, among its organisation's names,
        for a model of that organisation and a name the operator does not use."""
        if caller.is_operator:
            return caller.organization_id
        organization = caller.organization_id
        if organization is None:
            raise PermissionDenied(
                "Choose the organisation to load the model for (X-Organization-ID, or your current one)"
            )
        if source.organization_id != organization:
            raise PermissionDenied(
                "This model belongs to another organisation than the one this request acts in; "
                "send X-Organization-ID with the model's organisation"
            )
        if name in self.models:
            raise Conflict(
                f"The name {name!r} is one of this server's own (loaded by its operator); choose another",
                details=[("model_name", "used by the operator of this server")],
            )
        return organization

    def load(self, caller: Caller, request: LoadRequest) -> tuple[ServedModel, ServedModel | None]:
        """Load (and warm) a model and serve it under its name in the caller's
        namespace; a model already served under that name there keeps answering until the
        new one is ready, then is replaced."""
        started = time.perf_counter()
        kind = "file" if request.model_path is not None else "registry"
        try:
            source = self._source(caller, request)
            name = check_served_name(request.served_name or source.suggested_name)
            try:
                namespace = self._namespace_for(caller, source, name)
                self._revive(source.key)
                runtime = self.cache.prepare(source.key)
            finally:
                self._pending_files.pop(source.key, None)
            with self._manage:
                try:
                    namespace = self._namespace_for(caller, source, name)  # the operator may have taken it
                except MaestroError:
                    self.cache.discard(source.key)
                    raise
                names = self.models if namespace is None else self.organization_models.get(namespace, {})
                previous = names.get(name)
                if previous is not None and not caller.is_operator and not self._may_manage(caller, previous):
                    self.cache.discard(source.key)
                    raise PermissionDenied(f"You may not replace the model served as {name!r}")
                self.cache.swap(cache_name(namespace, name), source.key)
                served = ServedModel(name, source, runtime, self.metrics, self.splitter, namespace=namespace)
                if namespace is not None:
                    names = self.organization_models.setdefault(namespace, names)
                names[name] = served
                if previous is not None and previous.key != source.key:
                    self._evict_unused(previous.key)
                self._gauge()
        except Exception:
            self.metrics.loads.labels(kind, "error").inc()
            raise
        self.metrics.loads.labels(kind, "success").inc()
        self.metrics.load_seconds.observe(time.perf_counter() - started)
        served_as = cache_name(namespace, name)
        logger.info(
            "serving %s version %s as %s (%s)", source.key, source.version, served_as, runtime.serving
        )
        return served, previous

    def _may_manage(self, caller: Caller, model: ServedModel, action: Action = "write") -> bool:
        if model.source.kind == "file":
            return caller.is_operator
        return self.auth.may(
            caller,
            action,
            kind="deployments",
            organization_id=model.source.organization_id,
            project_id=model.source.project_id,
        )

    def unload(self, caller: Caller, name: str) -> ServedModel:
        """Stop serving ``name`` in the caller's namespace: an operator's (or the
        organisation it named), a platform principal's organisation's."""
        with self._manage:
            namespace = caller.organization_id
            if namespace is None and not caller.is_operator:
                names: dict[str, ServedModel] = {}
            else:
                names = self.models if namespace is None else self.organization_models.get(namespace, {})
            model = names.get(name)
            if model is None or not self.may_read(caller, model):
                operators = self.models.get(name) if not caller.is_operator else None
                if operators is not None and self.may_read(caller, operators):
                    raise PermissionDenied(
                        f"The model served as {name!r} is this server's own; an operator key unloads it"
                    )
                raise NotFound(f"No model named {name!r} is loaded on this server")
            if not self._may_manage(caller, model, "delete"):
                raise PermissionDenied(
                    "Files of the models directory are unloaded with an operator key of this model server"
                    if model.source.kind == "file"
                    else "You may not unload this model (it needs permission to delete deployments)"
                )
            del names[name]
            if namespace is not None and not names:
                self.organization_models.pop(namespace, None)
            self.cache.release(cache_name(namespace, name))
            self._evict_unused(model.key)
            self._gauge()
        logger.info("stopped serving %s", cache_name(namespace, name))
        return model

    def _evict_unused(self, key: str) -> None:
        if all(model.key != key for model in self.all_models()):
            self.cache.evict(key)

    def _gauge(self) -> None:
        every = self.all_models()
        self.metrics.models_loaded.set(len(every))
        self.metrics.model_memory.set(sum(model.runtime.memory_bytes for model in every))

    # --- preloading ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.preload.status == "ready"

    def run_preload(self) -> None:
        """Load every ``MAESTRO_MODEL_SERVER_PRELOAD`` entry, as the operator, in order."""
        try:
            self._preload()
        finally:
            self.preload_done.set()

    def _preload(self) -> None:
        self.preload.status = "loading"
        operator = Caller("operator", "operator_preload")
        for entry in self.preload_entries:
            try:
                self.load(operator, _preload_request(entry))
                self.preload.loaded += 1
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                logger.error("could not preload %s: %s", entry.text, message)
                self.preload.errors.append({"entry": entry.text, "message": message})
        self.preload.status = "failed" if self.preload.errors else "ready"
        if self.preload_entries:
            freeze_startup_objects()  # the loaded models live as long as the process


def _preload_request(entry: PreloadEntry) -> LoadRequest:
    return LoadRequest(
        served_name=entry.served_name,
        model_path=entry.model_path,
        model_ref=entry.model_ref,
        version=entry.version,
        alias=entry.alias,
    )
