"""Monitoring's tables: each deployment's served inputs and predictions folded into one
profile per hour and column (``profiles``), and how far into the prediction log the
folding has read. Hours merge into any longer window without the raw rows, so the
prediction log itself may be deleted after its retention period. Ground truth: the
labels sent for logged predictions, and their quality counts per minute of the
predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, JSONType, utcnow

PREDICTION_COLUMN = "__prediction__"  # the predicted value, beside the inputs by feature name
PROBABILITY_PREFIX = "__probability__:"  # then a class name: that class's probability


class MonitoringProfile(IdMixin, Base):
    """One column of one deployment over one UTC hour: ``data`` is the profile's
    ``to_bytes()`` (``profiles.NumericProfile`` or ``CategoricalProfile`` by ``kind``)."""

    __tablename__ = "monitoring_profiles"
    id_prefix = "mprof"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    hour: Mapped[datetime]  # the hour's start
    column: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20))  # numeric or categorical
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "hour", "column"),)


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
    labels: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "minute"),)
