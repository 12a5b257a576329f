"""What one platform process holds to serve deployments without asking the database on
every prediction.

- **The directory**: deployment name (within an organisation) → the deployment, its
  version and project. Filled from the database on first use; an entry is dropped when
  a deployment changes in this process, when the generation counter shows a change by
  another process (checked every ``MAESTRO_DEPLOYMENT_CHECK_SECONDS`` by a thread of its
  own), and at the latest a minute after it was read.
- **Following another process's deploys**: when the generation counter moves, the new
  versions of the deployments this process has loaded are loaded and warmed here before
  their names move and the directory is dropped, so traffic here too moves only to a
  warm model. A version that fails to load here is logged, and the deployment keeps
  serving the old one until its directory entry is read again (a minute at most).
- **The model cache** (``ModelCache``), where each deployment's id is a live name
  pointing at the version it serves. A deploy prepares (loads and warms) the new version
  before the name moves, so no request fails during it. Versions load through
  ``loading.load_checked_version``: checked in an isolated process first (the result
  is kept on the version), XGBoost and LightGBM served from one. When such a process
  crashes, the deployments it serves get a log line; after repeated crashes they are
  marked failed (answering 503 until deployed again).
- **The recorder** of served requests, flushed by the background thread.
- **Warming at start**: once the server starts, a thread loads the versions of the active
  deployments (as many as the cache holds), so the first prediction after a restart finds
  its model loaded; readiness answers 503 until it is done (``warming``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from maestro.deployments.metrics import PlatformMetrics
from maestro.deployments.models import Deployment, DeploymentStatus, LogLevel, ServingGeneration
from maestro.deployments.predictions import PredictionRecorder
from maestro.identity.credential_cache import ShortMemory
from maestro.registry import service as registry
from maestro.registry.models import ModelVersion, RegisteredModel
from maestro.runtimes.base import Runtime, brief
from maestro.runtimes.cache import ModelCache
from maestro.runtimes.errors import ModelLoadError
from maestro.runtimes.isolation import IsolatedRuntime, LoadCheck
from maestro.runtimes.loading import load_checked_version
from maestro.runtimes.parallel import RowSplitter
from maestro.server import freeze_startup_objects, switch_threads_often

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database
    from maestro.deployments.schemas import HealthStatus
    from maestro.storage import ArtifactStore

logger = logging.getLogger("maestro.serving")

ENTRY_MAX_AGE = 60.0  # seconds before a directory entry is read again regardless
LISTING_WAIT = 3.0  # seconds readiness waits for the deployments to warm to be listed
GENERATION_ROW = 1
# (session, version id, deployment ids, message) -> the deployments marked failed
FailServing = Callable[[Session, str, list[str], str], list[Deployment]]


@dataclass(frozen=True, slots=True)
class LiveDeployment:
    """A deployment as the directory knows it."""

    id: str
    name: str
    organization_id: str
    project_id: str
    status: str
    version_id: str | None
    version: str | None
    model_id: str | None
    model_name: str | None
    read_at: float


class ServingState:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        store: ArtifactStore,
        metrics: PlatformMetrics,
        fail_serving: FailServing,
    ) -> None:
        """``fail_serving`` marks failed the deployments whose model crashed too often
        (``service.fail_serving``: the state is below the service that writes it)."""
        self.fail_serving = fail_serving
        self.settings = settings
        self.database = database
        self.store = store
        self.metrics = metrics
        self.cache = ModelCache(
            self._load,
            max_models=settings.serving_cache_max_models,
            max_bytes=settings.serving_cache_max_bytes,
        )
        self.recorder = PredictionRecorder(database, settings, metrics)
        self.splitter = RowSplitter()  # large batches of slow ONNX models over the cores
        # Inference access decisions (principal, project) → allowed, as briefly as credentials.
        self.decisions = ShortMemory(settings.auth_cache_seconds)
        metrics.watch_cache(lambda: (len(self.cache), self.cache.total_bytes))
        self._lock = threading.Lock()
        self._directory: dict[tuple[str, str], tuple[LiveDeployment | None, float]] = {}
        self._failures: dict[str, str] = {}  # version id → why it last failed to load here
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._checking = threading.Lock()  # one generation check at a time
        self._warmer: threading.Thread | None = None
        self.warm = threading.Event()  # set once the active deployments are loaded (or failed to)
        self.listed = threading.Event()  # set once the deployments to warm are known
        self._warming = (0, 0)  # (deployments warmed, to warm)

    # --- the directory ---------------------------------------------------------------------------
    def known(self, organization_id: str, name: str) -> tuple[bool, LiveDeployment | None]:
        """(found in memory, the deployment or None when known to be missing)."""
        found = self._directory.get((organization_id, name))
        if found is None:
            return False, None
        live, read_at = found
        now = time.monotonic()
        if live is None:
            return (True, None) if now - read_at <= self.settings.deployment_check_seconds else (False, None)
        if now - read_at <= ENTRY_MAX_AGE:
            return True, live
        with self._lock:  # one caller reads it again; the others keep it meanwhile
            if self._directory.get((organization_id, name)) is not found:
                return True, live
            self._directory[(organization_id, name)] = (live, now)
        return False, None

    def resolve(self, organization_id: str, name: str) -> LiveDeployment | None:
        """Read the deployment from the database (blocking) and remember it."""
        with self.database.session(write=False) as session:
            row = session.execute(
                select(Deployment, ModelVersion.version, RegisteredModel.name)
                .outerjoin(ModelVersion, ModelVersion.id == Deployment.model_version_id)
                .outerjoin(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
                .where(Deployment.organization_id == organization_id, Deployment.name == name)
            ).first()
        now = time.monotonic()
        live = None
        if row is not None:
            deployment: Deployment = row.Deployment
            live = LiveDeployment(
                id=deployment.id,
                name=deployment.name,
                organization_id=deployment.organization_id,
                project_id=deployment.project_id,
                status=deployment.status,
                version_id=deployment.model_version_id,
                version=row.version,
                model_id=deployment.model_id,
                model_name=row.name,
                read_at=now,
            )
        with self._lock:
            self._directory[(organization_id, name)] = (live, now)
        return live

    def forget(self, organization_id: str, *names: str) -> None:
        with self._lock:
            for name in names:
                self._directory.pop((organization_id, name), None)

    def forget_all(self, *, but: Collection[str] = ()) -> None:
        """Drop every directory entry except those of the deployments ``but`` names."""
        with self._lock:
            for key, (live, _) in list(self._directory.items()):
                if live is None or live.id not in but:
                    del self._directory[key]

    # --- models ------------------------------------------------------------------------------------
    def _load(self, version_id: str) -> Runtime:
        with self.database.session(write=False) as session:
            row = session.get(ModelVersion, version_id)
            if row is not None:
                session.expunge(row)
        if row is None:
            raise ModelLoadError("file_missing", "The model version no longer exists")
        try:
            runtime = load_checked_version(
                row,
                self.store,
                self.settings,
                record=partial(self._record_check, version_id),
                on_crash=partial(self._model_crashed, version_id),
            )
        except ModelLoadError as exc:
            self._failures[version_id] = exc.reason
            self.metrics.model_loads.labels("failed").inc()
            raise
        self._failures.pop(version_id, None)
        self.metrics.model_loads.labels("loaded").inc()
        return runtime

    def _record_check(self, version_id: str, check: LoadCheck) -> None:
        """Keep a load check made now on the version, so the next load need not repeat it."""
        try:
            with self.database.session() as session:
                registry.record_load_check(session, version_id, check.to_dict())
        except SQLAlchemyError:
            logger.exception("could not record the load check of %s", version_id)

    def _model_crashed(self, version_id: str, runtime: IsolatedRuntime, message: str, failed: bool) -> None:
        """A model process crashed (the request that caused it failed): say so in the log
        of each deployment serving it here, and once it has crashed too often, mark them
        failed."""
        deployment_ids = [name for name, key in self.cache.names().items() if key == version_id]
        for deployment_id in deployment_ids:
            self.recorder.event(
                deployment_id,
                LogLevel.error,
                "model_crashed",
                f"The model's process {message} while answering a request; that request failed"
                + (" and the deployment stopped serving" if failed else "; a new process serves the next"),
                version_id=version_id,
                crashes=runtime.crash_count,
            )
        if failed and deployment_ids:
            self._mark_failed(version_id, deployment_ids, runtime.failure or "The model's process crashed")

    def _mark_failed(self, version_id: str, deployment_ids: list[str], message: str) -> None:
        try:
            with self.database.session() as session:
                rows = self.fail_serving(session, version_id, deployment_ids, message)
                names = [(deployment.organization_id, deployment.name) for deployment in rows]
        except SQLAlchemyError:
            logger.exception("could not mark the deployments of %s failed", version_id)
            return
        for organization_id, name in names:
            self.forget(organization_id, name)
        logger.error("deployments %s stopped serving version %s: %s", deployment_ids, version_id, message)

    def prepare(self, version_id: str) -> Runtime:
        """Load and warm a version for a deploy (blocking), afresh: the version's trust
        may have changed since a failure was remembered, and a model process that
        crashed too often is given a new start. Raises ``ModelLoadError``."""
        loaded = self.cache.peek(version_id)
        if isinstance(loaded, IsolatedRuntime) and loaded.failure is not None:
            loaded.revive()
        self.cache.invalidate(version_id)
        return self.cache.prepare(version_id)

    def discard(self, version_id: str) -> None:
        self.cache.discard(version_id)

    def serve(self, deployment_id: str, version_id: str | None) -> None:
        """Point the deployment at a prepared version (or at nothing: stop serving it,
        ending its model's isolated process unless another deployment uses it)."""
        if version_id is None:
            released = self.cache.release(deployment_id)
            if released is not None and isinstance(self.cache.peek(released), IsolatedRuntime):
                self.cache.evict(released)  # refused while another name serves it
        else:
            self.cache.swap(deployment_id, version_id)

    def ready_runtime(self, live: LiveDeployment) -> Runtime | None:
        """The runtime answering for ``live`` if it is loaded (no waiting), else None."""
        version_id = live.version_id
        if version_id is not None and self.cache.key_for(live.id) == version_id and version_id in self.cache:
            return self.cache.runtime_for(live.id)
        return None

    def runtime(self, live: LiveDeployment) -> tuple[LiveDeployment, Runtime]:
        """The deployment and its loaded runtime (blocking: may load). When this process
        serves a different version than ``live`` names, the database decides which is
        current, so a stale directory entry never moves a deployment backwards."""
        current = self.cache.key_for(live.id)
        if current != live.version_id:
            fresh = self.resolve(live.organization_id, live.name)
            if fresh is None or fresh.id != live.id:
                raise ModelLoadError("file_missing", "The deployment changed while this request waited")
            live = fresh
        if live.version_id is None:
            raise ModelLoadError("file_missing", "The deployment's model version was deleted")
        try:
            if self.cache.key_for(live.id) != live.version_id:
                self.cache.swap(live.id, live.version_id)
            return live, self.cache.runtime_for(live.id)
        except ModelLoadError as exc:
            self.recorder.event(
                live.id,
                LogLevel.error,
                "load_failed",
                f"Version {live.version} could not be loaded in this process: {exc.message}",
                version_id=live.version_id,
                reason=exc.reason,
            )
            raise

    def health(self, version_id: str | None, status: str) -> HealthStatus:
        """As this process sees it, without loading anything."""
        if status == DeploymentStatus.failed or version_id is None:
            return "unhealthy"
        if status != DeploymentStatus.active:
            return "unknown"
        if version_id in self._failures:
            return "unhealthy"
        loaded = self.cache.peek(version_id)
        if isinstance(loaded, IsolatedRuntime) and loaded.failure is not None:
            return "unhealthy"
        if version_id in self.cache:  # serving it, or about to once its deploy commits
            return "healthy"
        return "unknown"

    def describe(self, deployment_id: str) -> dict[str, Any] | None:
        key = self.cache.key_for(deployment_id)
        if key is None or key not in self.cache:
            return None
        return self.cache.runtime_for(deployment_id).describe()

    def loaded_seconds_ago(self, version_id: str) -> float | None:
        for entry in self.cache.stats().entries:
            if entry["key"] == version_id:
                return float(entry["loaded_seconds_ago"])
        return None

    # --- the background thread -------------------------------------------------------------------
    def check_generation(self) -> bool:
        """When another process changed a deployment (the generation counter moved),
        follow its deploys (``_follow_deploys``), then drop the directory so the next
        requests read the deployments as they now are; True if something changed."""
        with self._checking:
            with self.database.session(write=False) as session:
                value = session.scalar(
                    select(ServingGeneration.value).where(ServingGeneration.id == GENERATION_ROW)
                )
            value = int(value or 0)
            changed = self._generation is not None and value != self._generation
            if changed:
                self.forget_all(but=self._follow_deploys())
            self._generation = value
            return changed

    def _follow_deploys(self) -> set[str]:
        """Load and warm the version each deployment this process has loaded now serves,
        where that changed, then move its name, while the old version keeps answering:
        the most recently changed first, as many as the cache holds. Returns the
        deployments whose new version failed to load here; they keep the old one."""
        served = self.cache.names()
        with self._lock:
            known = [live for live, _ in self._directory.values() if live is not None]
        was = {live.id: live.version_id for live in known if live.version_id in self.cache}
        was.update(served)
        if not was:
            return set()
        with self.database.session(write=False) as session:
            rows = session.execute(
                select(Deployment.id, Deployment.model_version_id, ModelVersion.version)
                .join(ModelVersion, ModelVersion.id == Deployment.model_version_id)
                .where(Deployment.id.in_(was), Deployment.status == DeploymentStatus.active)
                .order_by(Deployment.updated_at.desc())
            ).all()
        moved = [
            (deployment, version_id, version)
            for deployment, version_id, version in rows
            if version_id != was[deployment]
        ]
        failed: set[str] = set()
        for deployment_id, version_id, version in moved[: self.cache.max_models]:
            assert version_id is not None  # joined so
            try:
                self.cache.prepare(version_id)
            except Exception as exc:
                self._not_followed(deployment_id, version_id, version, exc)
                failed.add(deployment_id)
                continue
            try:
                self.cache.move(deployment_id, version_id, serving=served.get(deployment_id))
            except Exception as exc:
                self.cache.discard(version_id)
                self._not_followed(deployment_id, version_id, version, exc)
                failed.add(deployment_id)
        return failed

    def _not_followed(self, deployment_id: str, version_id: str, version: str, exc: Exception) -> None:
        if isinstance(exc, ModelLoadError):
            reason, message = exc.reason, exc.message
            logger.warning("deployment %s: version %s not loaded here: %s", deployment_id, version, message)
        else:
            reason, message = "unexpected", brief(exc)
            logger.exception("deployment %s: version %s not loaded here", deployment_id, version)
        self.recorder.event(
            deployment_id,
            LogLevel.error,
            "load_failed",
            f"Version {version} could not be loaded in this process: {message}; the version it "
            "served here keeps serving until the deployment is read again (a minute at most)",
            version_id=version_id,
            reason=reason,
        )

    def start(self) -> None:
        if self._thread is not None:
            return
        freeze_startup_objects()
        switch_threads_often()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="maestro-serving", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch, name="maestro-deployments", daemon=True)
        self._watcher.start()
        self._warmer = threading.Thread(target=self._warm_up, name="maestro-warmup", daemon=True)
        self._warmer.start()

    # --- warming at start ----------------------------------------------------------------------
    def warming(self) -> str | None:
        """None once the active deployments are warm (or in a process that never started
        serving); else what is still being done. Blocks while the deployments to warm are
        being listed, a moment after start."""
        if self._warmer is None or self.warm.is_set():
            return None
        self.listed.wait(LISTING_WAIT)
        if self.warm.is_set():
            return None
        done, total = self._warming
        if not self.listed.is_set():
            return "listing the active deployments"
        return f"loading the models of the active deployments ({done} of {total} loaded)"

    def _warm_up(self) -> None:
        """List the active deployments, then load the version each serves, most recently
        changed first, while the server already answers; a version that fails to load
        is logged and left for its first request (which answers as it always did)."""
        try:
            with self.database.session(write=False) as session:
                rows = session.execute(
                    select(Deployment.name, Deployment.model_version_id)
                    .where(
                        Deployment.status == DeploymentStatus.active, Deployment.model_version_id.is_not(None)
                    )
                    .order_by(Deployment.updated_at.desc())
                    .limit(self.settings.serving_cache_max_models)
                ).all()
            self._warming = (0, len(rows))
            self.listed.set()
            hold = self.settings.warmup_hold_file
            while rows and hold is not None and not hold.exists() and not self._stop.wait(0.05):
                pass
            for done, (name, version_id) in enumerate(rows, start=1):
                assert version_id is not None  # selected so
                if self._stop.is_set():
                    return
                try:
                    # Loaded, not yet named: the first request names it (``runtime``), after
                    # checking the version is still current, so a deploy made meanwhile wins.
                    self.cache.get(version_id)
                except ModelLoadError as exc:
                    logger.warning("deployment %s: version %s not loaded at start: %s", name, version_id, exc)
                self._warming = (done, len(rows))
            if rows:
                logger.info("%d active deployment(s) loaded", len(rows))
        except Exception:
            logger.exception("warming the active deployments failed; they load on their first request")
        finally:
            self.warm.set()
            self.listed.set()

    def stop(self) -> None:
        """Stop the background thread and write everything still in memory."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self.recorder.wake.set()
            thread.join(timeout=30)
            gc.unfreeze()
        if self._watcher is not None:
            self._watcher.join(timeout=30)  # a model it is loading is closed with the cache below
            self._watcher = None
        if self._warmer is not None:
            self._warmer.join(timeout=30)  # a model it is loading is closed with the cache below
            self._warmer = None
        self.splitter.close()
        self.recorder.flush(everything=True)
        self.cache.close()  # model processes end with the server

    def _run(self) -> None:
        """Write the served requests every ``prediction_log_flush_seconds``, or sooner
        once a batch is ready."""
        flush_every = self.settings.prediction_log_flush_seconds
        while not self._stop.is_set():
            try:
                self.recorder.flush(everything=False)
            except Exception:
                logger.exception("serving background work failed")
            self.recorder.wake.wait(flush_every)
            self.recorder.wake.clear()

    def _watch(self) -> None:
        """Check the generation counter every ``deployment_check_seconds``: a thread of its
        own, as following another process's deploy may load models."""
        while True:
            try:
                self.check_generation()
            except Exception:
                logger.exception("checking for deployments changed elsewhere failed")
            if self._stop.wait(self.settings.deployment_check_seconds):
                return
