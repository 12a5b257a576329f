"""Drift of a deployment's traffic against its reference data: over any window on
request, and stored as reports that make a history.

``compare`` judges every input column of the reference with ``drift`` (the test chosen
by the number of values, its threshold, the minimum-count guard, null rates, unseen
categories), the served predictions (``__prediction__``) and class probabilities
apart, and the dataset: the share of judged input columns that drifted against
``MAESTRO_MONITORING_DATASET_DRIFT_SHARE``, the Bonferroni-corrected "some column
drifted", and a warning when one of the model's most important features drifted (the
top ``TOP_IMPORTANT`` of ``feature_importances``, a ``{feature: importance}`` object in
the deployed version's ``model_schema`` or ``training_metrics``; nothing else in the
registry records importances).

Reports: the ``monitoring.drift_reports`` job (submitted by the consumers' schedule every
``MAESTRO_MONITORING_DRIFT_INTERVAL_SECONDS``) stores, for each active deployment whose
reference is ready, one report per closed interval (aligned to the interval in UTC, once
folding has had time to settle), catching up at most ``CATCH_UP`` missed intervals;
``POST …/monitoring/drift`` asks for one over any window as a ``monitoring.drift_report``
job. Each report keeps the dataset figures and every column's test, statistic, threshold
and verdict; one report per window (a later computation replaces it). ``history`` turns
them into a series per column and for the dataset.

Segments: with a segment column set, a segment's traffic (``segment``) is compared with
the whole reference (a reference has no per-segment profiles), and a report is stored
for the whole deployment and for each segment (its values and ``__other__``) of the
window.

Quantities for alert rules: ``dataset_drift_share`` and ``drift.<column>`` (the column's
statistic) over a window, computed from the profiles like ``GET …/monitoring/drift``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maestro.db import utc_iso, utcnow
from maestro.deployments.models import Deployment, DeploymentStatus
from maestro.deployments.service import deployable_version
from maestro.errors import Conflict, ValidationFailed
from maestro.events import service as events
from maestro.identity import audit
from maestro.identity.rbac import Principal
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.maintenance import DRIFT_REPORTS
from maestro.monitoring import segments
from maestro.monitoring.drift import ColumnDrift, DatasetDrift, column_drift_from_profiles, dataset_drift
from maestro.monitoring.folding import fold_new_predictions, settle_seconds, utc_hour
from maestro.monitoring.models import (
    ALL_TRAFFIC,
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    MonitoringDriftReport,
    MonitoringReference,
)
from maestro.monitoring.profiles import CategoricalProfile, ColumnProfile, NumericProfile
from maestro.monitoring.reference import (
    MAX_WINDOW,
    authorized_deployment,
    bounded_window,
    current_reference,
    hour_ceiling,
    ready_reference,
    require_ready,
    window_profiles,
)
from maestro.monitoring.schemas import (
    ColumnDriftPoint,
    ColumnDriftRead,
    ColumnDriftSeries,
    DatasetDriftPoint,
    DatasetDriftRead,
    DriftHistory,
    DriftRead,
    DriftReferenceRef,
    DriftReportCreate,
    DriftReportRequested,
)

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database
    from maestro.jobs.queue import JobQueue

logger = logging.getLogger("maestro.monitoring")

REQUESTED = "monitoring.drift_report"
DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_HISTORY = timedelta(days=7)
MAX_HISTORY_POINTS = 2_000
CATCH_UP = 24  # missed intervals one scheduled run computes at most, per deployment
TOP_IMPORTANT = 3
DATASET_SHARE = "dataset_drift_share"
COLUMN_PREFIX = "drift."
# Drift quantities for alert rules (besides the fixed names of ``service.QUANTITIES``).
DRIFT_QUANTITIES = (DATASET_SHARE, f"{COLUMN_PREFIX}<column>")


# --- comparing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    columns: list[ColumnDrift]  # input columns
    prediction: ColumnDrift | None
    probabilities: list[ColumnDrift]
    summary: DatasetDrift
    important: list[str]
    warnings: list[str]

    @property
    def judged(self) -> int:
        return sum(result.verdict != "insufficient_data" for result in self.columns)

    @property
    def drifted(self) -> int:
        return sum(result.drifted for result in self.columns)

    @property
    def share(self) -> float | None:
        return self.summary.share_drifted if self.judged else None


def _output(name: str) -> bool:
    return name == PREDICTION_COLUMN or name.startswith(PROBABILITY_PREFIX)


def _empty_like(profile: ColumnProfile) -> ColumnProfile:
    return NumericProfile() if isinstance(profile, NumericProfile) else CategoricalProfile()


def compare(
    reference: Mapping[str, ColumnProfile],
    current: Mapping[str, ColumnProfile],
    *,
    important: Sequence[str] = (),
    threshold: float,
) -> Comparison:
    """Judge every column of the reference against the window's (a column the window
    lacks counts as no values), and the dataset from the input columns."""
    inputs: list[ColumnDrift] = []
    probabilities: list[ColumnDrift] = []
    prediction: ColumnDrift | None = None
    notes: list[str] = []
    for name in sorted(reference):
        ref = reference[name]
        cur = current.get(name) or _empty_like(ref)
        if cur.kind != ref.kind:
            notes.append(
                f"column {name!r} is {ref.kind} in the reference and {cur.kind} in the window: not compared"
            )
            continue
        result = column_drift_from_profiles(name, ref, cur)
        if name == PREDICTION_COLUMN:
            prediction = result
        elif name.startswith(PROBABILITY_PREFIX):
            probabilities.append(result)
        else:
            inputs.append(result)
    unreferenced = sorted(name for name in current if name not in reference and not _output(name))
    if unreferenced:
        listed = ", ".join(repr(name) for name in unreferenced[:10]) + (
            " …" if len(unreferenced) > 10 else ""
        )
        notes.append(f"served columns without reference data, not compared: {listed}")
    summary = dataset_drift(inputs, important, threshold)
    warnings = list(summary.warnings)
    if prediction is not None and prediction.drifted:
        warnings.insert(0, f"the predictions drifted ({prediction.test})")
    return Comparison(inputs, prediction, probabilities, summary, list(important), warnings + notes)


def important_features(session: Session, deployment: Deployment) -> list[str]:
    """The deployed version's ``TOP_IMPORTANT`` most important features, from a
    ``feature_importances`` object in its model_schema or training_metrics; [] if unknown."""
    if deployment.model_version_id is None:
        return []
    try:
        version = deployable_version(
            session, deployment.project_id, deployment.model_version_id, "deployment"
        )
    except ValidationFailed:
        return []
    for document in (version.model_schema, version.training_metrics):
        values = document.get("feature_importances") if isinstance(document, dict) else None
        if not isinstance(values, dict):
            continue
        scored = [
            (float(value), str(name))
            for name, value in values.items()
            if type(value) in (int, float) and math.isfinite(value)
        ]
        if scored:
            return [name for _, name in sorted(scored, key=lambda pair: (-pair[0], pair[1]))[:TOP_IMPORTANT]]
    return []


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def column_document(result: ColumnDrift, important: Sequence[str] = ()) -> dict[str, Any]:
    """A column's result as plain JSON (an infinite distance, from a constant reference
    column, is null)."""
    return {
        "column": result.column,
        "kind": result.kind,
        "test": result.test,
        "statistic": _finite(result.statistic),
        "p_value": _finite(result.p_value),
        "threshold": result.threshold,
        "drifted": result.drifted,
        "warning": result.warning,
        "verdict": result.verdict,
        "n_reference": result.n_reference,
        "n_current": result.n_current,
        "null_rate_reference": result.null_rate_reference,
        "null_rate_current": result.null_rate_current,
        "null_rate_change": result.null_rate_current - result.null_rate_reference,
        "null_rate_drifted": result.null_rate_drifted,
        "unseen_rate": result.unseen_rate,
        "important": result.column in important,
    }


def _dataset_read(comparison: Comparison, threshold: float) -> DatasetDriftRead:
    return DatasetDriftRead(
        drifted=comparison.summary.dataset_drift,
        share_drifted=comparison.share,
        threshold=threshold,
        judged_columns=comparison.judged,
        drifted_columns=comparison.drifted,
        any_drift_corrected=comparison.summary.any_drift_corrected,
    )


def _reference_ref(row: MonitoringReference) -> DriftReferenceRef:
    return DriftReferenceRef(
        source=row.source,  # type: ignore[arg-type]
        dataset_file_id=row.dataset_file_id,
        reference_start=row.reference_start,
        reference_end=row.reference_end,
        rows=row.rows,
    )


def drift(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    threshold: float,
    start: datetime | None = None,
    end: datetime | None = None,
    reference_start: datetime | None = None,
    reference_end: datetime | None = None,
    segment: str | None = None,
) -> DriftRead:
    """Drift of the window (by default the last 24 hours) against the deployment's
    reference, or against another window of its traffic when both reference bounds are
    given. With ``segment``, the segment's traffic is compared: with the whole
    reference, or with the same segment's traffic in the other window."""
    end = end if end is not None else utcnow()
    start = start if start is not None else end - DEFAULT_WINDOW
    start, end = bounded_window(start, end)
    override = reference_start is not None or reference_end is not None
    if override and (reference_start is None or reference_end is None):
        raise ValidationFailed(
            "Give both reference_start and reference_end to compare with another window",
            details=[("reference_start" if reference_start is None else "reference_end", "missing")],
        )
    deployment = authorized_deployment(session, principal, deployment_id)
    key = segments.checked_segment(session, deployment.id, segment)
    if override:
        assert reference_start is not None
        assert reference_end is not None
        ref_start, ref_end = bounded_window(
            reference_start, reference_end, fields=("reference_start", "reference_end")
        )
        reference = window_profiles(session, deployment.id, ref_start, ref_end, segment=key)
        if not reference:
            raise ValidationFailed(
                "No served traffic was folded in the reference window",
                details=[("reference_start", "no traffic in the window")],
            )
        described = DriftReferenceRef(
            source="override",
            reference_start=ref_start,
            reference_end=ref_end,
            rows=max(profile.count for profile in reference.values()),
        )
    else:
        row, reference = ready_reference(session, deployment.id)
        described = _reference_ref(row)
    current = window_profiles(session, deployment.id, start, end, segment=key)
    important = important_features(session, deployment)
    comparison = compare(reference, current, important=important, threshold=threshold)

    def read(result: ColumnDrift) -> ColumnDriftRead:
        return ColumnDriftRead.model_validate(column_document(result, important))

    return DriftRead(
        deployment_id=deployment.id,
        start=start,
        end=end,
        covered_start=utc_hour(start),
        covered_end=hour_ceiling(end),
        segment=key or None,
        reference=described,
        dataset_drift=_dataset_read(comparison, threshold),
        columns=[read(result) for result in comparison.columns],
        prediction_drift=read(comparison.prediction) if comparison.prediction is not None else None,
        probability_drift=[read(result) for result in comparison.probabilities],
        important_features=important,
        warnings=comparison.warnings,
    )


# --- reports -----------------------------------------------------------------------------------------
def _reference_document(row: MonitoringReference) -> dict[str, Any]:
    return {
        "source": row.source,
        "dataset_file_id": row.dataset_file_id,
        "reference_start": row.reference_start.isoformat() if row.reference_start else None,
        "reference_end": row.reference_end.isoformat() if row.reference_end else None,
        "generation": row.generation,
        "rows": row.rows,
    }


def _store_report(session: Session, values: dict[str, Any]) -> str:
    """Insert the window's report, or replace the one computed before; returns its id."""
    dialect = session.get_bind().dialect.name
    make = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = make(MonitoringDriftReport).values(id=MonitoringDriftReport().id, **values)
    replaced = {
        key: statement.excluded[key]
        for key in values
        if key not in ("deployment_id", "window_start", "window_end", "segment")
    }
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["deployment_id", "window_start", "window_end", "segment"], set_=replaced
        )
    )
    found = session.scalar(
        select(MonitoringDriftReport.id).where(
            MonitoringDriftReport.deployment_id == values["deployment_id"],
            MonitoringDriftReport.window_start == values["window_start"],
            MonitoringDriftReport.window_end == values["window_end"],
            MonitoringDriftReport.segment == values["segment"],
        )
    )
    assert found is not None
    return found


def _report_values(
    comparison: Comparison, important: Sequence[str], described: dict[str, Any]
) -> dict[str, Any]:
    columns = [column_document(result, important) | {"role": "input"} for result in comparison.columns]
    if comparison.prediction is not None:
        columns.append(column_document(comparison.prediction) | {"role": "prediction"})
    columns += [column_document(result) | {"role": "probability"} for result in comparison.probabilities]
    return {
        "reference": described,
        "judged_columns": comparison.judged,
        "drifted_columns": comparison.drifted,
        "share_drifted": comparison.share,
        "dataset_drift": comparison.summary.dataset_drift,
        "any_drift_corrected": comparison.summary.any_drift_corrected,
        "columns": columns,
        "warnings": comparison.warnings[:100],
    }


def report_window(
    database: Database,
    settings: Settings,
    deployment_id: str,
    start: datetime,
    end: datetime,
    *,
    trigger: str,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Compute and store the report of the whole hours overlapping ``[start, end)``
    against the deployment's reference (409 when it has none ready): the whole
    deployment's, and one per segment when it has a segment column."""
    window_start, window_end = utc_hour(start), hour_ceiling(end)
    threshold = settings.monitoring_dataset_drift_share
    comparisons: dict[str, Comparison] = {}
    with database.session(write=False) as session:
        deployment = session.get(Deployment, deployment_id)
        if deployment is None:
            raise ValueError("The deployment was deleted")
        row, reference = ready_reference(session, deployment_id)
        described = _reference_document(row)
        organization_id, deployment_name = deployment.organization_id, deployment.name
        important = important_features(session, deployment)
        segmenting = segments.segmenting(session, deployment_id)
        for segment in (ALL_TRAFFIC, *(segmenting.known if segmenting is not None else ())):
            current = window_profiles(session, deployment_id, window_start, window_end, segment=segment)
            comparisons[segment] = compare(reference, current, important=important, threshold=threshold)
    report_ids: dict[str, str] = {}
    now = utcnow()
    with database.session(write=True) as session:
        # A segment column changed meanwhile discarded those segments: store none of them.
        now_set = segments.segmenting(session, deployment_id, lock=True)
        if segmenting is not None and (
            now_set is None or (now_set.column, now_set.since) != (segmenting.column, segmenting.since)
        ):
            comparisons = {ALL_TRAFFIC: comparisons[ALL_TRAFFIC]}
        for segment, comparison in comparisons.items():
            values = {
                "deployment_id": deployment_id,
                "window_start": window_start,
                "window_end": window_end,
                "segment": segment,
                "trigger": trigger,
                **_report_values(comparison, important, described),
                "job_id": job_id,
                "created_at": now,
            }
            report_ids[segment] = _store_report(session, values)
        comparison = comparisons[ALL_TRAFFIC]
        if comparison.summary.dataset_drift:
            events.record(
                session,
                organization_id,
                "drift.detected",
                {
                    "deployment_id": deployment_id,
                    "deployment_name": deployment_name,
                    "report_id": report_ids[ALL_TRAFFIC],
                    "window_start": utc_iso(window_start),
                    "window_end": utc_iso(window_end),
                    "share_drifted": comparison.share,
                    "drifted_columns": [result.column for result in comparison.columns if result.drifted],
                    "trigger": trigger,
                },
            )
    comparison = comparisons[ALL_TRAFFIC]
    found: dict[str, Any] = {
        "report_id": report_ids[ALL_TRAFFIC],
        "deployment_id": deployment_id,
        "window_start": utc_iso(window_start),
        "window_end": utc_iso(window_end),
        "share_drifted": comparison.share,
        "dataset_drift": comparison.summary.dataset_drift,
        "drifted_columns": [result.column for result in comparison.columns if result.drifted],
        "prediction_drifted": comparison.prediction.drifted if comparison.prediction is not None else None,
        "history_url": f"/api/v1/deployments/{deployment_id}/monitoring/drift/history",
    }
    if len(comparisons) > 1:
        found["segments"] = {
            segment: {
                "report_id": report_ids[segment],
                "share_drifted": compared.share,
                "dataset_drift": compared.summary.dataset_drift,
            }
            for segment, compared in comparisons.items()
            if segment != ALL_TRAFFIC
        }
    return found


def _fold(database: Database, settings: Settings, deployment_id: str, now: datetime) -> None:
    """Fold what settled of the deployment's logs first (unless folding is off), so a
    report sees every request of its window."""
    if settings.monitoring_fold_interval_seconds:
        fold_new_predictions(database, deployment_id, until=now - timedelta(seconds=settle_seconds(settings)))


def request_report(
    session: Session,
    principal: Principal,
    queue: JobQueue,
    deployment_id: str,
    body: DriftReportCreate | None,
) -> DriftReportRequested:
    """Submit the job that computes and stores a report of the window (by default the
    last 24 hours); 409 up front when the reference is not ready."""
    body = body or DriftReportCreate()
    end = body.end if body.end is not None else utcnow()
    start = body.start if body.start is not None else end - DEFAULT_WINDOW
    start, end = bounded_window(start, end)
    deployment = authorized_deployment(session, principal, deployment_id, "write")
    require_ready(session, current_reference(session, deployment.id))
    job = queue.submit(
        session,
        REQUESTED,
        {"deployment_id": deployment.id, "start": start.isoformat(), "end": end.isoformat()},
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        created_by_id=principal.user_id or principal.id,
    )
    audit.describe(
        session,
        resource_type="jobs",
        resource_id=job.id,
        organization_id=deployment.organization_id,
        project_id=deployment.project_id,
        kind=REQUESTED,
        deployment_id=deployment.id,
    )
    return DriftReportRequested(
        job_id=job.id,
        status=str(job.status),
        deployment_id=deployment.id,
        start=start,
        end=end,
        status_url=f"/api/v1/jobs/{job.id}",
    )


@job_handler(REQUESTED)
def requested_report(ctx: JobContext, deployment_id: str, start: str, end: str) -> dict[str, Any]:
    """Fold the deployment's settled logs, then compute and store the window's report."""
    window = (datetime.fromisoformat(start), datetime.fromisoformat(end))
    ctx.progress(0.0, "folding served requests")
    _fold(ctx.database, ctx.settings, deployment_id, utcnow())
    ctx.progress(0.5, "comparing the window with the reference data")
    return report_window(
        ctx.database, ctx.settings, deployment_id, *window, trigger="requested", job_id=ctx.job.id
    )


def due_windows(
    interval: int, closed_end: datetime, not_before: datetime, stored: set[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """The intervals ending at most at ``closed_end`` (the last closed one and up to
    ``CATCH_UP`` before it, none before ``not_before``) without a stored report."""
    step = timedelta(seconds=interval)
    windows = []
    for back in range(CATCH_UP, 0, -1):
        start = closed_end - back * step
        if start + step > not_before and (start, start + step) not in stored:
            windows.append((start, start + step))
    return windows


def scheduled_reports(
    database: Database, settings: Settings, *, now: datetime | None = None
) -> dict[str, Any]:
    """One report per closed interval for every active deployment whose reference is
    ready: the interval ends on a multiple of it (UTC) at least the folding settle time
    before ``now``. One deployment failing leaves the others reported."""
    interval = settings.monitoring_drift_interval_seconds
    if not interval:
        return {"deployments": 0, "reports": 0}
    now = now or utcnow()
    settled = now.timestamp() - settle_seconds(settings)
    closed_end = datetime.fromtimestamp(math.floor(settled / interval) * interval, UTC)
    earliest = closed_end - CATCH_UP * timedelta(seconds=interval)
    with database.session(write=False) as session:
        targets = session.execute(
            select(Deployment.id, Deployment.created_at)
            .join(MonitoringReference, MonitoringReference.deployment_id == Deployment.id)
            .where(MonitoringReference.status == "ready", Deployment.status == DeploymentStatus.active)
            .order_by(Deployment.id)
        ).all()
        stored: dict[str, set[tuple[datetime, datetime]]] = {}
        for deployment_id, window_start, window_end in session.execute(
            select(
                MonitoringDriftReport.deployment_id,
                MonitoringDriftReport.window_start,
                MonitoringDriftReport.window_end,
            ).where(
                MonitoringDriftReport.window_start >= earliest, MonitoringDriftReport.segment == ALL_TRAFFIC
            )
        ):
            stored.setdefault(deployment_id, set()).add((window_start, window_end))
    reports, failed = 0, []
    for deployment_id, created_at in targets:
        try:
            windows = due_windows(interval, closed_end, created_at, stored.get(deployment_id, set()))
            if not windows:
                continue
            _fold(database, settings, deployment_id, now)
            for start, end in windows:
                report_window(database, settings, deployment_id, start, end, trigger="scheduled")
                reports += 1
        except Conflict:
            continue  # the reference changed meanwhile: reported once it is built again
        except Exception:
            logger.exception("could not report the drift of deployment %s", deployment_id)
            failed.append(deployment_id)
    return {"deployments": len(targets), "reports": reports, "failed": failed}


@job_handler(DRIFT_REPORTS)
def scheduled_reports_job(ctx: JobContext) -> dict[str, Any]:
    """Store each active deployment's drift reports for the intervals just closed."""
    ctx.progress(0.0, "reporting drift against each deployment's reference data")
    return scheduled_reports(ctx.database, ctx.settings)


# --- history -----------------------------------------------------------------------------------------
def history(
    session: Session,
    principal: Principal,
    deployment_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    column: str | None = None,
    segment: str | None = None,
) -> DriftHistory:
    """The stored reports whose windows start in ``[start, end)`` (by default the last 7
    days), oldest first: a series for the dataset and one per column (or only ``column``);
    the whole deployment's, or one ``segment``'s."""
    end = end if end is not None else utcnow()
    start = start if start is not None else end - DEFAULT_HISTORY
    start, end = bounded_window(start, end, limit=timedelta(days=366 * 100))
    deployment = authorized_deployment(session, principal, deployment_id)
    key = segments.checked_segment(session, deployment.id, segment)
    where = (
        MonitoringDriftReport.deployment_id == deployment.id,
        MonitoringDriftReport.segment == key,
        MonitoringDriftReport.window_start >= start,
        MonitoringDriftReport.window_start < end,
    )
    count = session.scalar(select(func.count()).select_from(MonitoringDriftReport).where(*where)) or 0
    if count > MAX_HISTORY_POINTS:
        raise ValidationFailed(
            f"At most {MAX_HISTORY_POINTS} reports per history; this window holds {count}: "
            "choose a shorter window",
            details=[("start", f"{count} reports, more than {MAX_HISTORY_POINTS}")],
        )
    dataset: list[DatasetDriftPoint] = []
    series: dict[str, list[ColumnDriftPoint]] = {} if column is None else {column: []}
    for report in session.scalars(
        select(MonitoringDriftReport).where(*where).order_by(MonitoringDriftReport.window_start)
    ):
        dataset.append(
            DatasetDriftPoint(
                window_start=report.window_start,
                window_end=report.window_end,
                share_drifted=report.share_drifted,
                dataset_drift=report.dataset_drift,
                judged_columns=report.judged_columns,
                drifted_columns=report.drifted_columns,
                trigger=report.trigger,  # type: ignore[arg-type]
            )
        )
        for item in report.columns:
            name = item.get("column") if isinstance(item, dict) else None
            if not isinstance(name, str) or (column is not None and name != column):
                continue
            series.setdefault(name, []).append(
                ColumnDriftPoint(
                    window_start=report.window_start,
                    window_end=report.window_end,
                    test=item["test"],
                    statistic=item["statistic"],
                    p_value=item["p_value"],
                    threshold=item["threshold"],
                    verdict=item["verdict"],
                    drifted=item["drifted"],
                    n_current=item["n_current"],
                )
            )
    return DriftHistory(
        deployment_id=deployment.id,
        start=start,
        end=end,
        segment=key or None,
        dataset=dataset,
        columns=[ColumnDriftSeries(column=name, points=points) for name, points in sorted(series.items())],
    )


# --- quantities for alert rules ------------------------------------------------------------------------
def is_drift_quantity(name: str) -> bool:
    return name == DATASET_SHARE or name.startswith(COLUMN_PREFIX)


def drift_quantity(
    session: Session,
    principal: Principal | None,
    deployment_id: str,
    name: str,
    start: datetime,
    end: datetime,
    *,
    segment: str | None = None,
) -> float | None:
    """``dataset_drift_share`` or ``drift.<column>`` over ``[start, end)`` (of the whole
    deployment, or of one ``segment``) against the deployment's reference; None while it
    has no reference ready, when no column (or not that column) could be judged, or for
    an infinite distance."""
    column = name[len(COLUMN_PREFIX) :] if name.startswith(COLUMN_PREFIX) else None
    if column is not None and not column:
        raise ValidationFailed(
            "drift.<column> needs a column name", details=[("name", "no column after drift.")]
        )
    start, end = bounded_window(start, end, limit=MAX_WINDOW)
    deployment = authorized_deployment(session, principal, deployment_id)
    key = segments.checked_segment(session, deployment.id, segment)
    row = current_reference(session, deployment.id)
    if row is None or row.status != "ready":
        return None
    _, reference = ready_reference(session, deployment.id)
    if column is not None:
        if column not in reference:
            raise ValidationFailed(
                f"No column {column[:100]!r} in the deployment's reference data",
                details=[("name", f"known columns: {', '.join(sorted(reference))[:500]}")],
            )
        current = window_profiles(session, deployment.id, start, end, columns=[column], segment=key)
        ref = reference[column]
        cur = current.get(column) or _empty_like(ref)
        if cur.kind != ref.kind:
            return None
        result = column_drift_from_profiles(column, ref, cur)
        return _finite(result.statistic)
    current = window_profiles(session, deployment.id, start, end, segment=key)
    comparison = compare(reference, current, threshold=1.0)
    return comparison.share
