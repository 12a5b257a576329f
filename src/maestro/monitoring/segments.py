"""Segments: one input column of a deployment whose values split its monitoring.

``PUT …/monitoring/segment`` names the column (one of the deployed version's inputs);
from then on folding, ground truth and drift keep each value's rows apart besides the
whole deployment's (segment ''), under the value as text: a number in its shortest
form (``3`` for 3.0, ``2.5``), a missing value as ``__null__``.

Which values are kept apart is fixed as traffic is folded, and never changes until the
column is set again: the first page of logs folded after the column was set (up to
``folding.PAGE`` requests served since) gives its ``MAX_VALUES`` most frequent values;
while fewer are known, every later page adds its most frequent new values (ties by
text) until there are ``MAX_VALUES``. Every other value is ``OTHER``. A label is
counted under the segment its row's value maps to when the label is recorded, so a
row whose value was not yet known (labelled before its hour was folded) counts as
``OTHER``.

Setting a different column, or none, discards every per-segment profile, quality count
and drift report, and the values: earlier hours have no per-segment data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from maestro.db import utcnow
from maestro.errors import ValidationFailed
from maestro.monitoring.models import (
    ALL_TRAFFIC,
    SEGMENT_MAX_LENGTH,
    MonitoringDriftReport,
    MonitoringLabel,
    MonitoringProfile,
    MonitoringQuality,
    MonitoringSettings,
)

MAX_VALUES = 10
OTHER = "__other__"
NULL = "__null__"


@dataclass(frozen=True)
class Segmenting:
    """A deployment's segment column as folding and labelling read it."""

    column: str
    values: tuple[str, ...]
    since: datetime

    @property
    def known(self) -> tuple[str, ...]:
        """Every segment a query may name: the values kept apart, then ``OTHER``."""
        return (*self.values, OTHER)

    def segment(self, value: str) -> str:
        return value if value in self.values else OTHER


def value_text(value: float | None) -> str:
    """A row's value of the segment column as its segment's name."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL
    number = float(value)
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    return repr(number)


def column_texts(columns: Sequence[str], matrix: np.ndarray, column: str) -> list[str]:
    """Each row's value of ``column`` as text (``NULL`` for every row when the rows lack it)."""
    if column not in columns:
        return [NULL] * len(matrix)
    index = list(columns).index(column)
    return [value_text(value) for value in matrix[:, index].tolist()]


def settings_row(session: Session, deployment_id: str, *, lock: bool = False) -> MonitoringSettings | None:
    statement = select(MonitoringSettings).where(MonitoringSettings.deployment_id == deployment_id)
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return session.scalars(statement).one_or_none()


def segmenting(session: Session, deployment_id: str, *, lock: bool = False) -> Segmenting | None:
    """The deployment's segment column, or None when it has none."""
    row = settings_row(session, deployment_id, lock=lock)
    if row is None or row.segment_column is None or row.segment_since is None:
        return None
    return Segmenting(row.segment_column, tuple(row.segment_values or ()), row.segment_since)


def grow_values(session: Session, deployment_id: str, texts: Iterable[str]) -> Segmenting | None:
    """Add the most frequent of ``texts`` (the segment column's values of a page of
    rows served since the column was set) while fewer than ``MAX_VALUES`` are known;
    the caller holds the fold lock, and the settings row is locked here."""
    row = settings_row(session, deployment_id, lock=True)
    if row is None or row.segment_column is None or row.segment_since is None:
        return None
    values = list(row.segment_values or ())
    if len(values) < MAX_VALUES:
        counts = Counter(text for text in texts if text not in values)
        for text, _ in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[
            : MAX_VALUES - len(values)
        ]:
            values.append(text)
        if len(values) != len(row.segment_values or ()):
            row.segment_values = values
    return Segmenting(row.segment_column, tuple(values), row.segment_since)


def set_column(session: Session, deployment_id: str, column: str | None) -> MonitoringSettings:
    """Set (or clear) the segment column; a different column than before discards the
    per-segment data and values, and segments from now on."""
    row = settings_row(session, deployment_id, lock=True)
    if row is None:
        row = MonitoringSettings(deployment_id=deployment_id, segment_column=None, segment_values=[])
        session.add(row)
    if row.segment_column == column:
        return row
    for model in (MonitoringProfile, MonitoringQuality, MonitoringDriftReport):
        session.execute(
            delete(model).where(model.deployment_id == deployment_id, model.segment != ALL_TRAFFIC)
        )
    session.execute(
        update(MonitoringLabel)
        .where(MonitoringLabel.deployment_id == deployment_id, MonitoringLabel.segment.is_not(None))
        .values(segment=None)
    )
    row.segment_column = column
    row.segment_values = []
    row.segment_since = utcnow() if column is not None else None
    row.updated_at = utcnow()
    session.flush()
    return row


def checked_segment(session: Session, deployment_id: str, segment: str | None) -> str:
    """The segment a query names ('' for the whole deployment when none), once it is
    one the deployment keeps apart; 422 listing those otherwise."""
    if segment is None:
        return ALL_TRAFFIC
    if len(segment) > SEGMENT_MAX_LENGTH or not segment:
        raise ValidationFailed(
            f"A segment is 1 to {SEGMENT_MAX_LENGTH} characters",
            details=[("segment", f"1 to {SEGMENT_MAX_LENGTH} characters")],
        )
    found = segmenting(session, deployment_id)
    if found is None:
        raise ValidationFailed(
            "The deployment has no segment column; set one with PUT …/monitoring/segment",
            details=[("segment", "no segment column set")],
        )
    if segment not in found.known:
        known = ", ".join(found.known)
        raise ValidationFailed(
            f"Unknown segment {segment[:50]!r} of column {found.column!r}; known: {known}",
            details=[("segment", f"known: {known}")],
        )
    return segment
