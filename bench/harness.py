"""What the benchmarks share: a real `maestro serve` on a scratch data directory or a
scratch PostgreSQL database, free ports, percentiles and checked answers."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def nearest_rank(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def expect(response: httpx.Response, status: int = 200) -> Any:
    """The envelope's ``data``, once the answer has the expected status."""
    if response.status_code != status:
        raise SystemExit(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}, not {status}: {response.text[:500]}"
        )
    return response.json()["data"]


# --- the server under test -----------------------------------------------------------------
@dataclass
class Backend:
    name: str
    data_dir: Path
    database_url: str | None  # None: the embedded SQLite database under data_dir
    description: str = ""

    @property
    def resolved_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'maestro.db'}"


def server_env(backend: Backend) -> dict[str, str]:
    """The bench's own configuration only; a developer's MAESTRO_* settings stay out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    env.update(
        {
            "MAESTRO_DATA_DIR": str(backend.data_dir),
            "MAESTRO_ACCESS_LOG": "false",
            "MAESTRO_RATE_LIMITS_ENABLED": "false",
            "MAESTRO_ACCESS_TOKEN_TTL_SECONDS": "7200",  # outlives the longest run
            "MAESTRO_LOG_LEVEL": "WARNING",
        }
    )
    if backend.database_url:
        env["MAESTRO_DATABASE_URL"] = backend.database_url
    return env


@contextlib.contextmanager
def running_server(backend: Backend, workers: int = 1) -> Iterator[str]:
    """`maestro serve` on a free port, migrated first; yields its base URL."""
    maestro = Path(sys.executable).parent / "maestro"
    env = server_env(backend)
    migrated = subprocess.run(
        [maestro, "db", "upgrade"], env=env, cwd=backend.data_dir, capture_output=True, text=True
    )
    if migrated.returncode:
        raise SystemExit(f"maestro db upgrade failed:\n{migrated.stdout}{migrated.stderr}")
    port = free_port()
    log_path = backend.data_dir / "serve.log"
    command = [maestro, "serve", "--port", str(port)]
    if workers != 1:
        command += ["--workers", str(workers)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=backend.data_dir, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"maestro serve exited early:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def scratch_postgres(url: str) -> Iterator[tuple[str, str]]:
    """A new, empty database on the server ``url`` names, as (its URL, its name);
    dropped afterwards."""
    admin_url = make_url(url)
    if admin_url.drivername in ("postgresql", "postgres"):
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    if not admin_url.drivername.startswith("postgresql"):
        raise SystemExit(f"--database-url must be a PostgreSQL URL, not {admin_url.drivername}")
    name = f"maestro_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except SQLAlchemyError as exc:
            raise SystemExit(f"cannot create a scratch database with --database-url: {exc}") from exc
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False), name
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
