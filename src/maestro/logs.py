"""Logging setup: readable lines by default, JSON lines with ``MAESTRO_LOG_JSON``.

Access-log records carry the request id, method, path, status and duration as
fields, so a JSON log can be filtered without parsing messages.

Log messages carry text from requests (paths, names, ids, error messages that quote
input). In the readable format every character that is not printable (line breaks,
escape sequences, direction-changing and invisible characters) is written as a Python
escape such as ``\\n`` or ``\\u202e``, and a traceback's lines are indented, so a line that
starts at the margin is always the start of a record Maestro wrote: nobody can forge
one. JSON lines are escaped by the JSON encoder."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from maestro.config import Settings

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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


# Libraries that narrate their routine work at INFO: the font subsetter writes dozens of
# lines for one PDF model card, alembic one per plugin it sets up. Their warnings still show.
QUIET_LOGGERS = ("fontTools", "alembic.runtime.plugins")


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_maestro", False):
            root.removeHandler(existing)
    handler._maestro = True  # type: ignore[attr-defined]  # our mark, so a second call replaces it
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
