"""The access log: one line per request with its method, path, status, duration and
request id, in the order the requests were answered, and none lost when the server
stops, though nothing waits for them to be written."""

from __future__ import annotations

import fcntl
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from maestro.app import create_app
from maestro.config import Settings
from maestro.logs import JsonFormatter, printable
from tests.conftest import free_port, settings_env, wait_until


def test_access_log_lines_are_structured(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(access_log=True, log_json=True))
    with caplog.at_level(logging.INFO, logger="maestro.access"), TestClient(app) as client:
        response = client.get("/api/v1/nothing-here", headers={"X-Request-ID": "trace-7"})
    record = next(r for r in caplog.records if r.name == "maestro.access")
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == response.headers["x-request-id"] == "trace-7"
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/nothing-here"
    assert line["status"] == 404
    assert line["duration_ms"] >= 0
    assert line["level"] == "INFO"
    assert line["time"].endswith("Z")


def test_access_log_can_be_turned_off(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(access_log=False))
    with caplog.at_level(logging.INFO, logger="maestro.access"), TestClient(app) as client:
        client.get("/health")
    assert not [r for r in caplog.records if r.name == "maestro.access"]


# --- a real server whose log nobody reads ----------------------------------------------------------
# Each request's path is long, so that their lines are several times what a pipe holds.
LONG = "x" * 3000
HOSTILE = "/nope%0aINJECTED%e2%80%aeLINE"
READY = "is-it-ready"
TEXT_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} INFO    maestro\.access "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<duration>\d+\.\d)ms \[(?P<request_id>[^\]]+)\]$"
)


def _start_unread(
    args: list[str], settings: Settings, workdir: Path, health: str = "/health"
) -> tuple[subprocess.Popen[bytes], str]:
    """``maestro <args>`` writing its log into a pipe that nobody reads until the test says
    (once the pipe is full, every write to it waits), answering on ``health``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "maestro", *args, "--host", "127.0.0.1", "--port", str(port)],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    base_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{process.communicate()[0].decode(errors='replace')}")
        try:
            answer = httpx.get(f"{base_url}{health}", headers={"X-Request-ID": READY}, timeout=1)
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=90, interval=0.1)
    except BaseException:
        process.kill()
        process.wait(30)
        raise
    return process, base_url


def _requests_beyond_the_pipe(
    process: subprocess.Popen[bytes], health: str = "/health"
) -> list[tuple[str, str]]:
    """(path, request id) for enough requests that their lines fill the log's pipe twice
    over, with a hostile path among them and ``health`` last."""
    assert process.stdout is not None
    capacity = fcntl.fcntl(process.stdout.fileno(), fcntl.F_GETPIPE_SZ)
    count = 2 * capacity // len(LONG) + 2
    requests = [(f"/nothing/{index}/{LONG}", f"line-{index}") for index in range(count)]
    requests.insert(count // 2, (HOSTILE, "hostile"))
    return [*requests, (health, "the-last")]


def _send_and_stop(process: subprocess.Popen[bytes], base_url: str, requests: list[tuple[str, str]]) -> str:
    """Every request answered while nothing reads the log (a request that waited on a
    write to it would time out), then SIGTERM, then the whole log."""
    with httpx.Client(base_url=base_url, timeout=20) as http:
        for path, request_id in requests:
            response = http.get(path, headers={"X-Request-ID": request_id})
            assert response.headers["x-request-id"] == request_id
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output.decode(errors="replace")


@pytest.mark.slow
def test_every_request_is_logged_in_order_though_the_log_is_not_read_until_shutdown(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    process, base_url = _start_unread(["serve"], make_settings(access_log=True, log_json=False), tmp_path)
    try:
        requests = _requests_beyond_the_pipe(process)
        output = _send_and_stop(process, base_url, requests)
    finally:
        process.kill()
    lines = [TEXT_LINE.match(line) for line in output.splitlines() if " maestro.access " in line]
    assert all(lines), output[-3000:]
    logged = [match for match in lines if match and match["request_id"] != READY]
    assert [match["request_id"] for match in logged] == [request_id for _, request_id in requests]
    assert [match["path"] for match in logged] == [printable(httpx.URL(path).path) for path, _ in requests]
    assert [match["method"] for match in logged] == ["GET"] * len(requests)
    assert [match["status"] for match in logged] == ["404"] * (len(requests) - 1) + ["200"]
    hostile = next(line for line in output.splitlines() if line.endswith("[hostile]"))
    assert "maestro.access GET /nope\\nINJECTED\\u202eLINE 404 " in hostile
    assert "Application shutdown complete" in output  # the lines after the application's end too


@pytest.mark.slow
def test_the_model_server_writes_one_json_object_per_request_and_loses_none_at_shutdown(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(access_log=True, log_json=True)
    process, base_url = _start_unread(["model-server"], settings, tmp_path, health="/api/v1/health")
    try:
        requests = _requests_beyond_the_pipe(process, health="/api/v1/health")
        output = _send_and_stop(process, base_url, requests)
    finally:
        process.kill()
    lines = output.splitlines()
    assert all(line.startswith("{") for line in lines if line), lines[-5:]
    logged = [
        entry
        for entry in map(json.loads, filter(None, lines))
        if entry["logger"] == "maestro.access" and entry["request_id"] != READY
    ]
    assert [entry["request_id"] for entry in logged] == [request_id for _, request_id in requests]
    assert [entry["path"] for entry in logged] == [httpx.URL(path).path for path, _ in requests]
    assert {entry["method"] for entry in logged} == {"GET"}
    assert [entry["status"] for entry in logged][-1] == 200
    assert all(entry["duration_ms"] >= 0 and entry["level"] == "INFO" for entry in logged)
    assert "\u202e" not in output  # the hostile path's characters are JSON escapes
    messages = [json.loads(line)["message"] for line in lines if line]
    assert "Application shutdown complete." in messages  # the lines after the application's end too


@pytest.mark.slow
def test_each_worker_process_logs_its_requests_and_loses_none_at_shutdown(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(access_log=True, log_json=False)
    process, base_url = _start_unread(["serve", "--workers", "2"], settings, tmp_path)
    try:
        requests = _requests_beyond_the_pipe(process)
        output = _send_and_stop(process, base_url, requests)
    finally:
        process.kill()
    logged = [
        match
        for line in output.splitlines()
        if (match := TEXT_LINE.match(line)) and match["request_id"] != READY
    ]
    # Two processes write their own lines: each request once, in no promised order.
    assert sorted(match["request_id"] for match in logged) == sorted(request_id for _, request_id in requests)
    assert output.count("Application shutdown complete") == 2
