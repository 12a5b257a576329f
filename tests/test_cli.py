from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from maestro import __version__
from maestro.config import Settings
from tests.conftest import settings_env


def maestro(
    *args: str, settings: Settings | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings) if settings else None
    return subprocess.run(
        [sys.executable, "-m", "maestro", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_version() -> None:
    result = maestro("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_openapi_json_and_yaml(tmp_path: Path) -> None:
    as_json = json.loads(maestro("openapi").stdout)
    maestro("openapi", "--format", "yaml", "--output", str(tmp_path / "api.yaml"))
    assert yaml.safe_load((tmp_path / "api.yaml").read_text()) == as_json
    assert "/api/v1/jobs/{job_id}" in as_json["paths"]


def test_db_upgrade_on_a_fresh_directory(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    settings = make_settings(data_dir=fresh, database_url=None)
    before = maestro("db", "current", settings=settings)
    assert "empty" in before.stdout
    upgraded = maestro("db", "upgrade", settings=settings)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database at revision" in upgraded.stdout
    assert (fresh / "maestro.db").exists()


def test_misconfiguration_is_reported_plainly(tmp_path: Path) -> None:
    env_settings = {
        "MAESTRO_ENVIRONMENT": "production",
        "MAESTRO_SECRET_KEY": "maestro-insecure-development-key-change-me",  # the published one
    }
    result = subprocess.run(
        [sys.executable, "-m", "maestro", "db", "current"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **{k: v for k, v in __import__("os").environ.items() if not k.startswith("MAESTRO_")},
            **env_settings,
        },
    )
    assert result.returncode == 2
    assert "configuration error: Value error, MAESTRO_SECRET_KEY is the published" in result.stderr
    assert "Traceback" not in result.stderr


def test_probe_job_without_a_worker_stays_queued(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    result = maestro("jobs", "probe", "--no-wait", settings=settings)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout.split("\n", 1)[1])
    assert job["status"] == "queued"
    shown = maestro("jobs", "show", job["id"], settings=settings)
    assert json.loads(shown.stdout)["id"] == job["id"]
    missing = maestro("jobs", "show", "job_missing", settings=settings)
    assert missing.returncode == 1


def test_users_create_and_reset_password(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from maestro.app import create_app

    settings = make_settings()
    created = maestro(
        "users",
        "create",
        "--email",
        "Root@Example.com",
        "--password",
        "first password",
        "--admin",
        "--organization",
        "Ops",
        settings=settings,
    )
    assert created.returncode == 0, created.stderr
    assert "admin of org_" in created.stdout
    duplicate = maestro(
        "users", "create", "--email", "root@example.com", "--password", "another one", settings=settings
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    invalid = maestro(
        "users", "create", "--email", "notanemail", "--password", "long enough", settings=settings
    )
    assert invalid.returncode == 2
    assert "not a valid email" in invalid.stderr

    with TestClient(create_app(settings)) as client:
        login = client.post(
            "/api/v1/auth/login", json={"email": "root@example.com", "password": "first password"}
        )
        assert login.json()["data"]["user"]["current_organization"]["role"] == "admin"
        token = login.json()["data"]["access_token"]
        reset = maestro(
            "users",
            "reset-password",
            "--email",
            "root@example.com",
            "--password",
            "second password",
            settings=settings,
        )
        assert reset.returncode == 0, reset.stderr
        assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        again = client.post(
            "/api/v1/auth/login", json={"email": "root@example.com", "password": "second password"}
        )
        assert again.status_code == 200
    short = maestro(
        "users", "reset-password", "--email", "root@example.com", "--password", "short", settings=settings
    )
    assert short.returncode == 2


def test_admin_commands_work_on_the_database(make_settings: Callable[..., Settings]) -> None:
    from fastapi.testclient import TestClient

    from maestro.app import create_app

    settings = make_settings()
    created = maestro(
        "users",
        "create",
        "--email",
        "root@example.com",
        "--password",
        "long enough",
        "--admin",
        settings=settings,
    )
    assert created.returncode == 0, created.stderr
    assert "instance administrator" in created.stdout and "admin of" not in created.stdout
    team = maestro(
        "users",
        "create",
        "--email",
        "ada@example.com",
        "--password",
        "long enough",
        "--org-admin",
        settings=settings,
    )
    assert team.returncode == 0, team.stderr
    org_id = team.stdout.split("admin of ")[1].split()[0]

    orgs = maestro("admin", "orgs", settings=settings)
    assert orgs.returncode == 0, orgs.stderr
    assert f"{org_id}\tunlimited\t1 members\tDefault" in orgs.stdout
    assert maestro("admin", "set-plan", org_id, "gold", settings=settings).returncode == 2
    assert maestro("admin", "set-plan", "no-such-org", "free", settings=settings).returncode == 1
    changed = maestro("admin", "set-plan", org_id, "free", settings=settings)
    assert changed.returncode == 0, changed.stderr
    assert "free plan" in changed.stdout

    with TestClient(create_app(settings)) as client:
        wrong = client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": "wrong one"})
        assert wrong.status_code == 401
        root = client.post(
            "/api/v1/auth/login", json={"email": "root@example.com", "password": "long enough"}
        )
        headers = {"Authorization": f"Bearer {root.json()['data']['access_token']}"}
        listed = client.get("/api/v1/admin/organizations", headers=headers).json()["data"]
        assert [(row["id"], row["subscription_plan"]) for row in listed] == [(org_id, "free")]

    users = maestro("admin", "users", settings=settings)
    assert "root@example.com\tactive\tinstance administrator" in users.stdout
    off = maestro("admin", "deactivate", "ada@example.com", settings=settings)
    assert off.returncode == 0 and "deactivated" in off.stdout
    assert "ada@example.com\tdeactivated" in maestro("admin", "users", settings=settings).stdout
    assert maestro("admin", "reactivate", "ada@example.com", settings=settings).returncode == 0
    assert maestro("admin", "deactivate", "nobody@example.com", settings=settings).returncode == 1
    failed = maestro("admin", "failed-sign-ins", settings=settings)
    assert failed.returncode == 0
    assert "wrong_password\t'ada@example.com'" in failed.stdout


# --- start-up: commands that only read, and a busy port ------------------------------------
def test_db_current_never_creates_the_database(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    fresh = tmp_path / "nothing-here"
    result = maestro("db", "current", settings=make_settings(data_dir=fresh, database_url=None))
    assert result.returncode == 0, result.stderr
    assert "empty" in result.stdout
    assert not (fresh / "maestro.db").exists()


def test_serve_on_a_busy_port_says_so_in_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    import socket

    fresh = tmp_path / "fresh"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = maestro(
            "serve", "--port", str(port), settings=make_settings(data_dir=fresh, database_url=None)
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
    assert "MAESTRO_PORT=" in lines[0] and "--port" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (fresh / "maestro.db").exists()  # refused before migrating anything


def test_commands_on_a_database_that_is_not_there_say_so_and_create_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'nowhere' / 'maestro.db'}")
    for command in (
        ("users", "create", "--email", "ada@example.com", "--password", "long enough"),
        ("admin", "users"),
    ):
        result = maestro(*command, settings=settings)
        assert result.returncode == 1, result.stdout
        assert "has no Maestro tables yet: run `maestro db upgrade`" in result.stderr
        assert str(tmp_path / "nowhere" / "maestro.db") in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "nowhere").exists()

    unreachable = make_settings(database_url="postgresql+psycopg://maestro:hunter2@127.0.0.1:9/platform")
    result = maestro("admin", "users", settings=unreachable)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr and "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
