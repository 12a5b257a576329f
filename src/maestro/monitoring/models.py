"""Monitoring's tables: each deployment's served inputs and predictions folded into one
profile per hour and column (``profiles``), and how far into the prediction log the
folding has read. Hours merge into any longer window without the raw rows, so the
prediction log itself may be deleted after its retention period."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from maestro.db import Base, IdMixin, utcnow

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
