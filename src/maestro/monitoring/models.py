"""Monitoring's tables: each deployment's served inputs and predictions folded into one
profile per hour and column (``profiles``), and how far into the prediction log the
folding has read. Hours merge into any longer window without the raw rows, so the
prediction log itself may be deleted after its retention period. Ground truth: the
labels sent for logged predictions, and their quality counts per minute of the
predictions. Drift compares those hours with a deployment's reference data
(``MonitoringReference``, profiled once into ``MonitoringReferenceProfile``) and keeps
what it found (``MonitoringDriftReport``). A deployment may name one input column as its
segment (``MonitoringSettings``): profiles, quality counts and drift reports are then
kept per value of that column too, under ``segment`` (``ALL_TRAFFIC``, '', is the
whole deployment's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, JSONType, TimestampMixin, utcnow

PREDICTION_COLUMN = "__prediction__"  # the predicted value, beside the inputs by feature name
PROBABILITY_PREFIX = "__probability__:"  # then a class name: that class's probability
ALL_TRAFFIC = ""  # the segment key of the whole deployment's rows
SEGMENT_MAX_LENGTH = 200


class MonitoringProfile(IdMixin, Base):
    """One column of one deployment over one UTC hour: ``data`` is the profile's
    ``to_bytes()`` (``profiles.NumericProfile`` or ``CategoricalProfile`` by ``kind``)."""

    __tablename__ = "monitoring_profiles"
    id_prefix = "mprof"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    hour: Mapped[datetime]  # the hour's start
    column: Mapped[str] = mapped_column(String(300))
    # a value of the deployment's segment column, or '' (ALL_TRAFFIC) for every row
    segment: Mapped[str] = mapped_column(String(SEGMENT_MAX_LENGTH), default=ALL_TRAFFIC)
    kind: Mapped[str] = mapped_column(String(20))  # numeric or categorical
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "hour", "column", "segment"),)


class MonitoringFoldMark(Base):
    """The last prediction log folded into a deployment's profiles, in the log's keyset
    order (time, then id): folding goes on after it and never reads a log twice."""

    __tablename__ = "monitoring_fold_marks"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    last_created_at: Mapped[datetime]
    last_id: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MonitoringLabel(Base):
    """The true label of one row of a logged prediction (ground truth, sent later), with
    what that row answered, so the label's share of its minute's quality counts can be
    taken out again when the label is replaced, even after the prediction log itself is
    gone. ``minute`` is the prediction's, never the label's."""

    __tablename__ = "monitoring_labels"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    prediction_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    row_index: Mapped[int] = mapped_column(primary_key=True)
    minute: Mapped[datetime]  # the prediction's UTC minute
    model_version_id: Mapped[str | None] = mapped_column(String(40))
    answers: Mapped[str] = mapped_column(String(10))  # label (a classifier) or value (a regressor)
    actual: Mapped[Any] = mapped_column(JSONType)  # a class name, or a number
    predicted: Mapped[Any] = mapped_column(
        JSONType, nullable=True
    )  # as the row answered (a class name, a number, null)
    classes: Mapped[list[Any] | None]  # the probabilities' class names, in the model's order
    probabilities: Mapped[list[Any] | None]  # one per class (null where the model gave NaN)
    segment: Mapped[str | None] = mapped_column(String(SEGMENT_MAX_LENGTH))  # counted there too, if any
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_monitoring_labels_deployment_id_minute", "deployment_id", "minute"),)


class MonitoringQuality(IdMixin, Base):
    """The labelled rows of one deployment's predictions of one UTC minute, as mergeable
    and subtractable counts (``quality.QualityCounts.to_bytes()``): any window's quality
    is computed from the sum of its minutes, never from per-minute scores. ``labels``
    is the count of labelled rows, readable without decoding ``data``."""

    __tablename__ = "monitoring_quality"
    id_prefix = "mqual"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    minute: Mapped[datetime]
    segment: Mapped[str] = mapped_column(String(SEGMENT_MAX_LENGTH), default=ALL_TRAFFIC)
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "minute", "segment"),)


class MonitoringReference(IdMixin, TimestampMixin, Base):
    """What a deployment's traffic is compared with: a dataset file of its project (named
    directly, or as the training data of the deployed version's model card) or a window
    of its own traffic. Profiled once by a job into ``MonitoringReferenceProfile`` rows;
    ``generation`` grows at every change, so a job built for an older setting never
    stores its profiles over a newer one's."""

    __tablename__ = "monitoring_references"
    id_prefix = "mref"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), unique=True)
    source: Mapped[str] = mapped_column(String(20))  # dataset, training_data or traffic
    dataset_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    # Where the dataset's bytes were stored, and their format, as the files domain answered
    # when the reference was set: what the profiling job reads.
    dataset_key: Mapped[str | None] = mapped_column(String(500))
    dataset_format: Mapped[str | None] = mapped_column(String(30))
    prediction_column: Mapped[str | None] = mapped_column(String(300))
    model_version_id: Mapped[str | None] = mapped_column(String(40))  # whose card named the data
    reference_start: Mapped[datetime | None]
    reference_end: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(20))  # pending, building, ready or failed
    error: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(default=1)
    job_id: Mapped[str | None] = mapped_column(String(40))
    rows: Mapped[int | None] = mapped_column(BigInteger)
    skipped: Mapped[list[Any] | None]  # [[column, why], …]: dataset columns left out
    built_at: Mapped[datetime | None]
    created_by_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class MonitoringReferenceProfile(IdMixin, Base):
    """One column of a reference: ``data`` is the profile's ``to_bytes()``, as in
    ``MonitoringProfile``."""

    __tablename__ = "monitoring_reference_profiles"
    id_prefix = "mrefp"

    reference_id: Mapped[str] = mapped_column(ForeignKey("monitoring_references.id", ondelete="CASCADE"))
    column: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("reference_id", "column"),)


class MonitoringDriftReport(IdMixin, Base):
    """Drift of one window of a deployment's traffic against its reference, as computed
    then: the dataset-level figures and, in ``columns``, each column's test, statistic,
    threshold and verdict. One report per window: a later one replaces it."""

    __tablename__ = "monitoring_drift_reports"
    id_prefix = "mdrift"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    segment: Mapped[str] = mapped_column(String(SEGMENT_MAX_LENGTH), default=ALL_TRAFFIC)
    trigger: Mapped[str] = mapped_column(String(20))  # scheduled or requested
    reference: Mapped[dict[str, Any]]  # source, dataset_file_id, window, generation
    judged_columns: Mapped[int]
    drifted_columns: Mapped[int]
    share_drifted: Mapped[float | None]  # null when no column could be judged
    dataset_drift: Mapped[bool]
    any_drift_corrected: Mapped[bool]
    columns: Mapped[list[Any]]
    warnings: Mapped[list[Any]]
    job_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "window_start", "window_end", "segment"),)


class MonitoringSettings(Base):
    """A deployment's monitoring settings: the input column whose values segment its
    monitoring (``segment_column``; null for none), the values kept apart
    (``segment_values``, at most ``segments.MAX_VALUES``, in the order they were
    fixed; every other value is ``__other__``), and when the column was set: logs
    served before ``segment_since`` are in no segment."""

    __tablename__ = "monitoring_settings"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    segment_column: Mapped[str | None] = mapped_column(String(300))
    segment_values: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    segment_since: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
