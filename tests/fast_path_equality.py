"""What the fast-path equality tests share (``tests/*/test_fast_path_equality.py``): one
database per test module on each backend, settings for a pair of apps on it (the fast
paths on, and off with ``MAESTRO_FAST_PATHS=false``), and the parts of two answers that
must be equal.

Each of those modules builds its world once per backend (organisations, models,
deployments: seconds of work) and sends every case of its request list to both apps as
a test of its own. The world is read, never changed, by the cases, so they may run in
any order. The database is the module's own (an SQLite copy, a PostgreSQL database
created and migrated for it), so tests of other modules that empty the test process's
database in between cannot take the world away."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from maestro.config import Settings
from maestro.migrations import upgrade
from tests.conftest import PG_SKIP, PG_URL

# Per-request values: masked in bodies, never compared.
VOLATILE = frozenset(
    {"request_id", "timestamp", "prediction_time", "latency_ms", "prediction_id", "created_at", "finished_at"}
)
# Headers whose presence and value are part of the contract.
COMPARED_HEADERS = (
    "content-type",
    "www-authenticate",
    "location",
    "inference-header-content-length",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[str]:
    """A migrated database of this test module's own, on each backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("equality") / "maestro.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    if not PG_URL:
        pytest.skip(PG_SKIP)
    admin_url = make_url(PG_URL)
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"maestro_eq_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def equality_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """The test suite's settings (``tests/conftest.py``'s ``make_settings``) on ``database_url``."""
    values: dict[str, Any] = {
        "environment": "test",
        "data_dir": data_dir,
        "database_url": database_url,
        "run_worker_in_process": False,
        "queue_name": f"maestro-test-{uuid.uuid4().hex[:12]}",
        "maintenance_interval_minutes": 0,
        "access_log": False,
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 64,
        "rate_limits_enabled": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def switched_off(settings: Settings) -> Settings:
    """The same settings with the fast paths off: every request goes to FastAPI's routes."""
    assert settings.fast_paths
    return settings.model_copy(update={"fast_paths": False})


def masked(value: Any) -> Any:
    """``value`` with the per-request fields masked, at any depth."""
    if isinstance(value, dict):
        return {key: "<volatile>" if key in VOLATILE else masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def headers_that_matter(response: httpx.Response) -> dict[str, Any]:
    """The compared headers, any ``x-maestro-*`` header, and whether a request id, a
    rate-limit reset time and a Retry-After were sent (their values are per request, or
    count seconds of the clock)."""
    headers = response.headers
    kept: dict[str, Any] = {name: headers.get(name) for name in COMPARED_HEADERS}
    kept.update({name: value for name, value in headers.items() if name.startswith("x-maestro-")})
    kept["x-request-id"] = bool(headers.get("x-request-id"))
    kept["x-ratelimit-reset"] = "x-ratelimit-reset" in headers
    retry_after = headers.get("retry-after")
    kept["retry-after"] = None if retry_after is None else retry_after.isdigit() and int(retry_after) >= 1
    return kept


def body_of(response: httpx.Response) -> Any:
    """The masked JSON document, or the raw bytes of a body that is not JSON."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return masked(response.json())
    return response.content


def assert_same_answer(fast: httpx.Response, routed: httpx.Response) -> None:
    assert (fast.status_code, body_of(fast)) == (routed.status_code, body_of(routed)), (
        f"fast path: {fast.status_code} {fast.text[:500]}\nroute: {routed.status_code} {routed.text[:500]}"
    )
    assert headers_that_matter(fast) == headers_that_matter(routed)
    assert headers_that_matter(fast)["x-request-id"]


# --- a body that never comes --------------------------------------------------------------------
def stalled_post(app: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST ``path`` to the ASGI ``app`` with headers and no body ever: the client sends
    nothing after its headers, whatever the time allowed. Returns (status, headers, body)
    of the answer, which only the body timeout (``RequestBodyTimeoutMiddleware``) can give."""
    raw_headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *raw_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await never.wait()
            raise AssertionError("unreachable")  # pragma: no cover

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(run())
    start = next(message for message in sent if message["type"] == "http.response.start")
    answer_headers = {name.decode(): value.decode() for name, value in start["headers"]}
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], answer_headers, body
