"""The model server opens the platform's database and never creates one: started where
no platform lives, it says which database it looked for, and leaves no file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from maestro.identity.security import generate_api_key
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def lone_model_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """``maestro model-server`` started in an empty directory, with no data directory or
    database configured: (its URL, that directory, its log)."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    env.update(MAESTRO_SECRET_KEY="s" * 48, PYTHONUNBUFFERED="1")
    port = free_port()
    log = tmp_path / "model-server.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "maestro", "model-server", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base_url}/v2/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(live, timeout=90, interval=0.1)
        yield base_url, workdir, log
    finally:
        process.terminate()
        process.wait(30)


def test_a_missing_platform_database_is_named_and_never_created(
    lone_model_server: tuple[str, Path, Path],
) -> None:
    base_url, workdir, log = lone_model_server
    expected = workdir.resolve() / "maestro-data" / "maestro.db"
    key = generate_api_key().key  # well formed, so only the platform database can tell

    answer = httpx.get(f"{base_url}/api/v1/models", headers={"Authorization": f"Bearer {key}"})

    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert "does not exist" in message
    assert str(expected) not in message  # the caller learns no path; the operator's log has it
    assert not expected.exists()
    assert str(expected) in log.read_text()
    assert not list(workdir.rglob("*.db"))


def test_the_log_names_a_database_server_without_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from maestro.config import Settings
    from maestro.db import Database
    from maestro.model_server.auth import platform_unavailable

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url="postgresql+psycopg://maestro:hunter2@db.internal:5432/platform",
    )
    with caplog.at_level("WARNING", logger="maestro.model_server"):
        message = platform_unavailable(Database(settings, create=False), "to check this credential")
    assert "db.internal" not in message
    logged = caplog.text
    assert "postgresql+psycopg://maestro:***@db.internal:5432/platform" in logged
    assert "hunter2" not in logged
