"""Logging setup: readable lines by default, JSON lines with ``MAESTRO_LOG_JSON``.

Access-log records carry the request id, method, path, status and duration as
fields, so a JSON log can be filtered without parsing messages.

Log messages carry text from requests (paths, names, ids, error messages that quote
input). In the readable format every character that is not printable (line breaks,
escape sequences, direction-changing and invisible characters) is written as a Python
escape such as ``\\n`` or ``\\u202e``, and a traceback's lines are indented, so a line that
starts at the margin is always the start of a record Maestro wrote: nobody can forge
one. JSON lines are escaped by the JSON encoder.

Lines are formatted and written by one thread per process (``LogWriter``): the code
that logs hands its record over (a request its access-log values) and goes on, so no
request waits on a write to standard error. Warnings and errors are waited for. What is
queued is written when the application stops and at exit; a killed process loses it."""

from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import stat
import sys
import threading
import time
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any

from maestro.config import Settings

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_ENCODER = json.JSONEncoder(default=str)
ACCESS_LOGGER = "maestro.access"
_ACCESS_MESSAGE = "%s %s %s %.1fms"

# One request's access-log values, as the request hands them over:
# (time.time(), method, path, status, duration in ms, request id, client address).
AccessEntry = tuple[float, str, str, int, float, str, "str | None"]


def _access_fields(
    method: str, path: str, status: int, duration_ms: float, request_id: str, client: str | None
) -> dict[str, object]:
    """The fields of an access-log record beyond its message (a JSON line's keys)."""
    return {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 2),
        "client": client,
    }


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")


def _msecs(created: float) -> float:
    return int((created - int(created)) * 1000) + 0.0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted by the thread that logged it (LogWriter)
            entry["exception"] = record.exc_text
        return _ENCODER.encode(entry)

    def format_access(self, access: AccessEntry) -> str:
        """``format(access_record(*access))``, without making the record."""
        created, method, path, status, duration_ms, request_id, client = access
        return _ENCODER.encode(
            {
                "time": _iso_time(created),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
                "message": _ACCESS_MESSAGE % (method, path, status, duration_ms),
                **_access_fields(method, path, status, duration_ms, request_id, client),
            }
        )


def printable(text: str) -> str:
    """``text`` with every character that is not printable written as its escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


def _indented(text: str) -> str:
    return "\n".join("    " + printable(line) for line in text.splitlines())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """As ``logging.Formatter.formatTime``, the date and time of day made once a second."""
        if datefmt:
            return super().formatTime(record, datefmt)
        return self._time(record.created, record.msecs)

    def _time(self, created: float, msecs: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(created))
            self._second = (second, text)
        return f"{text},{int(msecs):03d}"

    def format_access(self, access: AccessEntry) -> str:
        """``format(access_record(*access))``, without making the record."""
        created, method, path, status, duration_ms, request_id, _client = access
        line = self._style._fmt % {
            "asctime": self._time(created, _msecs(created)),
            "levelname": "INFO",
            "name": ACCESS_LOGGER,
            "message": printable(_ACCESS_MESSAGE % (method, path, status, duration_ms)),
        }
        return f"{line} [{printable(request_id)}]" if request_id else line

    def format(self, record: logging.LogRecord) -> str:
        """As ``logging.Formatter.format``, with the message on one line of printable
        characters and the traceback (if any) indented below it."""
        record.message = printable(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id:
            line = f"{line} [{printable(str(request_id))}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{_indented(record.exc_text)}"
        if record.stack_info:
            line = f"{line}\n{_indented(self.formatStack(record.stack_info))}"
        return line


# --- the writer thread -------------------------------------------------------------------------
access_logger = logging.getLogger(ACCESS_LOGGER)
_EXCEPTIONS = logging.Formatter()
# On a pipe or socket, one write() of at most PIPE_BUF bytes is never interleaved with
# another process's (the workers of `maestro serve` share standard error). A file takes
# each write whole; every write costs the serving thread a turn of the GIL.
_PIPE_BUF = 4096
_FILE_WRITE = 1 << 20
_WAITING_LIMIT = 100_000
_GATHER_SECONDS = 0.02
_STOP_SECONDS = 10.0


def access_record(
    created: float,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    request_id: str,
    client: str | None,
) -> logging.LogRecord:
    """The access log's record of one request, as ``access_logger.info`` would make it
    (without looking up its caller)."""
    record = access_logger.makeRecord(
        access_logger.name,
        logging.INFO,
        "",
        0,
        _ACCESS_MESSAGE,
        (method, path, status, duration_ms),
        None,
        extra=_access_fields(method, path, status, duration_ms, request_id, client),
    )
    record.created = created
    record.msecs = _msecs(created)
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    return record


def _as_record(item: logging.LogRecord | AccessEntry) -> logging.LogRecord:
    return item if isinstance(item, logging.LogRecord) else access_record(*item)


class LogWriter:
    """Formats and writes the process's log lines in a thread of its own.

    The queue takes prepared records and, for the access log, plain tuples of the
    request's values, so a request spends a ``put`` on its line. The thread writes
    what it finds waiting in a few ``write`` calls. It starts on first use in each
    process (a thread does not survive ``fork``); ``stop`` writes what waits and ends
    it, after which lines are written at once by whoever logs them."""

    def __init__(self) -> None:
        self.target = logging.StreamHandler(sys.stderr)
        self.write_size = _PIPE_BUF
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._urgent = threading.Event()
        self._stopped = False
        atexit.register(self.stop)
        os.register_at_fork(after_in_child=self._forget)

    # --- handing over -----------------------------------------------------------------------------
    def put(self, item: logging.LogRecord | AccessEntry) -> None:
        thread = self._thread
        if thread is None:
            if self._stopped or not self._start():
                self._write([item])
                return
        elif thread.ident == threading.get_ident():
            self._write([item])  # logged while writing: no waiting on itself
            return
        self._queue.put(item)
        if self._thread is None:  # stopped meanwhile: what it did not take is ours to write
            self._write_waiting()
        elif self._queue.qsize() > _WAITING_LIMIT:
            self.flush()  # standard error is not keeping up: wait for it, as a write would

    def flush(self, timeout: float = _STOP_SECONDS) -> None:
        """Return once everything handed over so far is written (or after ``timeout``)."""
        thread = self._thread
        if thread is None or thread.ident == threading.get_ident() or not thread.is_alive():
            return
        written = threading.Event()
        self._queue.put(written)
        self._urgent.set()
        written.wait(timeout)

    def stop(self) -> None:
        """Write what waits and end the thread; later lines are written at once, until
        ``resume``. For the end of a server's life: uvicorn ends its process by the signal
        that stopped it, which runs no exit handlers."""
        self._stopped = True
        thread = self._thread
        if thread is not None and thread.is_alive() and thread.ident != threading.get_ident():
            self._queue.put(None)
            self._urgent.set()
            thread.join(_STOP_SECONDS)
        self._thread = None
        self._write_waiting()

    def resume(self) -> None:
        """Let the thread start again on the next line (after ``stop``)."""
        self._stopped = False

    def _start(self) -> bool:
        with self._start_lock:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._run, name="maestro-log-writer", daemon=True)
                thread.start()
                self._thread = thread
        return self._thread is not None

    def _forget(self) -> None:
        """In a forked child: the parent's thread and what it had queued stay with the parent."""
        self._queue = SimpleQueue()
        self._thread = None
        self._start_lock = threading.Lock()
        self._urgent = threading.Event()

    # --- writing ---------------------------------------------------------------------------------
    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        while not stopping:
            batch = [get()]
            # Lines that arrive meanwhile are written with this one. Waking for each line
            # would cost the serving thread more than the line: every wake takes the GIL.
            self._urgent.wait(_GATHER_SECONDS)
            self._urgent.clear()
            try:
                while True:
                    batch.append(get_nowait())
            except Empty:
                pass
            pending: list[logging.LogRecord | AccessEntry] = []
            for item in batch:
                if isinstance(item, threading.Event):
                    self._write(pending)
                    pending = []
                    item.set()
                elif item is None:
                    stopping = True
                else:
                    pending.append(item)
            self._write(pending)

    def _write_waiting(self) -> None:
        """Write, in this thread, what waits in the queue (once the thread is gone)."""
        waiting = []
        try:
            while True:
                waiting.append(self._queue.get_nowait())
        except Empty:
            pass
        self._write([item for item in waiting if isinstance(item, (logging.LogRecord, tuple))])
        for item in waiting:
            if isinstance(item, threading.Event):
                item.set()

    def _write(self, items: list[logging.LogRecord | AccessEntry]) -> None:
        target = self.target
        formatter = target.formatter
        chunk: list[str] = []
        size = 0
        for item in items:
            try:
                if isinstance(item, logging.LogRecord):
                    line = target.format(item)
                elif isinstance(formatter, (TextFormatter, JsonFormatter)):
                    line = formatter.format_access(item)
                else:
                    line = target.format(access_record(*item))
            except Exception:
                target.handleError(_as_record(item))
                continue
            length = len(line) + 1 if line.isascii() else 4 * len(line) + 1
            if chunk and size + length > self.write_size:
                self._emit(chunk, item)
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            self._emit(chunk, items[-1])

    def _emit(self, lines: list[str], item: logging.LogRecord | AccessEntry) -> None:
        """One write of ``lines`` (``item``, one of them or near, names a failure)."""
        target = self.target
        target.acquire()
        try:
            target.stream.write(target.terminator.join(lines) + target.terminator)
            target.stream.flush()
        except Exception:
            target.handleError(_as_record(item))
        finally:
            target.release()

    # --- what the handler hands over ----------------------------------------------------------------
    def accepts_access_lines(self, handler: logging.Handler) -> bool:
        """Whether ``handler`` is the only handler an access record reaches, so the
        request can hand over its values and this thread make the record. Any other
        handler (a test's log capture, one added by hand) gets the record from the
        request itself, as logging always did."""
        if access_logger.filters:
            return False
        reached = False
        logger: logging.Logger | None = access_logger
        while logger is not None:
            for each in logger.handlers:
                if each is not handler:
                    return False
                reached = True
            if not logger.propagate:
                break
            logger = logger.parent
        return reached


class QueueingHandler(logging.Handler):
    """The root logger's handler: hands each record to the ``LogWriter`` with its message
    merged and its traceback formatted, so it no longer depends on objects that may change
    once the call returns."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        """As ``Handler.handle`` without taking the handler's lock: the queue has its own."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Hands ``record`` over; a warning or error is also waited for, so that what
        tells of trouble is written before the process can go on (or crash)."""
        try:
            self.writer.put(self.prepare(record))
            if record.levelno >= logging.WARNING:
                self.writer.flush()
        except Exception:
            self.handleError(record)

    @staticmethod
    def prepare(record: logging.LogRecord) -> logging.LogRecord:
        """A copy of ``record`` with ``args`` merged into its message and ``exc_info``
        formatted into ``exc_text`` (the record itself is left as other handlers see it)."""
        if not record.args and not record.exc_info:
            return record
        prepared = copy.copy(record)
        prepared.msg = record.getMessage()
        prepared.args = None
        if record.exc_info:
            if not prepared.exc_text:
                prepared.exc_text = _EXCEPTIONS.formatException(record.exc_info)
            prepared.exc_info = None
        return prepared

    def flush(self) -> None:
        self.writer.flush()


_writer = LogWriter()


def log_access(
    method: str, path: str, status: int, duration_ms: float, request_id: str, client: str | None
) -> None:
    """One access-log line (the caller has checked that the access log is on at INFO)."""
    created = time.time()
    handler = _handler
    if handler is not None and _writer.accepts_access_lines(handler):
        _writer.put((created, method, path, status, duration_ms, request_id, client))
    else:
        access_logger.handle(access_record(created, method, path, status, duration_ms, request_id, client))


def flush() -> None:
    """Return once every line logged so far is written."""
    _writer.flush()


def write_at_once() -> None:
    """Write every line logged so far, and from now on each line as it is logged (until
    ``configure_logging`` is called again): for the end of a server's life."""
    _writer.stop()


# Libraries that narrate their routine work at INFO: the font subsetter writes dozens of
# lines for one PDF model card, alembic one per plugin it sets up. Their warnings still show.
QUIET_LOGGERS = ("fontTools", "alembic.runtime.plugins")

_handler: QueueingHandler | None = None


def _write_size(stream: Any) -> int:
    """The most one write to ``stream`` may hold: ``PIPE_BUF`` unless it is a file."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return _PIPE_BUF
    return _FILE_WRITE if stat.S_ISREG(mode) else _PIPE_BUF


def configure_logging(settings: Settings) -> None:
    global _handler
    _writer.flush()  # what was logged so far keeps the format and stream it was logged for
    _writer.resume()
    target = logging.StreamHandler(sys.stderr)
    target.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    _writer.target = target
    _writer.write_size = _write_size(sys.stderr)
    handler = QueueingHandler(_writer)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_maestro", False):
            root.removeHandler(existing)
    handler._maestro = True  # type: ignore[attr-defined]  # our mark, so a second call replaces it
    root.addHandler(handler)
    _handler = handler
    root.setLevel(settings.log_level)
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
