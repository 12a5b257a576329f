"""Ground truth: true labels joined to logged predictions, and the quality they give.

``record_labels`` joins each label to the row of the logged prediction it names (read
through ``deployments.predictions.logged_answers``, never the table), keeps it in
``monitoring_labels`` with what that row answered, and adds its counts
(``quality.QualityCounts``) to the quality row of the prediction's minute, taking out
first what a label it replaces had added. The minutes' rows are locked before the
labels already stored are read (``FOR UPDATE`` on PostgreSQL; SQLite has one writer
at a time), so two requests labelling the same minute never lose an update.

``quality_figures`` merges the minutes of a window (and of each interval) before
computing, and sets label coverage against the logged prediction rows of the whole
hours the window touches: monitoring's hourly ``__prediction__`` profiles for what
folding has read, plus the rows logged past the fold mark, which are never deleted
before they are folded. Both stay right after the raw logs' retention period.

With a segment column set, a labelled row served since it was set also counts in its
segment's quality row of that minute (the segment its input value maps to when the
label is recorded, kept with the label so a replacement takes out the same counts).
A segment's label coverage is against the rows folding has read for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maestro.db import new_id, utcnow
from maestro.deployments.predictions import LoggedAnswers, logged_answers, logged_rows_by_hour
from maestro.errors import ValidationFailed
from maestro.monitoring import segments
from maestro.monitoring.folding import utc_hour
from maestro.monitoring.models import (
    ALL_TRAFFIC,
    PREDICTION_COLUMN,
    MonitoringFoldMark,
    MonitoringLabel,
    MonitoringProfile,
    MonitoringQuality,
)
from maestro.monitoring.quality import Figures, Labelled, QualityCounts
from maestro.monitoring.schemas import GroundTruthItem, GroundTruthResult, UnknownPrediction

CHUNK = 500  # ids or keys per query
MAX_REFUSALS_LISTED = 20
T = TypeVar("T")
Key = tuple[str, int]  # a prediction id and a row


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# --- what a labelled row answered ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answered:
    """One logged row as a label is joined to it, in its stored form."""

    minute: datetime
    model_version_id: str | None
    answers: str  # label or value
    predicted: Any  # a class name, a number, or None
    classes: tuple[str, ...] | None
    probabilities: tuple[float | None, ...] | None
    segment: str | None = None  # where else than the whole deployment's counts it counts

    def labelled(self, actual: Any) -> Labelled:
        return Labelled(self.answers, actual, self.predicted, self.classes, self.probabilities)


def _row_segment(logged: LoggedAnswers, row: int, segmenting: segments.Segmenting | None) -> str | None:
    if segmenting is None or logged.created_at < segmenting.since or logged.matrix is None:
        return None
    if row >= len(logged.matrix):
        return None
    texts = segments.column_texts(logged.columns, logged.matrix[row : row + 1], segmenting.column)
    return segmenting.segment(texts[0])


def _row_answer(logged: LoggedAnswers, row: int, segmenting: segments.Segmenting | None = None) -> Answered:
    value = logged.predictions[row]
    predicted: Any
    if logged.answers == "label":
        predicted = None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    else:
        predicted = _finite(value)
    probabilities = None
    if logged.classes is not None and logged.probabilities is not None:
        probabilities = tuple(_finite(p) for p in logged.probabilities[row].tolist())
    return Answered(
        minute=_minute(logged.created_at),
        model_version_id=logged.model_version_id,
        answers=logged.answers,
        predicted=predicted,
        classes=logged.classes if probabilities is not None else None,
        probabilities=probabilities,
        segment=_row_segment(logged, row, segmenting),
    )


def _stored_answer(label: MonitoringLabel) -> Answered:
    return Answered(
        minute=label.minute,
        model_version_id=label.model_version_id,
        answers=label.answers,
        predicted=label.predicted,
        classes=tuple(label.classes) if label.classes is not None else None,
        probabilities=tuple(label.probabilities) if label.probabilities is not None else None,
        segment=label.segment,
    )


def _resolve(
    session: Session, deployment_id: str, keys: Sequence[Key], segmenting: segments.Segmenting | None = None
) -> dict[Key, Answered]:
    """What each (prediction, row) answered: from the prediction log, or, once the log is
    gone, from a label stored for that row before."""
    rows_of: dict[str, set[int]] = defaultdict(set)
    for prediction_id, row in keys:
        rows_of[prediction_id].add(row)
    ids = list(rows_of)
    found: dict[Key, Answered] = {}
    for some in _chunks(ids):
        for prediction_id, logged in logged_answers(session, deployment_id, some).items():
            for row in rows_of[prediction_id]:
                if row < len(logged.predictions):
                    found[prediction_id, row] = _row_answer(logged, row, segmenting)
    missing = [key for key in keys if key not in found]
    for chunk in _chunks(missing):
        for label in session.scalars(
            select(MonitoringLabel).where(
                MonitoringLabel.deployment_id == deployment_id,
                tuple_(MonitoringLabel.prediction_id, MonitoringLabel.row_index).in_(list(chunk)),
            )
        ):
            found[label.prediction_id, label.row_index] = _stored_answer(label)
    return found


# --- checking a label against the model ---------------------------------------------------------
def _actual(answered: Answered, actual: Any) -> tuple[Any, str | None]:
    """The label in its stored form (a class name, or a number), or why it does not fit."""
    if answered.answers == "value":
        number = _finite(actual)
        if number is None:
            return None, f"{actual!r} is not a number, and this prediction is a regressor's value"
        return number, None
    candidates = [str(actual)]
    if isinstance(actual, int) and not isinstance(actual, bool):
        candidates.append(str(float(actual)))
    elif isinstance(actual, float) and actual.is_integer():
        candidates.append(str(int(actual)))
    if answered.classes is None:
        return candidates[0], None
    for candidate in candidates:
        if candidate in answered.classes:
            return candidate, None
    named = ", ".join(repr(name) for name in answered.classes[:20])
    return None, f"{actual!r} is not one of the model's classes ({named})"


# --- locking a deployment's minutes -----------------------------------------------------------
MinuteKey = tuple[datetime, str]  # a minute and a segment ('' for the whole deployment)


def _locked_minutes(
    session: Session, deployment_id: str, minutes: Iterable[MinuteKey]
) -> dict[MinuteKey, MonitoringQuality]:
    """The quality rows of ``minutes`` (made empty where missing), locked until the
    transaction ends, taken in time order so two writers never wait on each other."""
    ordered = sorted(set(minutes))
    make = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    empty, now = QualityCounts().to_bytes(), utcnow()
    locked: dict[MinuteKey, MonitoringQuality] = {}
    for chunk in _chunks(ordered):
        session.execute(
            make(MonitoringQuality)
            .values(
                [
                    {
                        "id": new_id(MonitoringQuality.id_prefix),
                        "deployment_id": deployment_id,
                        "minute": minute,
                        "segment": segment,
                        "labels": 0,
                        "data": empty,
                        "updated_at": now,
                    }
                    for minute, segment in chunk
                ]
            )
            .on_conflict_do_nothing(index_elements=["deployment_id", "minute", "segment"])
        )
    for chunk in _chunks(ordered):
        rows = session.scalars(
            select(MonitoringQuality)
            .where(
                MonitoringQuality.deployment_id == deployment_id,
                tuple_(MonitoringQuality.minute, MonitoringQuality.segment).in_(list(chunk)),
            )
            .order_by(MonitoringQuality.minute, MonitoringQuality.segment)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        locked.update({(_minute(row.minute), row.segment): row for row in rows})
    return locked


def _segments_touched(segment: str | None) -> set[str]:
    """The quality rows a label of a row in ``segment`` may change: the whole
    deployment's, its segment's, and ``OTHER``'s (a label stored before the row's value
    was known counted there)."""
    return {ALL_TRAFFIC} if segment is None else {ALL_TRAFFIC, segment, segments.OTHER}


def _add_change(changes: dict[MinuteKey, QualityCounts], row: Answered, actual: Any, sign: int = 1) -> None:
    for segment in {ALL_TRAFFIC, row.segment or ALL_TRAFFIC}:
        changes[row.minute, segment].add(row.labelled(actual), sign)


# --- recording labels ----------------------------------------------------------------------
def record_labels(
    session: Session, deployment_id: str, items: Sequence[GroundTruthItem]
) -> GroundTruthResult:
    """Join ``items`` to the deployment's logged predictions and count them; the last
    label sent for a (prediction, row) wins. Nothing is stored when any label does not
    fit its prediction (the 422 names the items)."""
    last: dict[Key, tuple[int, Any]] = {}
    for index, item in enumerate(items):
        last[item.prediction_id, item.row] = (index, item.actual)
    keys = list(last)
    # Locked first (before the minutes, as a change of the column takes it), so the
    # column cannot change while these labels are counted.
    segmenting = segments.segmenting(session, deployment_id, lock=True)
    answered = _resolve(session, deployment_id, keys, segmenting)

    refusals: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        known = answered.get((item.prediction_id, item.row))
        if known is not None:
            _, why = _actual(known, item.actual)
            if why is not None:
                refusals.append((f"items.{index}.actual", why))
    if refusals:
        first_field, first_reason = refusals[0]
        raise ValidationFailed(
            f"Item {first_field.split('.')[1]}: {first_reason}; no label was stored",
            details=refusals[:MAX_REFUSALS_LISTED],
        )

    unknown = [UnknownPrediction(prediction_id=p, row=r) for p, r in keys if (p, r) not in answered]
    matched = [key for key in keys if key in answered]
    if not matched:
        return GroundTruthResult(matched=0, updated=0, unknown_count=len(unknown), unknown=unknown)

    locked = _locked_minutes(
        session,
        deployment_id,
        (
            (answered[key].minute, segment)
            for key in matched
            for segment in _segments_touched(answered[key].segment)
        ),
    )
    stored: dict[Key, MonitoringLabel] = {}
    for chunk in _chunks(matched):
        for label in session.scalars(
            select(MonitoringLabel)
            .where(
                MonitoringLabel.deployment_id == deployment_id,
                tuple_(MonitoringLabel.prediction_id, MonitoringLabel.row_index).in_(list(chunk)),
            )
            .execution_options(populate_existing=True)
        ):
            stored[label.prediction_id, label.row_index] = label

    changes: dict[MinuteKey, QualityCounts] = defaultdict(QualityCounts)
    updated = 0
    now = utcnow()
    for key in matched:
        held = stored.get(key)
        # A replaced label's counts are taken out, and the new one's put in, from the row
        # as stored with the label: exactly what was added before.
        row = _stored_answer(held) if held is not None else answered[key]
        actual, _ = _actual(row, last[key][1])
        if held is not None:
            updated += 1
            _add_change(changes, row, held.actual, -1)
            held.actual, held.updated_at = actual, now
        else:
            session.add(
                MonitoringLabel(
                    deployment_id=deployment_id,
                    prediction_id=key[0],
                    row_index=key[1],
                    minute=row.minute,
                    model_version_id=row.model_version_id,
                    answers=row.answers,
                    actual=actual,
                    predicted=row.predicted,
                    classes=list(row.classes) if row.classes is not None else None,
                    probabilities=list(row.probabilities) if row.probabilities is not None else None,
                    segment=row.segment,
                    created_at=now,
                    updated_at=now,
                )
            )
        _add_change(changes, row, actual)
    for minute_key, change in changes.items():
        quality = locked[minute_key]
        counts = QualityCounts.from_bytes(quality.data).merge(change)
        quality.labels, quality.data, quality.updated_at = counts.labels, counts.to_bytes(), now
    session.flush()
    return GroundTruthResult(
        matched=len(matched), updated=updated, unknown_count=len(unknown), unknown=unknown
    )


# --- reading quality over a window ---------------------------------------------------------------
def _segment_rows_by_hour(
    session: Session, deployment_id: str, since: datetime, until: datetime, segment: str
) -> dict[datetime, int]:
    """A segment's prediction rows per UTC hour, as folding has read them."""
    counted: dict[datetime, int] = defaultdict(int)
    for hour, rows in session.execute(
        select(MonitoringProfile.hour, MonitoringProfile.rows).where(
            MonitoringProfile.deployment_id == deployment_id,
            MonitoringProfile.column == PREDICTION_COLUMN,
            MonitoringProfile.segment == segment,
            MonitoringProfile.hour >= since,
            MonitoringProfile.hour < until,
        )
    ):
        counted[utc_hour(hour)] += rows
    return counted


def _logged_rows_by_hour(
    session: Session, deployment_id: str, since: datetime, until: datetime
) -> dict[datetime, int]:
    """Logged prediction rows per UTC hour in [since, until): what folding has read, from
    the hourly ``__prediction__`` profiles, and what it has not, from the log past the
    fold mark. The mark is read again after, and all of it once more if folding moved
    it meanwhile (so no page is counted in both or in neither)."""

    def mark() -> tuple[datetime, str] | None:
        found = session.scalars(
            select(MonitoringFoldMark)
            .where(MonitoringFoldMark.deployment_id == deployment_id)
            .execution_options(populate_existing=True)
        ).one_or_none()
        return (found.last_created_at, found.last_id) if found is not None else None

    counted: dict[datetime, int] = defaultdict(int)
    for _attempt in range(3):
        before = mark()
        counted = defaultdict(int)
        for hour, rows in session.execute(
            select(MonitoringProfile.hour, MonitoringProfile.rows).where(
                MonitoringProfile.deployment_id == deployment_id,
                MonitoringProfile.column == PREDICTION_COLUMN,
                MonitoringProfile.segment == ALL_TRAFFIC,
                MonitoringProfile.hour >= since,
                MonitoringProfile.hour < until,
            )
        ):
            counted[utc_hour(hour)] += rows
        unfolded = logged_rows_by_hour(session, deployment_id, since=since, until=until, after=before)
        for hour, rows in unfolded.items():
            counted[hour] += rows
        if mark() == before:
            break
    return counted


def quality_figures(
    session: Session,
    deployment_id: str,
    start: datetime,
    end: datetime,
    *,
    first: float | None = None,
    step: int | None = None,
    segment: str = ALL_TRAFFIC,
) -> tuple[Figures, dict[int, Figures]]:
    """The quality figures of [start, end), and with ``step`` those of each interval of
    ``step`` seconds from the epoch second ``first`` (by index; intervals without labels
    have no labels but may have coverage). A labelled row counts in the window its
    prediction's minute starts in; coverage counts the whole hours a window touches.
    With ``segment``, that segment's labelled rows (and its folded rows for coverage)."""
    overall = QualityCounts()
    intervals: dict[int, QualityCounts] = defaultdict(QualityCounts)
    since, until = utc_hour(start), utc_hour(end - timedelta(microseconds=1)) + timedelta(hours=1)
    labelled: dict[datetime, int] = defaultdict(int)
    rows = session.execute(
        select(MonitoringQuality.minute, MonitoringQuality.labels, MonitoringQuality.data)
        .where(
            MonitoringQuality.deployment_id == deployment_id,
            MonitoringQuality.segment == segment,
            MonitoringQuality.minute >= since,
            MonitoringQuality.minute < until,
            MonitoringQuality.labels > 0,
        )
        .order_by(MonitoringQuality.minute)
    )
    for minute, labels, data in rows:
        labelled[utc_hour(minute)] += labels
        if not start <= minute < end:
            continue
        counts = QualityCounts.from_bytes(data)
        overall.merge(counts)
        if step is not None and first is not None:
            intervals[int((minute.timestamp() - first) // step)].merge(counts)
    logged = (
        _logged_rows_by_hour(session, deployment_id, since, until)
        if segment == ALL_TRAFFIC
        else _segment_rows_by_hour(session, deployment_id, since, until, segment)
    )

    def coverage(opens: datetime, closes: datetime) -> float | None:
        hours = _hours(opens, closes)
        rows_logged = sum(logged.get(hour, 0) for hour in hours)
        if rows_logged <= 0:
            return None
        return min(1.0, sum(labelled.get(hour, 0) for hour in hours) / rows_logged)

    figures = overall.figures()
    figures["label_coverage"] = coverage(start, end)
    per_interval: dict[int, Figures] = {}
    if step is not None and first is not None:
        count = math.ceil((end.timestamp() - first) / step)
        for index in range(count):
            opens = max(start, datetime.fromtimestamp(first + index * step, UTC))
            closes = min(end, datetime.fromtimestamp(first + (index + 1) * step, UTC))
            found = intervals[index].figures() if index in intervals else QualityCounts().figures()
            found["label_coverage"] = coverage(opens, closes)
            per_interval[index] = found
    return figures, per_interval


def _hours(opens: datetime, closes: datetime) -> list[datetime]:
    """The UTC hours [opens, closes) touches."""
    hour, found = utc_hour(opens), []
    while hour < closes:
        found.append(hour)
        hour += timedelta(hours=1)
    return found
