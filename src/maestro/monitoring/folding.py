"""Folding: served requests into hourly profiles, off the inference path.

A worker job (``monitoring.fold``, scheduled every ``MAESTRO_MONITORING_FOLD_INTERVAL_SECONDS``)
reads each deployment's prediction log past its fold mark, a page at a time, and merges
the page into one profile per UTC hour and column: every input feature (numeric), the
prediction (``__prediction__``: numeric for numbers, categorical for labels and booleans)
and each class's probability (``__probability__:<class>``). A page's profiles and the
advanced mark are written in one transaction under a lock on the mark's row (``FOR
UPDATE`` on PostgreSQL; SQLite has one writer at a time), so neither a crash nor two
workers folding the same deployment ever count a log twice. Failed requests and logs
without rows add nothing.

The job reads only logs older than ``settle_seconds`` (``MAESTRO_MONITORING_FOLD_SETTLE_SECONDS``,
a minute, or three flush intervals if longer): serving processes write their logs in
batches, stamped with the time each request was served, so a log may land a little after
a later one from another process.

After folding, the job deletes prediction logs older than
``MAESTRO_PREDICTION_LOG_RETENTION_DAYS`` and below the deployment's fold mark, in
bounded batches; the profiles stay, and ``merged_profiles`` answers for any range of
whole hours from them alone.

With a segment column set (``segments``), each hour's profiles are also kept per
segment, for the logs served since the column was set: the page first fixes any new
values (``segments.grow_values``), then every row is profiled twice, in the whole
deployment's profiles (segment '') and in its segment's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maestro.db import utcnow
from maestro.deployments.predictions import (
    LoggedMatrix,
    delete_logged_before,
    deployments_with_logs,
    logged_matrices,
)
from maestro.jobs.handlers import JobContext, job_handler
from maestro.jobs.maintenance import FOLD
from maestro.monitoring import segments
from maestro.monitoring.models import (
    ALL_TRAFFIC,
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    MonitoringFoldMark,
    MonitoringProfile,
)
from maestro.monitoring.profiles import (
    CategoricalProfile,
    ColumnKind,
    ColumnProfile,
    NumericProfile,
    profile_columns,
)

if TYPE_CHECKING:
    from maestro.config import Settings
    from maestro.db import Database

logger = logging.getLogger("maestro.monitoring")

PAGE = 1000  # logs folded per transaction
DELETE_BATCH = 1000  # logs deleted per transaction
_BEFORE_EVERYTHING = datetime(1970, 1, 1, tzinfo=UTC)

Key = tuple[datetime, str, str]  # an hour's start, a column and a segment ('' for all traffic)


def utc_hour(at: datetime) -> datetime:
    """The start of ``at``'s UTC hour: the key of hourly profiles and of coverage counts."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _prediction_kind(values: Sequence[Any]) -> ColumnKind:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None)
    return "numeric" if numeric else "categorical"


def _prediction_profile(values: list[Any]) -> ColumnProfile:
    if _prediction_kind(values) == "numeric":
        return NumericProfile().update([np.nan if v is None else v for v in values])
    labels = [None if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return CategoricalProfile().update(labels)


def _merged(into: ColumnProfile, other: ColumnProfile) -> bool:
    """Merge ``other`` into ``into`` when both are of one kind; False when they differ."""
    if isinstance(into, NumericProfile) and isinstance(other, NumericProfile):
        into.merge(other)
        return True
    if isinstance(into, CategoricalProfile) and isinstance(other, CategoricalProfile):
        into.merge(other)
        return True
    return False


def _add(found: dict[Key, ColumnProfile], key: Key, profile: ColumnProfile) -> None:
    held = found.get(key)
    if held is None:
        found[key] = profile
    elif not _merged(held, profile):
        logger.warning(
            "column %s changed kind within %s; its %s rows are left out", key[1], key[0], profile.kind
        )


def _folded(log: LoggedMatrix) -> bool:
    return log.status_code < 400 and log.arrays is not None and bool(len(log.arrays.matrix))


def segment_texts(logs: Sequence[LoggedMatrix], segmenting: segments.Segmenting) -> dict[str, list[str]]:
    """Each folded log's rows' values of the segment column as text, by log id, for the
    logs served since the column was set."""
    found: dict[str, list[str]] = {}
    for log in logs:
        if _folded(log) and log.created_at >= segmenting.since:
            assert log.arrays is not None
            found[log.id] = segments.column_texts(log.arrays.columns, log.arrays.matrix, segmenting.column)
    return found


def page_profiles(
    logs: Sequence[LoggedMatrix],
    segmenting: segments.Segmenting | None = None,
    texts: dict[str, list[str]] | None = None,
) -> dict[Key, ColumnProfile]:
    """The profiles of one page of logs, by hour, column and segment (with
    ``segmenting`` and the rows' ``texts`` from ``segment_texts``; '' alone without):
    rows of the same hour, features and segment are stacked first, so a profile is
    built once per batch, not per request."""
    inputs: dict[tuple[datetime, tuple[str, ...], str], list[np.ndarray]] = defaultdict(list)
    predictions: dict[tuple[datetime, str], list[Any]] = defaultdict(list)
    probabilities: dict[tuple[datetime, tuple[str, ...], str], list[np.ndarray]] = defaultdict(list)
    for log in logs:
        arrays = log.arrays
        if not _folded(log):
            continue
        assert arrays is not None
        hour = utc_hour(log.created_at)
        inputs[hour, arrays.columns, ALL_TRAFFIC].append(arrays.matrix)
        predictions[hour, ALL_TRAFFIC].extend(arrays.predictions)
        if arrays.classes is not None and arrays.probabilities is not None:
            probabilities[hour, arrays.classes, ALL_TRAFFIC].append(arrays.probabilities)
        row_texts = (texts or {}).get(log.id)
        if segmenting is None or row_texts is None:
            continue
        rows_of: dict[str, list[int]] = defaultdict(list)
        for index, text in enumerate(row_texts):
            rows_of[segmenting.segment(text)].append(index)
        for segment, rows in rows_of.items():
            inputs[hour, arrays.columns, segment].append(arrays.matrix[rows])
            predictions[hour, segment].extend(
                arrays.predictions[i] for i in rows if i < len(arrays.predictions)
            )
            if arrays.classes is not None and arrays.probabilities is not None:
                probabilities[hour, arrays.classes, segment].append(arrays.probabilities[rows])
    found: dict[Key, ColumnProfile] = {}
    for (hour, columns, segment), matrices in inputs.items():
        built = profile_columns(columns, np.vstack(matrices), ["numeric"] * len(columns))
        for name, profile in built.items():
            _add(found, (hour, name, segment), profile)
    for (hour, segment), values in predictions.items():
        _add(found, (hour, PREDICTION_COLUMN, segment), _prediction_profile(values))
    for (hour, classes, segment), matrices in probabilities.items():
        names = [PROBABILITY_PREFIX + name for name in classes]
        built = profile_columns(names, np.vstack(matrices), ["numeric"] * len(names))
        for name, profile in built.items():
            _add(found, (hour, name, segment), profile)
    return found


def _load(row: MonitoringProfile) -> ColumnProfile:
    loader = NumericProfile if row.kind == "numeric" else CategoricalProfile
    return loader.from_bytes(row.data)


def _store(session: Session, deployment_id: str, found: dict[Key, ColumnProfile]) -> None:
    """Merge a page's profiles into the stored hours (the caller holds the mark's lock,
    so no other folder writes these rows meanwhile)."""
    if not found:
        return
    hours = sorted({hour for hour, _, _ in found})
    stored = {
        (row.hour, row.column, row.segment): row
        for row in session.scalars(
            select(MonitoringProfile).where(
                MonitoringProfile.deployment_id == deployment_id, MonitoringProfile.hour.in_(hours)
            )
        )
    }
    for (hour, column, segment), profile in found.items():
        row = stored.get((hour, column, segment))
        if row is None:
            session.add(
                MonitoringProfile(
                    deployment_id=deployment_id,
                    hour=hour,
                    column=column,
                    segment=segment,
                    kind=profile.kind,
                    rows=profile.count,
                    data=profile.to_bytes(),
                )
            )
            continue
        merged = _load(row)
        if not _merged(merged, profile):
            logger.warning(
                "deployment %s: column %s is %s in %s, its new %s rows are left out",
                deployment_id,
                column,
                row.kind,
                hour,
                profile.kind,
            )
            continue
        row.rows, row.data = merged.count, merged.to_bytes()


def _locked_mark(session: Session, deployment_id: str) -> MonitoringFoldMark:
    """The deployment's fold mark (made, before every log, if it has none), locked until
    the transaction ends."""
    dialect = session.get_bind().dialect.name
    make = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        make(MonitoringFoldMark)
        .values(
            deployment_id=deployment_id, last_created_at=_BEFORE_EVERYTHING, last_id="", updated_at=utcnow()
        )
        .on_conflict_do_nothing(index_elements=["deployment_id"])
    )
    locked = select(MonitoringFoldMark).where(MonitoringFoldMark.deployment_id == deployment_id)
    return session.scalars(locked.with_for_update().execution_options(populate_existing=True)).one()


def _position(deployment_id: str, created_at: datetime, last_id: str) -> LoggedMatrix:
    """A mark as the keyset position ``logged_matrices`` reads after."""
    return LoggedMatrix(
        id=last_id,
        deployment_id=deployment_id,
        model_version_id=None,
        row_count=0,
        status_code=0,
        created_at=created_at,
        arrays=None,
    )


def _unfolded(database: Database, deployment_id: str, until: datetime | None) -> bool:
    """Whether any log waits past the mark: asked without a lock, so a deployment with
    nothing new never takes the write lock."""
    with database.session(write=False) as session:
        mark = session.get(MonitoringFoldMark, deployment_id)
        after = _position(deployment_id, mark.last_created_at, mark.last_id) if mark is not None else None
        return bool(logged_matrices(session, deployment_id, until=until, after=after, limit=1))


def fold_new_predictions(
    database: Database, deployment_id: str, *, page: int = PAGE, until: datetime | None = None
) -> int:
    """Fold the deployment's logs past its mark (and created before ``until``) into its
    hourly profiles, ``page`` logs per transaction; returns how many logs were folded
    (failed requests included: they move the mark and add no rows)."""
    folded = 0
    if not _unfolded(database, deployment_id, until):
        return 0
    while True:
        with database.session(write=True) as session:
            mark = _locked_mark(session, deployment_id)
            logs = logged_matrices(
                session,
                deployment_id,
                until=until,
                after=_position(deployment_id, mark.last_created_at, mark.last_id),
                limit=page,
            )
            if logs:
                segmenting = segments.segmenting(session, deployment_id, lock=True)
                texts = segment_texts(logs, segmenting) if segmenting is not None else None
                if segmenting is not None and texts:
                    grown = segments.grow_values(
                        session, deployment_id, (text for found in texts.values() for text in found)
                    )
                    segmenting = grown
                _store(session, deployment_id, page_profiles(logs, segmenting, texts))
                mark.last_created_at, mark.last_id = logs[-1].created_at, logs[-1].id
                mark.updated_at = utcnow()
        folded += len(logs)
        if len(logs) < page:
            return folded


def fold_all(database: Database, *, until: datetime | None = None) -> dict[str, int]:
    """Fold every deployment with logs past its mark; returns logs folded by deployment
    (those that had any). One deployment failing leaves the others folded."""
    with database.session(write=False) as session:
        deployments = deployments_with_logs(session)
    folded: dict[str, int] = {}
    for deployment_id in deployments:
        try:
            count = fold_new_predictions(database, deployment_id, until=until)
        except Exception:
            logger.exception("could not fold the prediction logs of deployment %s", deployment_id)
            continue
        if count:
            folded[deployment_id] = count
    return folded


def delete_folded_before(database: Database, cutoff: datetime, *, batch: int = DELETE_BATCH) -> int:
    """Delete prediction logs created before ``cutoff`` that are folded already (before
    their deployment's mark), ``batch`` per transaction; returns how many went."""
    with database.session(write=False) as session:
        marks = [(m.deployment_id, m.last_created_at) for m in session.scalars(select(MonitoringFoldMark))]
    deleted = 0
    for deployment_id, folded_until in marks:
        bound = min(cutoff, folded_until)
        while True:
            with database.session(write=True) as session:
                count = delete_logged_before(session, bound, batch, deployment_id=deployment_id)
            deleted += count
            if count < batch:
                break
    return deleted


def merged_profiles(
    session: Session, deployment_id: str, start: datetime, end: datetime, segment: str = ALL_TRAFFIC
) -> dict[str, ColumnProfile]:
    """Each column's profile over the whole hours that overlap ``[start, end)`` (of the
    whole deployment, or of one segment), merged from the stored hours without reading
    a logged row."""
    rows = session.scalars(
        select(MonitoringProfile)
        .where(
            MonitoringProfile.deployment_id == deployment_id,
            MonitoringProfile.segment == segment,
            MonitoringProfile.hour > start - timedelta(hours=1),
            MonitoringProfile.hour < end,
        )
        .order_by(MonitoringProfile.hour)
    )
    merged: dict[str, ColumnProfile] = {}
    for row in rows:
        held = merged.get(row.column)
        if held is None:
            merged[row.column] = _load(row)
        elif not _merged(held, _load(row)):
            logger.warning("deployment %s: column %s changed kind at %s", deployment_id, row.column, row.hour)
    return merged


def settle_seconds(settings: Settings) -> float:
    """How old a prediction log must be before it is folded."""
    return max(settings.monitoring_fold_settle_seconds, 3 * settings.prediction_log_flush_seconds)


def fold_and_prune(database: Database, settings: Settings) -> dict[str, int]:
    """One fold job's work: fold the settled logs, then delete the folded ones past their
    retention period."""
    folded = fold_all(database, until=utcnow() - timedelta(seconds=settle_seconds(settings)))
    cutoff = utcnow() - timedelta(days=settings.prediction_log_retention_days)
    deleted = delete_folded_before(database, cutoff)
    return {
        "deployments_folded": len(folded),
        "logs_folded": sum(folded.values()),
        "logs_deleted": deleted,
    }


FOLD_NICENESS = 10  # added to the server's own: the fold yields the CPU to requests


def fold_in_child_process(settings: Settings) -> dict[str, Any]:
    """``fold_and_prune`` in a child process (``fold_process``) at a lower CPU priority;
    its result, or RuntimeError if it failed (its log lines are the server's)."""
    command = [sys.executable, "-m", "maestro.monitoring.fold_process"]  # this interpreter, no shell
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
    with contextlib.suppress(OSError):  # lowering a priority needs no privilege; a child gone needs none
        os.setpriority(os.PRIO_PROCESS, child.pid, os.getpriority(os.PRIO_PROCESS, 0) + FOLD_NICENESS)
    out, _ = child.communicate(json.dumps(settings.model_dump(mode="json")).encode())
    if child.returncode != 0:
        raise RuntimeError(f"the fold process exited with code {child.returncode}; its log says why")
    return dict(json.loads(out))


@job_handler(FOLD)
def fold_job(ctx: JobContext) -> dict[str, Any]:
    """Fold what serving logged since the last run, then delete folded logs past their
    retention period. A worker inside an API server folds in a child process
    (``fold_process``): the fold is interpreter-bound work that would otherwise take the
    interpreter's lock from the requests being served."""
    ctx.progress(0.0, "folding prediction logs into hourly profiles")
    if ctx.in_server_process:
        return fold_in_child_process(ctx.settings)
    return fold_and_prune(ctx.database, ctx.settings)
