"""Nobody can forge a log line: text taken from a request (the path above all, which
anyone can send without signing in) is written with its line breaks, escape sequences
and direction-changing characters escaped, one line per request, in the readable and
the JSON formats alike."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import httpx
import pytest

from maestro.config import Settings
from maestro.logs import JsonFormatter, TextFormatter, printable
from tests.conftest import RunningProcess, wait_until

# What an anonymous client puts in a path to write lines of its own into the log.
HOSTILE_PATHS = {
    "lf": "/nope%0aINJECTED-LINE 200 1.0ms",
    "cr": "/nope%0dINJECTED-LINE",
    "crlf": "/nope%0d%0aINJECTED-LINE",
    "nel": "/nope%c2%85INJECTED-LINE",
    "line-separator": "/nope%e2%80%a8INJECTED-LINE",
    "escape-sequence": "/nope%1b%5b2K%1b%5b1AINJECTED-LINE",
    "bidi-override": "/nope%e2%80%aeINJECTED-LINE",
    "vertical-tab": "/nope%0bINJECTED-LINE",
}
STARTS_A_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} ")


def _send_all(server: RunningProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for name, path in HOSTILE_PATHS.items():
            response = http.get(path, headers={"X-Request-ID": f"attack-{name}"})
            assert response.status_code == 404
            assert response.json()["success"] is False
        assert http.get("/health", headers={"X-Request-ID": "attack-done"}).status_code == 200
    wait_until(lambda: "attack-done" in server.output())


@pytest.mark.slow
def test_the_readable_access_log_has_one_line_per_request(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    server = serve(make_settings(access_log=True, log_json=False))
    _send_all(server)
    lines = server.output().splitlines()
    assert not [line for line in lines if "INJECTED" in line and not STARTS_A_RECORD.match(line)]
    for name in HOSTILE_PATHS:
        mine = [line for line in lines if f"[attack-{name}]" in line]
        assert len(mine) == 1, (name, mine)
        assert "maestro.access GET /nope\\" in mine[0] and "INJECTED-LINE" in mine[0]
        assert mine[0].isprintable()
    lf = next(line for line in lines if "[attack-lf]" in line)
    assert "/nope\\nINJECTED-LINE 200 1.0ms 404 " in lf
    bidi = next(line for line in lines if "[attack-bidi-override]" in line)
    assert "/nope\\u202eINJECTED-LINE" in bidi
    # Every line of the log is the start of a record Maestro wrote (tracebacks are indented).
    assert all(STARTS_A_RECORD.match(line) or line.startswith("    ") for line in lines if line), lines


@pytest.mark.slow
def test_the_json_access_log_has_one_line_per_request(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    server = serve(make_settings(access_log=True, log_json=True))
    _send_all(server)
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    lines = server.output().splitlines()
    assert all(line.startswith("{") for line in lines if "INJECTED" in line)
    for name, path in HOSTILE_PATHS.items():
        mine = [
            r for r in records if r.get("request_id") == f"attack-{name}" and r["logger"] == "maestro.access"
        ]
        assert len(mine) == 1, (name, mine)
        # The JSON field keeps the path exactly as the server decoded it.
        decoded = httpx.URL(path).path
        assert mine[0]["path"] == decoded
        assert mine[0]["status"] == 404


def _record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord(
        "maestro.test",
        logging.ERROR,
        __file__,
        1,
        message,
        args,
        (type(exc), exc, exc.__traceback__) if exc is not None else None,
    )


def test_a_traceback_quoting_input_cannot_start_a_line() -> None:
    try:
        raise ValueError("bad name 'x\n2026-01-01 00:00:00,000 INFO    maestro.access GET / 200 1.0ms'")
    except ValueError as caught:
        error = caught
    record = _record("could not save %s", "a\r\nforged", exc=error)
    record.request_id = "req_1\n2"
    text = TextFormatter().format(record)
    first, *rest = text.split("\n")
    assert first.endswith("could not save a\\r\\nforged [req_1\\n2]")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "maestro.access GET / 200" in text  # shown, indented, never at the margin

    line = JsonFormatter().format(_record("could not save %s", "a\r\nforged\u202e", exc=error))
    assert "\n" not in line and "\r" not in line and "\u202e" not in line
    assert json.loads(line)["message"] == "could not save a\r\nforged\u202e"


def test_printable_text_is_left_alone() -> None:
    assert printable("GET /api/v1/models/Modèle 200") == "GET /api/v1/models/Modèle 200"
    assert printable("a\tb\x00c\u200bd\u2028e") == "a\\tb\\x00c\\u200bd\\u2028e"
