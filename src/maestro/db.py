"""Database access: engine, sessions, the declarative base and shared column types.

One code path serves SQLite and PostgreSQL. SQLite runs in WAL mode with a busy
timeout, and write transactions begin with ``BEGIN IMMEDIATE`` so that concurrent
writers queue for the lock instead of failing half-way with ``SQLITE_BUSY``. A
session begins its transaction at its first statement, not when it is made, so a
writer holds SQLite's one write lock only from its first query to its commit.

Sessions that serve HTTP requests hold each statement to a time budget
(``MAESTRO_STATEMENT_TIMEOUT_MS``): PostgreSQL cancels it (``statement_timeout``), and
on SQLite a progress handler interrupts it. Jobs, maintenance and migrations use
sessions without that budget.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import quote

from sqlalchemy import (
    JSON,
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Result,
    String,
    Table,
    create_engine,
    event,
    make_url,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from maestro.config import Settings
from maestro.errors import Conflict

logger = logging.getLogger("maestro.db")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


# Two characters for each 10 bits: an id's 130 bits are 13 lookups (base64's base32 is
# written in Python and took twice as long; ids are minted on every prediction).
_CROCKFORD_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_PAIR_SHIFTS = tuple(range(120, -1, -10))


class _Entropy:
    """The operating system's random bytes, fetched 4 KiB at a time: one system call for
    hundreds of ids instead of one each (ids are minted on every prediction). A forked
    child forgets what its parent fetched, so no two processes hand out the same bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._at + count > len(self._buffer):
                self._buffer, self._at = os.urandom(max(4096, count)), 0
            start = self._at
            self._at += count
            return self._buffer[start : self._at]

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.forget)


def random_bytes(count: int) -> bytes:
    """``count`` bytes from the operating system's cryptographic random source."""
    return _entropy.take(count)


def new_id(prefix: str) -> str:
    """An opaque id such as ``run_01jd8x…``: a type prefix, then 48 bits of
    milliseconds and 80 random bits in lowercase Crockford base32.

    Ids sort by creation time, which keeps primary-key indexes append-mostly and
    makes the id a stable tiebreaker for keyset pagination.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(random_bytes(10), "big")
    pairs = _CROCKFORD_PAIRS
    return prefix + "_" + "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_iso(moment: datetime) -> str:
    """A time in UTC as ISO 8601 with ``Z`` (``2026-12-07T15:04:05.123456Z``), as events,
    notifications and stored reports carry it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _SecondText:
    """A second's date and time in one format, formatted once a second: datetime's own
    formatting cost 5 µs a call on the request path."""

    __slots__ = ("cached", "fmt")

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.cached: tuple[int, str] = (-1, "")  # one tuple: threads see a second and its text together

    def __call__(self, epoch: float) -> str:
        second = int(epoch)
        cached = self.cached
        if cached[0] != second:
            cached = self.cached = (second, time.strftime(self.fmt, time.gmtime(second)))
        return f"{cached[1]}.{int((epoch - second) * 1_000_000):06d}"


_ISO_SECOND = _SecondText("%Y-%m-%dT%H:%M:%S")
_SQLITE_SECOND = _SecondText("%Y-%m-%d %H:%M:%S")


def utc_timestamp() -> str:
    """Now in UTC, as ``2026-12-07T15:04:05.123456Z``."""
    return _ISO_SECOND(time.time()) + "Z"


def sqlite_utc_text(epoch: float) -> str:
    """``epoch`` as a UTC time stored in SQLite by ``UTCDateTime`` (``2026-12-07
    15:04:05.123456``), for rows inserted through the driver itself."""
    return _SQLITE_SECOND(epoch)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use maestro.db.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}

    if TYPE_CHECKING:
        # Every model maps one Table; SQLAlchemy types ``__table__`` as any FromClause.
        __table__: ClassVar[Table]


class IdMixin:
    """A prefixed string primary key; subclasses set ``id_prefix``."""

    id_prefix: str = "obj"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("id", new_id(self.id_prefix))
        super().__init__(**kwargs)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# Execution option carrying a statement's time budget, in milliseconds.
STATEMENT_BUDGET = "statement_budget_ms"
# SQLite virtual-machine steps between two looks at the clock: a few thousand a millisecond.
PROGRESS_STEPS = 10_000


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself, so we choose its kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    @event.listens_for(engine, "before_cursor_execute")
    def _start_budget(
        connection: Any, cursor: Any, _statement: Any, _parameters: Any, _context: Any, _many: bool
    ) -> None:
        """Each statement of a budgeted session gets a deadline from the moment it starts
        (fetching its rows included); SQLite stops it with SQLITE_INTERRUPT once past it."""
        budget = connection.get_execution_options().get(STATEMENT_BUDGET)
        if budget:
            deadline = time.monotonic() + budget / 1000
            cursor.connection.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
            connection.info[STATEMENT_BUDGET] = True
        elif connection.info.pop(STATEMENT_BUDGET, False):
            cursor.connection.set_progress_handler(None, 0)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _end_budget(connection: Any) -> None:
        # Before COMMIT or ROLLBACK runs: neither may be interrupted.
        if connection.info.pop(STATEMENT_BUDGET, False):
            connection.connection.dbapi_connection.set_progress_handler(None, 0)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(STATEMENT_BUDGET, False) and dbapi_connection is not None:
            dbapi_connection.set_progress_handler(None, 0)


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        budget = connection.get_execution_options().get(STATEMENT_BUDGET)
        if budget:
            # LOCAL: the budget ends with the transaction, so pooled connections that later
            # serve a job carry none.
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(budget)}")


def ensure_sqlite_directory(url: str) -> None:
    """SQLite creates its file but not the directory holding it."""
    if url.startswith("sqlite"):
        database = url.split(":///", 1)[-1]
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)


def shown_url(url: str) -> str:
    """The database URL as it may be written in a log or an error: password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say only its scheme
        return url.split(":", 1)[0] + ":…"


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names (None for an in-memory database or another backend)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return None if not database or database == ":memory:" or database.startswith("file:") else database


def build_engine(settings: Settings, *, create: bool = True) -> Engine:
    """``create=False``: open an existing SQLite file only (never create it, nor its
    directory), for a process that uses a database another one owns."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if create:
            ensure_sqlite_directory(url)
        elif path is not None:
            # SQLite creates a missing file on connect unless opened by URI in "rw" mode.
            url = f"sqlite:///file:{quote(path)}?mode=rw&uri=true"
        engine = create_engine(
            url,
            echo=settings.database_echo,
            connect_args={"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
        return engine
    engine = create_engine(
        url,
        echo=settings.database_echo,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_pre_ping=True,
    )
    if engine.dialect.name == "postgresql":
        _configure_postgresql(engine)
    return engine


# Every module that declares tables; autogenerate compares against all of them. Named, not
# imported, here: the tables' domains sit above this module.
MODEL_MODULES = (
    "maestro.jobs.models",
    "maestro.organizations.models",
    "maestro.identity.models",
    "maestro.projects.models",
    "maestro.registry.models",
    "maestro.events.models",
    "maestro.files.models",
    "maestro.tracking.models",
    "maestro.deployments.models",
    "maestro.mlflow_compat.models",
    "maestro.monitoring.models",
    "maestro.webhooks.models",
    "maestro.alerts.models",
)


def import_models() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


class Database:
    """The engine and its session factories: readers, and writers that take the write
    lock up front on SQLite (a no-op on PostgreSQL); each also in a variant for HTTP
    requests, whose statements are held to the request budget."""

    def __init__(self, settings: Settings, *, create: bool = True) -> None:
        """``create=False``: the database must exist; a SQLite file is never created."""
        import_models()  # every table must be known before the first query resolves foreign keys
        self.url = shown_url(settings.resolved_database_url)
        self.file = sqlite_file(settings.resolved_database_url)
        self.engine = build_engine(settings, create=create)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )
        budget = {STATEMENT_BUDGET: settings.statement_timeout_ms} if settings.statement_timeout_ms else {}
        self._request_reader = sessionmaker(self.engine.execution_options(**budget), expire_on_commit=False)
        self._request_writer = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE", **budget), expire_on_commit=False
        )

    def new_session(self, *, write: bool) -> Session:
        return (self._writer if write else self._reader)()

    def request_session(self, *, write: bool) -> Session:
        """A session serving an HTTP request: each statement has the request budget, and
        a statement past it fails with an ``OperationalError`` (answered 503)."""
        return (self._request_writer if write else self._request_reader)()

    @contextmanager
    def session(self, *, write: bool = True, for_request: bool = False) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any error. ``for_request``:
        it serves an HTTP request, so its statements have the request budget."""
        session = self.request_session(write=write) if for_request else self.new_session(write=write)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def flush_unique(session: Session, conflict: Exception) -> None:
    """Flush, turning a unique-constraint violation (a concurrent request took the
    name first) into ``conflict``."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise conflict from exc


def release_write_lock(session: Session) -> None:
    """Commit what the request has done so far, in the middle of the request: the one
    sanctioned commit outside ``api.deps.request_transaction``. A writer holds SQLite's
    database-wide write lock (and on PostgreSQL its row locks) from its first write to its
    commit, and a reader holds its snapshot, so a route that then waits on something
    slow (a body streaming in, a model loading, a document rendering) would hold every
    other writer up for as long. Such a route checks and authorises what it must,
    releases the lock here, does the slow part, and goes on in a new transaction on the
    same session, which the request commits or rolls back as usual. Whatever it checked
    may have changed meanwhile, so the work after the release checks again what must
    still hold."""
    session.commit()


@dataclass(frozen=True)
class UniqueName:
    """A name unique within a scope (a model's in its project, a deployment's in its
    organisation): the friendly check before writing, and the same error when the
    unique index catches a concurrent writer at flush."""

    table: type[IdMixin]
    scope: str  # the column that scopes the name, e.g. "project_id"
    message: str
    detail: str

    def conflict(self) -> Conflict:
        return Conflict(self.message, details=[("name", self.detail)])

    def check(self, session: Session, scope_id: str, name: str, *, but: str | None = None) -> None:
        """Refuse ``name`` when another row than ``but`` in the scope has it."""
        clash = select(self.table.id).filter_by(**{self.scope: scope_id, "name": name})
        if but is not None:
            clash = clash.where(self.table.id != but)
        if session.scalar(clash.limit(1)) is not None:
            raise self.conflict()

    def flush(self, session: Session) -> None:
        flush_unique(session, self.conflict())


def matched_rows(result: Result[*tuple[Any, ...]]) -> int:
    """How many rows an UPDATE or DELETE matched. ``Session.execute`` returns the
    statement's CursorResult, but is typed as returning a Result, which has no rowcount."""
    return cast("CursorResult[*tuple[Any, ...]]", result).rowcount


def run_after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the session's transaction has committed, and never if it
    rolls back: how work is handed to other processes (jobs, webhooks) only after
    the rows it refers to are visible to them."""
    session.info.setdefault("after_commit", []).append(callback)


def run_after_rollback(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` if the session's transaction rolls back instead of committing:
    how a file stored for a row is removed when the row never lands (a failed commit),
    so no file outlives the row that should point at it."""
    session.info.setdefault("after_rollback", []).append(callback)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    session.info.pop("after_rollback", None)
    for callback in session.info.pop("after_commit", []):
        try:
            callback()
        except Exception:
            logger.exception("after-commit callback failed")


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous: Any) -> None:
    if previous.parent is None:  # the whole transaction, not a savepoint
        session.info.pop("after_commit", None)
        for callback in session.info.pop("after_rollback", []):
            try:
                callback()
            except Exception:
                logger.exception("after-rollback callback failed")
