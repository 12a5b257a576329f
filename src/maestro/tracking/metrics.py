"""The metric store: bulk ingestion, latest values, history and downsampling.

A batch is one bulk statement for its points and one upsert for the latest values,
in the request's transaction. Per point, Python only builds a tuple: the points go
to the driver as they are, an ``executemany`` on SQLite (SQLAlchemy Core's own
executemany spent twice as long building parameters as SQLite spent inserting) and
``COPY`` on PostgreSQL (six times faster there than psycopg's executemany or
SQLAlchemy's insertmanyvalues, which bind one row at a time or build statements
in Python).

NaN is stored as NULL (SQLite turns NaN into NULL anyway, so both databases agree):
a NaN value matches no comparison in a search and never makes a run the best one.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from maestro.api.pagination import TokenError, decode_token, encode_token
from maestro.errors import ValidationFailed
from maestro.tracking.models import LatestMetric, MetricPoint, Run
from maestro.tracking.schemas import KEY_PATTERN, NON_FINITE, MetricIn, path_safe_key

_POINTS = MetricPoint.__table__
_LATEST = LatestMetric.__table__
_KEY = re.compile(KEY_PATTERN)
COPY_POINTS = "COPY run_metrics (run_id, key, value, timestamp, step) FROM STDIN"
INSERT_POINTS = "INSERT INTO run_metrics (run_id, key, value, timestamp, step) VALUES (?, ?, ?, ?, ?)"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_names(names: Iterable[str]) -> None:
    """Metric names follow the rule of every key (``schemas.Key``), checked once per name."""
    for name in names:
        try:
            if not _KEY.fullmatch(name):
                raise ValueError("may hold letters, digits, spaces and _ - . / : only")
            path_safe_key(name)
        except ValueError as exc:
            raise ValidationFailed(
                "Invalid metric name", details=[("metrics.name", f"{name[:100]!r}: {exc}")]
            ) from exc


@dataclass(frozen=True)
class Latest:
    value: float | None
    step: int
    timestamp: int


# --- ingestion -----------------------------------------------------------------------------
def _stored(value: float | str) -> float | None:
    """A point's value as stored: NaN is NULL."""
    if isinstance(value, str):
        value = NON_FINITE[value]
    return None if value != value else value


def log_points(session: Session, run: Run, points: Sequence[MetricIn]) -> list[str]:
    """Store a batch of points and bring the run's latest values up to date; returns
    the metric names, sorted."""
    now = now_ms()
    run_id = run.id
    rows = [
        (
            run_id,
            point.name,
            _stored(point.value),
            now if point.timestamp is None else point.timestamp,
            point.step,
        )
        for point in points
    ]
    latest: dict[str, tuple[str, str, float | None, int, int]] = {}
    for row in rows:
        held = latest.get(row[1])
        if held is None or (row[4], row[3]) >= (held[4], held[3]):
            latest[row[1]] = row
    names = sorted(latest)
    check_names(names)

    connection = session.connection()
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None  # a checked-out connection always has its driver's
        cursor = driver.cursor()
        with cursor.copy(COPY_POINTS) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        connection.exec_driver_sql(INSERT_POINTS, rows)
    upsert_latest(
        session,
        run.experiment_id,
        # In key order, so concurrent batches of one run lock the same rows in the same order.
        [latest[name] for name in names],
    )
    return names


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """Built once per dialect: building it (its ``excluded`` columns above all) costs
    more than running it for one point."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_LATEST)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[_LATEST.c.run_id, _LATEST.c.key],
        set_={"value": excluded.value, "timestamp": excluded.timestamp, "step": excluded.step},
        where=or_(
            excluded.step > _LATEST.c.step,
            and_(excluded.step == _LATEST.c.step, excluded.timestamp >= _LATEST.c.timestamp),
        ),
    )


def upsert_latest(
    session: Session, experiment_id: str, rows: Sequence[tuple[str, str, float | None, int, int]]
) -> None:
    """One upsert for the batch: a key's row changes only for a higher (step,
    timestamp), or the same one logged again (the later value wins)."""
    if not rows:
        return
    connection = session.connection()
    connection.execute(
        _upsert_statement(connection.dialect.name),
        [
            {
                "run_id": r[0],
                "key": r[1],
                "experiment_id": experiment_id,
                "value": r[2],
                "timestamp": r[3],
                "step": r[4],
            }
            for r in rows
        ],
    )


# --- reading -------------------------------------------------------------------------------
def latest_by_run(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, Latest]]:
    """Every latest value of the given runs, by run and metric name, in one query."""
    found: dict[str, dict[str, Latest]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return found
    for run_id, key, value, step, timestamp in session.execute(
        select(_LATEST.c.run_id, _LATEST.c.key, _LATEST.c.value, _LATEST.c.step, _LATEST.c.timestamp)
        .where(_LATEST.c.run_id.in_(run_ids))
        .order_by(_LATEST.c.run_id, _LATEST.c.key)
    ):
        found[run_id][key] = Latest(value, step, timestamp)
    return found


@dataclass(frozen=True)
class Point:
    id: int
    step: int
    timestamp: int
    value: float | None


@dataclass(frozen=True)
class HistoryPage:
    total: int
    points: list[Point]
    downsampled: bool
    next_cursor: str | None


def _encode_cursor(step: int, point_id: int) -> str:
    return encode_token(["h", step, point_id])


def _decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        _, step, point_id = decode_token(cursor, kind="h", length=3)
        if type(step) is not int or type(point_id) is not int:
            raise TokenError("not a history cursor")
        if not (-(2**63) <= step < 2**63 and 0 <= point_id < 2**63):
            raise TokenError("out of range")
        return step, point_id
    except TokenError as exc:
        raise ValidationFailed(
            "The cursor is not valid for this history; start again without it",
            details=[("cursor", "malformed")],
        ) from exc


def _series(run_id: str, key: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (MetricPoint.run_id == run_id, MetricPoint.key == key)


def history(session: Session, run_id: str, key: str, *, limit: int, cursor: str | None) -> HistoryPage:
    """Raw points in (step, insertion) order, a page at a time, by keyset."""
    where = list(_series(run_id, key))
    total = session.scalar(select(func.count()).select_from(_POINTS).where(*where)) or 0
    if cursor is not None:
        where.append(tuple_(MetricPoint.step, MetricPoint.id) > tuple_(*_decode_cursor(cursor)))
    rows = session.execute(
        select(MetricPoint.id, MetricPoint.step, MetricPoint.timestamp, MetricPoint.value)
        .where(*where)
        .order_by(MetricPoint.step, MetricPoint.id)
        .limit(limit + 1)
    ).all()
    points = [Point(*row) for row in rows[:limit]]
    next_cursor = _encode_cursor(points[-1].step, points[-1].id) if len(rows) > limit else None
    return HistoryPage(total, points, False, next_cursor)


DOWNSAMPLE_MAX_SCAN = 1_000_000
HEAVY_SERIES = 50_000  # points: from here on a downsampling takes a turn of the shared pool


def _lowest_and_highest(
    session: Session, scope: Sequence[ColumnElement[bool]], bucket: ColumnElement[int]
) -> list[Any]:
    """In each bucket the point with the lowest value and the one with the highest (NaN
    only where the bucket holds nothing else), found by the database in grouped scans
    that return a row or two per bucket. SQLite takes the other columns of a
    ``min()``/``max()`` aggregate from the row that holds the extreme (its documented
    bare-column rule; among equal values, any of them). PostgreSQL groups once for each
    bucket's lowest and highest value, then keeps, of the points holding one, the first
    by step (``DISTINCT ON``)."""
    columns = (MetricPoint.id, MetricPoint.step, MetricPoint.timestamp)
    rows: list[Any] = []
    if session.get_bind().dialect.name == "sqlite":
        for extreme in (func.min, func.max):
            rows += session.execute(
                select(*columns, extreme(MetricPoint.value)).where(*scope).group_by(bucket)
            ).all()
        return rows
    points = select(*columns, MetricPoint.value, bucket.label("bucket")).where(*scope).cte("points")
    extremes = (
        select(
            points.c.bucket,
            func.min(points.c.value).label("lowest"),
            func.max(points.c.value).label("highest"),
        )
        .group_by(points.c.bucket)
        .cte("extremes")
    )
    is_highest = points.c.value == extremes.c.highest
    return list(
        session.execute(
            select(points.c.id, points.c.step, points.c.timestamp, points.c.value)
            .join_from(
                points,
                extremes,
                and_(
                    points.c.bucket == extremes.c.bucket,
                    or_(
                        points.c.value == extremes.c.lowest,
                        is_highest,
                        extremes.c.lowest.is_(None),  # nothing but NaN in this bucket
                    ),
                ),
            )
            .ext(postgresql.distinct_on(points.c.bucket, is_highest))
            .order_by(points.c.bucket, is_highest, points.c.step, points.c.id)
        ).all()
    )


def downsampled(
    session: Session,
    run_id: str,
    key: str,
    max_points: int,
    *,
    max_scan: int = DOWNSAMPLE_MAX_SCAN,
    in_turn: Callable[[], AbstractContextManager[object]] | None = None,
) -> HistoryPage:
    """At most ``max_points`` points for a chart: the first and the last, and in each of
    at most ``max_points // 2 - 1`` equal ranges of steps the lowest and the highest value
    (a NaN only where a range holds nothing else). Peaks and dips survive, which an
    average or every-nth sample would smooth away.

    The work stays in the database and is bounded: a count and the step range read the
    index only; then two grouped scans (``_lowest_and_highest``) of at most ``max_scan``
    points, the latest ones by step (of a longer series the chart shows its last
    ``max_scan`` points, and ``total`` still counts them all); the two end points are
    index lookups. No Python object is made for a point that is dropped. A long series
    (``HEAVY_SERIES`` points and more) is read inside ``in_turn()``, the caller's turn of
    the shared pool for CPU-heavy work."""
    where = _series(run_id, key)
    total, low, high = session.execute(
        select(func.count(), func.min(MetricPoint.step), func.max(MetricPoint.step)).where(*where)
    ).one()
    if total <= max_points:
        page = history(session, run_id, key, limit=max_points, cursor=None)
        return HistoryPage(total, page.points, False, None)
    with in_turn() if in_turn is not None and total >= HEAVY_SERIES else nullcontext():
        scope = list(where)
        if total > max_scan:
            start = session.execute(
                select(MetricPoint.step, MetricPoint.id)
                .where(*where)
                .order_by(MetricPoint.step.desc(), MetricPoint.id.desc())
                .offset(max_scan - 1)
                .limit(1)
            ).one()
            scope.append(tuple_(MetricPoint.step, MetricPoint.id) >= tuple_(*start))
            low = start.step
        buckets = max(1, max_points // 2 - 1)
        span = high - low + 1
        if span < 2**62:
            width = max(1, -(-span // buckets))
            bucket = (MetricPoint.step - low) // width
        else:
            # (step - low) would overflow 64 bits; buckets counted from zero rather than
            # from ``low`` may straddle one more range, so ask for one fewer.
            width = max(1, -(-span // max(1, buckets - 1)))
            bucket = MetricPoint.step // width
        columns = (MetricPoint.id, MetricPoint.step, MetricPoint.timestamp, MetricPoint.value)
        ends = [
            session.execute(select(*columns).where(*scope).order_by(*order).limit(1)).one()
            for order in (
                (MetricPoint.step, MetricPoint.id),
                (MetricPoint.step.desc(), MetricPoint.id.desc()),
            )
        ]
        found = {row[0]: Point(*row) for row in [*ends, *_lowest_and_highest(session, scope, bucket)]}
    points = sorted(found.values(), key=lambda point: (point.step, point.id))
    return HistoryPage(total, points, True, None)
