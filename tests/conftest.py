"""Test harness: an app on a fresh, migrated database for every test.

Every test that uses ``client``/``app``/``settings`` runs twice, ``[sqlite]`` and
``[postgresql]``. The PostgreSQL run needs ``MAESTRO_TEST_DATABASE_URL`` (``.ci/run``
sets it) and is skipped with that reason otherwise; likewise Redis with
``MAESTRO_TEST_REDIS_URL``. Schemas are built by the real migrations, never by
``create_all``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, make_url, text

# The suite must not be steered by a developer's own MAESTRO_* configuration.
for _key in list(os.environ):
    if _key.startswith("MAESTRO_") and not _key.startswith("MAESTRO_TEST_"):
        del os.environ[_key]

from maestro.app import create_app  # noqa: E402
from maestro.config import Settings  # noqa: E402
from maestro.db import Base  # noqa: E402
from maestro.migrations import import_models, upgrade  # noqa: E402
from tests.factories import Factory, World  # noqa: E402

# Fixtures shared across test folders: trained models and model files, and a platform
# with deployments.
pytest_plugins = ["tests.runtimes.fixtures", "tests.deployments.fixtures"]

import_models()

PG_URL = os.environ.get("MAESTRO_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("MAESTRO_TEST_REDIS_URL")
PG_SKIP = "PostgreSQL tests need MAESTRO_TEST_DATABASE_URL (.ci/run sets it)"
REDIS_SKIP = "Redis tests need MAESTRO_TEST_REDIS_URL (.ci/run sets it)"


def pytest_report_header(config: pytest.Config) -> list[str]:
    databases = (
        f"sqlite, postgresql ({make_url(PG_URL).render_as_string()})" if PG_URL else f"sqlite only: {PG_SKIP}"
    )
    queues = f"sqlite, redis ({REDIS_URL})" if REDIS_URL else f"sqlite only: {REDIS_SKIP}"
    return [f"maestro databases: {databases}", f"maestro job queues: {queues}"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many tests ran on each backend, so a run that silently skipped
    PostgreSQL or Redis is visible at a glance."""
    backends = ("sqlite", "postgresql", "queue_sqlite", "queue_redis")
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if outcome == "passed" and report.when != "call":
                continue
            params = report.nodeid.rpartition("[")[2].rstrip("]").split("-")
            for backend in backends:
                if backend in params:
                    by_outcome = counts.setdefault(backend, {})
                    by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
    if counts:
        terminalreporter.section("maestro backends")
        for backend in backends:
            if backend in counts:
                line = ", ".join(f"{n} {o}" for o, n in sorted(counts[backend].items()))
                terminalreporter.write_line(f"{backend}: {line}")


# --- databases ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test process; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "maestro.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    """A database of its own for this test process, migrated once."""
    if not PG_URL:
        pytest.skip(PG_SKIP)
    admin_url = make_url(PG_URL)
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"maestro_test_{worker_id}_{os.getpid()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_all(url: str) -> None:
    """Delete every row, children before parents. On tables this small DELETE takes a
    tenth of the time TRUNCATE does (which makes new files for each table); sequences
    keep counting, which no test relies on."""
    tables = list(reversed(Base.metadata.sorted_tables))
    if not tables:
        return
    engine = create_engine(url)
    with engine.begin() as connection:
        statements = (f'DELETE FROM "{table.name}"' for table in tables)  # noqa: S608 - names from our metadata
        connection.execute(text("; ".join(statements)))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "maestro.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    _empty_all(url)
    yield url


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.skip(REDIS_SKIP)
    return REDIS_URL


# --- settings and app --------------------------------------------------------------------
@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    """Settings for this test's database and a private data directory and queue."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "run_worker_in_process": False,
            "queue_name": f"maestro-test-{uuid.uuid4().hex[:12]}",
            "maintenance_interval_minutes": 0,
            "access_log": False,
            # Cheap password hashing and no plan limits, except where a test turns them on.
            "password_hash_time_cost": 1,
            "password_hash_memory_kib": 64,
            "rate_limits_enabled": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def factory(app: FastAPI) -> Factory:
    return Factory(app)


@pytest.fixture
def world(factory: Factory) -> World:
    """Who is who: Acme with one person per role, its projects and an inference key, and
    Globex (see ``World``). A test area needing more overrides it with a subclass."""
    return World.build(factory)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# --- real processes ----------------------------------------------------------------------
def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see the same Settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        env[f"MAESTRO_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    log: Path
    base_url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


CLOCK_BEHIND = Path(__file__).with_name("clock_behind.py")


def start_maestro(args: list[str], settings: Settings, log: Path, clock_behind: float = 0) -> RunningProcess:
    """``maestro <args>`` as a process; with ``clock_behind``, its wall clock that many
    seconds in the past (``tests/clock_behind.py``)."""
    handle = log.open("wb")
    launcher = [str(CLOCK_BEHIND), str(clock_behind)] if clock_behind else ["-m", "maestro"]
    process = subprocess.Popen(
        [sys.executable, *launcher, *args],
        env=settings_env(settings),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=log.parent,
    )
    handle.close()
    return RunningProcess(process=process, log=log)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., RunningProcess]]:
    """Start ``maestro <args>`` as a real process; stopped at the end of the test."""
    started: list[RunningProcess] = []

    def run(args: list[str], settings: Settings, clock_behind: float = 0) -> RunningProcess:
        log = tmp_path / f"{args[0]}-{len(started)}.log"
        running = start_maestro(args, settings, log, clock_behind)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop()


def wait_answering(running: RunningProcess, path: str, timeout: float = 90.0) -> RunningProcess:
    """Wait until ``running`` answers 200 on ``path``; fail at once if it exits."""

    def answers() -> bool:
        if running.process.poll() is not None:
            raise AssertionError(f"the process exited early:\n{running.output()}")
        try:
            return httpx.get(f"{running.base_url}{path}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=timeout, interval=0.1)
    return running


@pytest.fixture
def serve(spawn: Callable[..., RunningProcess]) -> Callable[..., RunningProcess]:
    """Start ``maestro serve`` on a free port and wait until /health answers."""

    def run(settings: Settings, *extra: str, clock_behind: float = 0) -> RunningProcess:
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), *extra]
        running = spawn(args, settings, clock_behind)
        running.base_url = f"http://127.0.0.1:{port}"
        return wait_answering(running, "/health")

    return run


@pytest.fixture
def model_server(spawn: Callable[..., RunningProcess]) -> Callable[..., RunningProcess]:
    """Start ``maestro model-server`` on a free port and wait until it is ready (every
    preloaded model loaded and warmed), or with ``ready=False`` only live, or with
    ``wait=False`` not at all (then ``wait_answering`` it)."""

    def run(settings: Settings, *, ready: bool = True, wait: bool = True) -> RunningProcess:
        port = free_port()
        running = spawn(["model-server", "--host", "127.0.0.1", "--port", str(port)], settings)
        running.base_url = f"http://127.0.0.1:{port}"
        if wait:
            wait_answering(running, "/api/v1/health" if ready else "/v2/health/live")
        return running

    return run


def held_reads(
    app: FastAPI, table: str, hold: threading.Event | None = None
) -> tuple[list[str], threading.Event]:
    """The SELECT statements that name ``table`` from now on; with ``hold``, the first of
    them waits until it is set (the returned event says when one is waiting)."""
    seen: list[str] = []
    entered = threading.Event()

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and table in statement:
            seen.append(statement)
            if hold is not None and not entered.is_set():
                entered.set()
                assert hold.wait(30), "the test never released the held lookup"

    event.listen(app.state.database.engine, "before_cursor_execute", note)
    return seen, entered
