"""What the server log holds: Maestro's lines, not the routine narration of libraries,
each written as it was when logged, by a thread that no caller waits for."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maestro.config import Settings
from maestro.logs import AccessEntry, JsonFormatter, TextFormatter, access_record, configure_logging, flush
from maestro.registry import card_documents
from maestro.registry.schemas import (
    CardLineage,
    CardModelDetails,
    CardSchema,
    CardSchemaField,
    CardVersionDetails,
    ModelCard,
    ModelCardSections,
)


def a_card() -> ModelCard:
    now = datetime.now(UTC)
    return ModelCard(
        model=CardModelDetails(
            id="model_x", name="Fraud Detector", description="Payments", model_type="classification", tags=[]
        ),
        version=CardVersionDetails(
            id="version_x",
            version="1.0.0",
            stage="production",
            trusted=False,
            requirements=[],
            tags=[],
            aliases=[],
            created_at=now,
        ),
        performance_metrics=[],
        training_metrics=[],
        model_schema=CardSchema(inputs=[CardSchemaField(name="amount", type="float")], outputs=[]),
        lineage=CardLineage(run_id=None),
        stage_history=[],
        sections=ModelCardSections.model_validate({"limitations": ["Кириллица и Ελληνικά"]}),
        generated_at=now,
    )


def test_a_pdf_model_card_logs_nothing_from_the_font_subsetter(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    if card_documents.find_unicode_font() is None:
        pytest.skip("no Unicode font on this machine: the core font needs no subsetting")
    configure_logging(make_settings(log_level="INFO"))
    with caplog.at_level(logging.INFO):
        document = card_documents.render_pdf(a_card())
        logging.getLogger("maestro.test").info("the log is open at INFO")
    assert document.startswith(b"%PDF")
    assert [r.name for r in caplog.records if r.name.startswith("fontTools")] == []
    assert "the log is open at INFO" in caplog.messages


def test_a_library_warning_still_shows(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(make_settings(log_level="INFO"))
    with caplog.at_level(logging.INFO):
        logging.getLogger("fontTools.subset").warning("a glyph is missing")
        logging.getLogger("fontTools.subset").info("subsetting glyphs")
    assert caplog.messages == ["a glyph is missing"]


# --- the writer thread -------------------------------------------------------------------------
class HeldStream(io.StringIO):
    """A log stream whose writes wait while ``open`` is clear (``entered`` tells that one does)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.open.wait(30), "the test never let the log writer go on"
        return super().write(text)


@pytest.fixture
def stream(make_settings: Callable[..., Settings]) -> Iterator[HeldStream]:
    """Maestro's log configured to write into a ``HeldStream``; standard error again afterwards."""
    held, original = HeldStream(), sys.stderr
    sys.stderr = held
    try:
        configure_logging(make_settings(log_level="INFO"))
    finally:
        sys.stderr = original
    yield held
    held.open.set()
    configure_logging(make_settings())


def test_a_record_is_written_as_it_was_when_logged(stream: HeldStream) -> None:
    log = logging.getLogger("maestro.test")
    stream.open.clear()
    log.info("the writer is held")
    assert stream.entered.wait(30)
    items = ["as logged"]
    error = ValueError("as raised")
    try:
        raise error
    except ValueError:
        log.info("items %s", items, exc_info=True)
    items.append("changed later")
    error.args = ("changed later",)
    stream.open.set()
    flush()
    text = stream.getvalue()
    assert "INFO    maestro.test items ['as logged']\n    Traceback (most recent call last):\n" in text
    assert "    ValueError: as raised\n" in text
    assert "changed later" not in text


def test_a_traceback_is_kept_in_json_lines(make_settings: Callable[..., Settings]) -> None:
    held, original = HeldStream(), sys.stderr
    sys.stderr = held
    try:
        configure_logging(make_settings(log_level="INFO", log_json=True))
    finally:
        sys.stderr = original
    try:
        try:
            raise ValueError("bad\nname")
        except ValueError:
            logging.getLogger("maestro.test").exception("could not save %s", "it")
        flush()
    finally:
        configure_logging(make_settings())
    (entry,) = [json.loads(line) for line in held.getvalue().splitlines()]
    assert entry["message"] == "could not save it"
    assert entry["exception"].startswith("Traceback (most recent call last):\n")
    assert entry["exception"].endswith("ValueError: bad\nname")


def test_a_warning_is_written_before_the_call_returns(stream: HeldStream) -> None:
    logging.getLogger("maestro.test").info("first")
    logging.getLogger("maestro.test").warning("then trouble")
    written = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert written == ["INFO    maestro.test first", "WARNING maestro.test then trouble"]


def test_configuring_again_replaces_the_handler(
    stream: HeldStream, make_settings: Callable[..., Settings]
) -> None:
    sys_stderr, sys.stderr = sys.stderr, stream
    try:
        configure_logging(make_settings(log_level="INFO"))
    finally:
        sys.stderr = sys_stderr
    ours = [handler for handler in logging.getLogger().handlers if getattr(handler, "_maestro", False)]
    assert len(ours) == 1
    logging.getLogger("maestro.test").info("once")
    flush()
    assert stream.getvalue().count("maestro.test once") == 1


FORKING = """
import logging, os, sys, threading
from maestro.config import Settings
from maestro.logs import configure_logging

parent, release = os.getpid(), threading.Event()

class Held:
    def write(self, text):
        if os.getpid() == parent:
            release.wait()
        return sys.__stderr__.write(text)

    def flush(self):
        sys.__stderr__.flush()

sys.stderr = Held()
configure_logging(Settings(_env_file=None, data_dir=sys.argv[1], log_level="INFO"))
log = logging.getLogger("maestro.test")
log.info("the parent's first line")
log.info("the parent's second line")
child = os.fork()
if child == 0:
    log.info("the child's line")
    sys.exit(0)
release.set()
os.waitpid(child, 0)
log.info("the parent's line after the fork")
"""


def test_a_forked_child_writes_its_own_lines_and_not_its_parents(tmp_path: Path) -> None:
    """A thread does not survive fork: the child starts a writer of its own, and what the
    parent had queued is the parent's to write (once)."""
    result = subprocess.run(
        [sys.executable, "-c", FORKING, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [
        line.split(" maestro.test ")[1] for line in result.stderr.splitlines() if " maestro.test " in line
    ]
    assert sorted(lines) == sorted(
        [
            "the parent's first line",
            "the parent's second line",
            "the child's line",
            "the parent's line after the fork",
        ]
    )


ACCESS_ENTRIES = [
    (1_765_000_000.999_7, "GET", "/api/v1/predict/fraud", 200, 1.25, "req_0123456789abcdef", "127.0.0.1"),
    (1_765_000_001.0, "POST", "/nope\nINJECTED-LINE 200 1.0ms\u202e\x1b[2K", 404, 0.049, "trace\n7", None),
    (1_765_000_001.5, "GET", "/api/v1/models/Modèle", 500, 12_345.678, "", "::1"),
]


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
@pytest.mark.parametrize("access", ACCESS_ENTRIES, ids=["plain", "hostile", "no-request-id"])
def test_an_access_line_made_without_its_record_is_the_records_line(
    formatter: TextFormatter | JsonFormatter, access: AccessEntry
) -> None:
    assert formatter.format_access(access) == formatter.format(access_record(*access))


@pytest.mark.parametrize("created", [1_765_000_000.0, 1_765_000_000.999_9, 1_765_000_001.000_1])
def test_the_time_of_a_readable_line_is_the_standard_one(created: float) -> None:
    record = logging.makeLogRecord({"created": created, "msecs": int((created - int(created)) * 1000)})
    ours = TextFormatter()
    standard = logging.Formatter(ours._fmt)
    assert ours.formatTime(record) == standard.formatTime(record)
    assert ours.formatTime(record) == standard.formatTime(record)  # the second made once
