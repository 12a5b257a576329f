"""The record of served requests, kept off the request path.

A request only appends to memory: its prediction log (when sampled, at
``MAESTRO_PREDICTION_LOG_SAMPLE_RATE``), its share of the minute's aggregates (count,
errors, rows, latency histogram) and the deployment's last request time. ``flush``
writes all of it in a few bulk statements; the serving background thread calls it every
``MAESTRO_PREDICTION_LOG_FLUSH_SECONDS`` (sooner once ``…_BATCH_ROWS`` logs wait), and
once more at shutdown. A minute's aggregates are written when the minute is over (and
at shutdown, or when a flush is asked for everything), so each process writes about one
row per deployment and minute, and readers add up the rows of every process.

Memory is bounded: beyond ``MAESTRO_PREDICTION_LOG_MAX_PENDING`` waiting logs new ones
are dropped (and counted in ``maestro_prediction_logs_dropped_total``) rather than slow
a request down.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import Select, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maestro.api.request_metrics import LATENCY_BUCKETS_MS
from maestro.db import new_id, sqlite_utc_text
from maestro.deployments.metrics import PlatformMetrics
from maestro.deployments.models import Deployment, DeploymentEvent, DeploymentMinute, LogLevel, PredictionLog
from maestro.deployments.payloads import LoggedArrays, decode, encode, from_json

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database

logger = logging.getLogger("maestro.serving")

MAX_LOGGED_ROWS = 1000  # rows of one request kept in its prediction log
MAX_ERROR_EVENTS = 10  # request errors written to a deployment's log per flush; the rest are counted
MAX_ERROR_TEXT = 1000


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(slots=True)
class Served:
    """One answered inference request."""

    deployment_id: str
    organization_id: str
    version_id: str | None
    request_id: str
    prediction_id: str
    status_code: int
    latency_ms: float
    rows: int = 0
    # An answered request's logged rows (at most MAX_LOGGED_ROWS), as references to what
    # the request already holds; the writer encodes them (``payloads.encode``).
    names: tuple[str, ...] | None = None  # the features, in the matrix's column order
    matrix: np.ndarray | None = None
    values: list[Any] | None = None  # the predictions, as answered
    probabilities: np.ndarray | None = None  # rows x classes, when answered
    classes: tuple[str, ...] | None = None  # the probabilities' class names
    error: str | None = None
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Minute:
    request_count: int = 0
    error_count: int = 0
    prediction_count: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))


@dataclass
class FlushReport:
    logs: int = 0
    minutes: int = 0
    events: int = 0
    dropped: int = 0


class PredictionRecorder:
    def __init__(self, database: Database, settings: Settings, metrics: PlatformMetrics) -> None:
        self.database = database
        self.sample_rate = settings.prediction_log_sample_rate
        self.batch_rows = settings.prediction_log_batch_rows
        self.max_pending = settings.prediction_log_max_pending
        self.metrics = metrics
        self.wake = threading.Event()  # set when a batch is ready before the interval
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dialect = database.engine.dialect.name
        # Answered requests' logs as rows ready for the INSERT, encoded by ``record`` on the
        # serving thread; failed requests' as they were served.
        self._pending: list[tuple[Any, ...]] = []
        self._pending_failures: list[Served] = []
        self._minutes: dict[tuple[str, int], _Minute] = {}
        self._last_request: dict[str, float] = {}
        self._events: list[dict[str, Any]] = []
        self._error_events: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()

    # --- the request path ---------------------------------------------------------------------
    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate  # noqa: S311 - sampling

    def record(self, served: Served, *, log: bool) -> None:
        """Count a request, and keep its prediction log when ``log`` (the sampling verdict).

        An answered request's log is encoded here, on the thread that served it, at a few
        microseconds a request. Left to the writer thread, the same work would take the
        interpreter's lock from the serving thread in bursts at every flush, and each
        request waiting on the lock then would pay a switch interval: a slower tail for
        every logged deployment."""
        key = (served.deployment_id, int(served.at // 60))
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, served.latency_ms)
        failed = served.status_code >= 400
        with self._lock:
            minute = self._minutes.get(key)
            if minute is None:
                minute = self._minutes[key] = _Minute()
            minute.request_count += 1
            minute.error_count += failed
            minute.prediction_count += served.rows if not failed else 0
            minute.latency_sum_ms += served.latency_ms
            minute.latency_max_ms = max(minute.latency_max_ms, served.latency_ms)
            minute.buckets[bucket] += 1
            if served.at > self._last_request.get(served.deployment_id, 0.0):
                self._last_request[served.deployment_id] = served.at
            if failed:
                self._note_error(served)
            if log:
                if len(self._pending) + len(self._pending_failures) >= self.max_pending:
                    self.metrics.prediction_logs_dropped.inc()
                elif _answered(served):
                    try:
                        self._pending.append(_bulk_row(served, self._dialect))
                    except ValueError:  # a log that cannot be encoded never fails its answered request
                        logger.exception("could not encode the prediction log %s", served.prediction_id)
                        self.metrics.prediction_logs_dropped.inc()
                else:
                    self._pending_failures.append(served)
            pending = len(self._pending) + len(self._pending_failures)
        self.metrics.prediction_logs_pending.set(pending)
        if pending >= self.batch_rows:
            self.wake.set()

    def _note_error(self, served: Served) -> None:
        deployment = served.deployment_id
        if self._error_events[deployment] >= MAX_ERROR_EVENTS:
            self._suppressed[deployment] += 1
            return
        self._error_events[deployment] += 1
        server_side = served.status_code >= 500
        error = (served.error or "")[:MAX_ERROR_TEXT]
        self._events.append(
            {
                "deployment_id": deployment,
                "level": LogLevel.error if server_side else LogLevel.warn,
                "event": "request_failed",
                "message": f"A request answered {served.status_code}: {error}",
                "details": {
                    "status_code": served.status_code,
                    "request_id": served.request_id,
                    "version_id": served.version_id,
                },
                "at": served.at,
            }
        )

    def event(self, deployment_id: str, level: LogLevel, event: str, message: str, **details: Any) -> None:
        """Add a line to a deployment's log with the next flush."""
        with self._lock:
            self._events.append(
                {
                    "deployment_id": deployment_id,
                    "level": level,
                    "event": event,
                    "message": message[:2000],
                    "details": details,
                    "at": time.time(),
                }
            )

    # --- writing ------------------------------------------------------------------------------------
    def flush(self, *, everything: bool = True) -> FlushReport:
        """Write what is waiting; with ``everything`` the current minute's aggregates too
        (tests, shutdown), otherwise only minutes that are over."""
        with self._write_lock:
            current = int(time.time() // 60)
            with self._lock:
                pending, self._pending = self._pending, []
                failures, self._pending_failures = self._pending_failures, []
                events, self._events = self._events, []
                suppressed, self._suppressed = self._suppressed, Counter()
                self._error_events.clear()
                last_request, self._last_request = self._last_request, {}
                due = [key for key in self._minutes if everything or key[1] < current]
                minutes = {key: self._minutes.pop(key) for key in due}
            self.metrics.prediction_logs_pending.set(0)
            now = time.time()
            for deployment, count in suppressed.items():
                events.append(
                    {
                        "deployment_id": deployment,
                        "level": LogLevel.warn,
                        "event": "request_failed",
                        "message": f"{count} more requests failed since the last entry (not listed each)",
                        "details": {"count": count},
                        "at": now,
                    }
                )
            if not (pending or failures or events or minutes or last_request):
                return FlushReport()
            try:
                return self._write(pending, failures, events, minutes, last_request)
            except Exception:
                lost = len(pending) + len(failures)
                logger.exception("could not write %s prediction logs and request counts", lost)
                self.metrics.prediction_logs_dropped.inc(lost)
                return FlushReport(dropped=lost)

    def _write(
        self,
        pending: list[tuple[Any, ...]],
        failures: list[Served],
        events: list[dict[str, Any]],
        minutes: dict[tuple[str, int], _Minute],
        last_request: dict[str, float],
    ) -> FlushReport:
        ids = {row[_DEPLOYMENT] for row in pending} | {s.deployment_id for s in failures}
        ids |= {e["deployment_id"] for e in events} | {key[0] for key in minutes} | set(last_request)
        for attempt in (1, 2):
            try:
                with self.database.session() as session:
                    # A deployment deleted meanwhile takes its rows with it.
                    live = set(session.scalars(select(Deployment.id).where(Deployment.id.in_(ids))))
                    answered = [row for row in pending if row[_DEPLOYMENT] in live]
                    plain = [_log_row(served) for served in failures if served.deployment_id in live]
                    if answered:
                        _bulk_insert(session, answered)
                    if plain:
                        session.execute(insert(PredictionLog), plain)
                    logs = len(answered) + len(plain)
                    minute_rows = [
                        _minute_row(deployment, minute, aggregate)
                        for (deployment, minute), aggregate in minutes.items()
                        if deployment in live
                    ]
                    if minute_rows:
                        session.execute(insert(DeploymentMinute), minute_rows)
                    event_rows = [_event_row(e) for e in events if e["deployment_id"] in live]
                    if event_rows:
                        session.execute(insert(DeploymentEvent), event_rows)
                    for deployment, at in last_request.items():
                        if deployment in live:
                            when = _utc(at)
                            session.execute(
                                update(Deployment)
                                .where(
                                    Deployment.id == deployment,
                                    or_(
                                        Deployment.last_request_at.is_(None),
                                        Deployment.last_request_at < when,
                                    ),
                                )
                                .values(last_request_at=when, updated_at=Deployment.updated_at)
                                .execution_options(synchronize_session=False)
                            )
                return FlushReport(logs=logs, minutes=len(minute_rows), events=len(event_rows))
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def _log_row(served: Served) -> dict[str, Any]:
    """A failed request's log: no input, no output, the error."""
    return {
        "id": served.prediction_id,
        "organization_id": served.organization_id,
        "deployment_id": served.deployment_id,
        "model_version_id": served.version_id,
        "request_id": served.request_id,
        "inputs": None,
        "outputs": None,
        "row_count": served.rows,
        "latency_ms": served.latency_ms,
        "status_code": served.status_code,
        "error": served.error[:MAX_ERROR_TEXT] if served.error else None,
        "created_at": _utc(served.at),
    }


def _answered(served: Served) -> bool:
    """A request answered with predictions: logged by ``_bulk_insert``. Failures carry
    error text and no rows, and take the ORM's insert."""
    return served.matrix is not None and served.names is not None and served.values is not None


def _bulk_row(served: Served, dialect: str) -> tuple[Any, ...]:
    """An answered request's log as a row of ``_BULK_COLUMNS``: its logged rows as one
    binary ``payload`` (``payloads.encode``); ``inputs`` and ``outputs``, the JSON form of
    earlier logs, are left NULL."""
    assert served.names is not None
    assert served.matrix is not None
    assert served.values is not None
    probabilities = served.probabilities
    payload = encode(
        served.names,
        served.matrix[:MAX_LOGGED_ROWS],  # the request cut them already; views either way
        served.values[:MAX_LOGGED_ROWS],
        served.classes,
        probabilities[:MAX_LOGGED_ROWS] if probabilities is not None else None,
    )
    return (
        served.prediction_id,
        served.organization_id,
        served.deployment_id,
        served.version_id,
        served.request_id,
        payload,
        served.rows,
        served.latency_ms,
        served.status_code,
        # As SQLAlchemy stores a UTC time in SQLite; PostgreSQL takes the time itself.
        sqlite_utc_text(served.at) if dialect == "sqlite" else _utc(served.at),
    )


_BULK_COLUMNS = (
    "id",
    "organization_id",
    "deployment_id",
    "model_version_id",
    "request_id",
    "payload",
    "row_count",
    "latency_ms",
    "status_code",
    "created_at",
)
_PAYLOAD = _BULK_COLUMNS.index("payload")
_DEPLOYMENT = _BULK_COLUMNS.index("deployment_id")


# One INSERT carries this many logs at most, or about this many bytes of them.
_CHUNK_ROWS = 500
_CHUNK_BYTES = 4 * 1024**2


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += len(row[_PAYLOAD])
        if len(chunk) == _CHUNK_ROWS or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _bulk_insert(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Insert answered requests' logs (``_bulk_row``) through the driver itself, many rows to one
    multi-row INSERT, each payload bound as bytes (a BLOB in SQLite, bytea in
    PostgreSQL). The ORM's work per row (bind processing) would cost more than the
    request did; and a statement per row would release and take back the interpreter's
    lock once per row, each time taking it from the event loop serving requests, which
    costs the server more than the writing does."""
    dialect = session.get_bind().dialect.name
    mark = "%s" if dialect == "postgresql" else "?"
    row_marks = f"({', '.join([mark] * len(_BULK_COLUMNS))})"
    insert_into = f"INSERT INTO prediction_logs ({', '.join(_BULK_COLUMNS)}) VALUES "  # noqa: S608 - constants
    connection = session.connection()
    for chunk in _chunks(rows):
        connection.exec_driver_sql(
            insert_into + ", ".join([row_marks] * len(chunk)), tuple(chain.from_iterable(chunk))
        )


def _minute_row(deployment_id: str, minute: int, aggregate: _Minute) -> dict[str, Any]:
    return {
        "id": new_id(DeploymentMinute.id_prefix),
        "deployment_id": deployment_id,
        "minute": _utc(minute * 60),
        "request_count": aggregate.request_count,
        "error_count": aggregate.error_count,
        "prediction_count": aggregate.prediction_count,
        "latency_sum_ms": aggregate.latency_sum_ms,
        "latency_max_ms": aggregate.latency_max_ms,
        "latency_buckets": aggregate.buckets,
    }


def _event_row(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id(DeploymentEvent.id_prefix),
        "deployment_id": entry["deployment_id"],
        "level": str(entry["level"]),
        "event": entry["event"],
        "message": entry["message"],
        "details": entry["details"],
        "created_at": _utc(entry["at"]),
    }


# --- reading the log ------------------------------------------------------------------------------
# A log is stored in one of two forms: a binary ``payload`` (``payloads``), or, as
# written before it, JSON ``inputs`` and ``outputs``. Readers get the same either way.
# A payload that cannot be read (damaged in the database) is logged as a warning and
# read as a request without inputs or outputs, its other columns intact: reading goes
# on, and a page never ends before a row it cannot read (which would repeat it forever).


def _records(inputs: Any) -> list[Any]:
    """JSON-logged inputs as records of named features, whether kept as columns and rows
    or (logs written before) as records."""
    if isinstance(inputs, dict):
        columns = inputs.get("columns") or []
        return [dict(zip(columns, row, strict=True)) for row in inputs.get("rows") or []]
    return inputs or []


def _decoded(row: PredictionLog) -> LoggedArrays | None:
    assert row.payload is not None
    try:
        return decode(row.payload)
    except ValueError as exc:
        logger.warning("prediction log %s cannot be read: %s", row.id, exc)
        return None


@dataclass(frozen=True)
class LoggedPrediction:
    """One logged request, as other domains see it (monitoring reads these, never the
    table): ``inputs`` are records of named features, ``outputs`` the predictions."""

    id: str
    deployment_id: str
    model_version_id: str | None
    request_id: str | None
    inputs: list[Any]
    outputs: list[Any]
    row_count: int
    latency_ms: float
    status_code: int
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class LoggedMatrix:
    """One logged request with its rows as arrays (``arrays``; None for a failed request
    or one that cannot be read), for readers that compute over columns and would only
    take records apart again."""

    id: str
    deployment_id: str
    model_version_id: str | None
    row_count: int
    status_code: int
    created_at: datetime
    arrays: LoggedArrays | None


def _page(
    deployment_id: str,
    since: datetime | None,
    until: datetime | None,
    after: LoggedPrediction | LoggedMatrix | None,
    limit: int,
) -> Select[PredictionLog]:
    statement = select(PredictionLog).where(PredictionLog.deployment_id == deployment_id)
    if since is not None:
        statement = statement.where(PredictionLog.created_at >= since)
    if until is not None:
        statement = statement.where(PredictionLog.created_at < until)
    if after is not None:
        statement = statement.where(
            or_(
                PredictionLog.created_at > after.created_at,
                and_(PredictionLog.created_at == after.created_at, PredictionLog.id > after.id),
            )
        )
    return statement.order_by(PredictionLog.created_at, PredictionLog.id).limit(max(1, min(limit, 10_000)))


def _logged(row: PredictionLog) -> LoggedPrediction:
    if row.payload is not None:
        arrays = _decoded(row)
        inputs = arrays.inputs() if arrays is not None else []
        outputs = arrays.outputs() if arrays is not None else []
    else:
        inputs, outputs = _records(row.inputs), row.outputs or []
    return LoggedPrediction(
        id=row.id,
        deployment_id=row.deployment_id,
        model_version_id=row.model_version_id,
        request_id=row.request_id,
        inputs=inputs,
        outputs=outputs,
        row_count=row.row_count,
        latency_ms=row.latency_ms,
        status_code=row.status_code,
        error=row.error,
        created_at=row.created_at,
    )


def logged_predictions(
    session: Session,
    deployment_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    after: LoggedPrediction | LoggedMatrix | None = None,
    limit: int = 1000,
) -> list[LoggedPrediction]:
    """A deployment's logged requests with ``since <= created_at < until``, oldest first,
    at most ``limit``; pass the last one read as ``after`` for the next page (keyset on
    time and id, so pages neither skip nor repeat rows while the log grows)."""
    return [_logged(row) for row in session.scalars(_page(deployment_id, since, until, after, limit))]


def _matrix(row: PredictionLog) -> LoggedMatrix:
    arrays: LoggedArrays | None = None
    if row.payload is not None:
        arrays = _decoded(row)
    elif row.inputs is not None or row.outputs is not None:
        try:
            arrays = from_json(row.inputs, row.outputs)
        except (ValueError, TypeError) as exc:
            logger.warning("prediction log %s cannot be read as arrays: %s", row.id, exc)
    return LoggedMatrix(
        id=row.id,
        deployment_id=row.deployment_id,
        model_version_id=row.model_version_id,
        row_count=row.row_count,
        status_code=row.status_code,
        created_at=row.created_at,
        arrays=arrays,
    )


def logged_matrices(
    session: Session,
    deployment_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    after: LoggedPrediction | LoggedMatrix | None = None,
    limit: int = 1000,
) -> list[LoggedMatrix]:
    """As ``logged_predictions``, the rows as arrays instead of records: no dict per row,
    the matrix read straight from the stored bytes."""
    return [_matrix(row) for row in session.scalars(_page(deployment_id, since, until, after, limit))]


@dataclass(frozen=True)
class LoggedAnswers:
    """What one logged request answered, row by row, for joining true labels to it
    (monitoring's ground truth): ``predictions`` as answered, one per logged row (the
    first ``MAX_LOGGED_ROWS`` of the request; none for a failed request or a log that
    cannot be read); ``probabilities`` (rows x classes) and their ``classes`` when the
    answers carried them. ``answers`` says what the predictions are: a classifier's
    ``label`` (probabilities were logged, the values are text or booleans, or the
    deployment serves this version as a classifier) or a regressor's ``value``."""

    id: str
    model_version_id: str | None
    created_at: datetime
    predictions: list[Any]
    classes: tuple[str, ...] | None
    probabilities: np.ndarray | None
    answers: Literal["label", "value"]
    columns: tuple[str, ...] = ()  # the logged rows' inputs by feature name, for
    matrix: np.ndarray | None = None  # reading one row's value of a column (NaN: missing)


_IDS_PER_QUERY = 500


def _answer_kind(arrays: LoggedArrays | None, serving: Any) -> Literal["label", "value"]:
    """``serving``: the deployment's description of the version that answered, when it
    still serves that version."""
    if arrays is None:
        return "value"
    if arrays.classes is not None:
        return "label"
    if any(isinstance(value, str | bool) for value in arrays.predictions):
        return "label"
    # Numbers without probabilities: a classifier's numeric classes, or a regressor's
    # values. The deployment's description of what it serves says, for its version.
    if isinstance(serving, dict) and "classes" in serving:
        return "label" if serving["classes"] is not None else "value"
    return "value"


def logged_answers(
    session: Session, deployment_id: str, prediction_ids: Iterable[str]
) -> dict[str, LoggedAnswers]:
    """The logged requests of one deployment among ``prediction_ids``, by id. An id
    logged for another deployment (or organisation), one never logged (not sampled,
    not written yet) and one deleted after its retention period are all simply absent."""
    wanted = list(dict.fromkeys(prediction_ids))
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or not wanted:
        return {}
    serving = deployment.serving
    current = deployment.model_version_id
    found: dict[str, LoggedAnswers] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start : start + _IDS_PER_QUERY]
        rows = session.scalars(
            select(PredictionLog).where(
                PredictionLog.deployment_id == deployment_id, PredictionLog.id.in_(chunk)
            )
        )
        for row in rows:
            arrays = _matrix(row).arrays
            version = row.model_version_id
            kind = _answer_kind(arrays, serving if version == current else None)
            found[row.id] = LoggedAnswers(
                id=row.id,
                model_version_id=version,
                created_at=row.created_at,
                predictions=list(arrays.predictions) if arrays is not None else [],
                classes=arrays.classes if arrays is not None else None,
                probabilities=arrays.probabilities if arrays is not None else None,
                answers=kind,
                columns=arrays.columns if arrays is not None else (),
                matrix=arrays.matrix if arrays is not None else None,
            )
    return found


def logged_rows_by_hour(
    session: Session,
    deployment_id: str,
    *,
    since: datetime,
    until: datetime,
    after: tuple[datetime, str] | None = None,
) -> dict[datetime, int]:
    """The rows a deployment's answered requests logged (at most ``MAX_LOGGED_ROWS``
    each) per UTC hour, for requests with ``since <= created_at < until`` and, with
    ``after`` (a time and an id), past that position in the log's keyset order. Added up
    by the database, an hour per row of the answer."""
    if session.get_bind().dialect.name == "postgresql":
        hour: Any = func.date_trunc("hour", func.timezone("UTC", PredictionLog.created_at))
    else:  # SQLite keeps UTC times as text
        hour = func.strftime("%Y-%m-%d %H:00:00", PredictionLog.created_at)
    logged = case((PredictionLog.row_count > MAX_LOGGED_ROWS, MAX_LOGGED_ROWS), else_=PredictionLog.row_count)
    statement = (
        select(hour, func.sum(logged))
        .where(
            PredictionLog.deployment_id == deployment_id,
            PredictionLog.created_at >= since,
            PredictionLog.created_at < until,
            PredictionLog.status_code < 400,
        )
        .group_by(hour)
    )
    if after is not None:
        at, last_id = after
        statement = statement.where(
            or_(
                PredictionLog.created_at > at,
                and_(PredictionLog.created_at == at, PredictionLog.id > last_id),
            )
        )
    counted: dict[datetime, int] = {}
    for started, rows in session.execute(statement):
        opens = started if isinstance(started, datetime) else datetime.fromisoformat(started)
        counted[opens.replace(tzinfo=UTC)] = int(rows or 0)
    return counted


def deployments_with_logs(session: Session) -> list[str]:
    """The deployments that have any logged request: one index probe per deployment,
    never a scan of the log."""
    logged = select(PredictionLog.id).where(PredictionLog.deployment_id == Deployment.id).exists()
    return list(session.scalars(select(Deployment.id).where(logged).order_by(Deployment.id)))


def delete_logged_before(
    session: Session, cutoff: datetime, limit: int, *, deployment_id: str | None = None
) -> int:
    """Delete at most ``limit`` logged requests created before ``cutoff`` (of one
    deployment, or of all), oldest first, and say how many went: callers repeat it in
    short transactions, so a large backlog never holds the writers up for long."""
    doomed = select(PredictionLog.id).where(PredictionLog.created_at < cutoff)
    if deployment_id is not None:
        doomed = doomed.where(PredictionLog.deployment_id == deployment_id)
    doomed = doomed.order_by(PredictionLog.created_at).limit(max(1, limit))
    ids = list(session.scalars(doomed))
    if not ids:
        return 0
    session.execute(
        delete(PredictionLog).where(PredictionLog.id.in_(ids)).execution_options(synchronize_session=False)
    )
    return len(ids)
