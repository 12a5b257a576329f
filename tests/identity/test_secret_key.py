"""The key that signs access tokens, as an installation runs it: generated on first
start into the data directory (private to its owner), shared by every process of the
installation, kept across restarts; the published development key refused outside
the test suite; and the account takeover it allowed (an organisation admin reads a
member's session id from the audit log and signs a token with the published key)
closed end to end."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from maestro.config import DEFAULT_SECRET_KEY, Settings
from maestro.db import utcnow
from tests.conftest import RunningProcess, free_port, settings_env, wait_answering

pytestmark = pytest.mark.slow

API = "/api/v1"
ME = f"{API}/auth/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "secret_key"


@pytest.fixture
def installation(make_settings: Callable[..., Settings]) -> Settings:
    """A development installation with no MAESTRO_SECRET_KEY, whose data directory has
    never been started (the test's migrated database lives elsewhere)."""
    settings = make_settings(environment="development")
    assert settings.secret_key is None and not key_file(settings).exists()
    return settings


# A process of the installation that reads (or creates) the key once released: it says
# "ready" once imported, and waits for its standard input to close.
READ_KEY = """
import sys
from pathlib import Path
from maestro.config import load_or_create_secret_key
print("ready", flush=True)
sys.stdin.read()
print(load_or_create_secret_key(Path(sys.argv[1])), flush=True)
"""


class TestKeyFile:
    def test_first_start_creates_a_private_key_that_restarts_reuse(
        self, installation: Settings, serve: Callable[..., RunningProcess]
    ) -> None:
        server = serve(installation)
        path = key_file(installation)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = path.read_text().strip()
        assert len(key) >= 32 and key != DEFAULT_SECRET_KEY
        assert "generated a secret key" in server.output()

        signed_up = httpx.post(
            f"{server.base_url}{API}/auth/register",
            json={"email": "ada@example.com", "password": "long enough"},
            timeout=30,
        )
        assert signed_up.status_code == 201, signed_up.text
        access_token = signed_up.json()["data"]["access_token"]
        jwt.decode(access_token, key, algorithms=["HS256"], issuer="maestro")  # signed with the file's key
        server.stop()

        again = serve(installation)
        assert path.read_text().strip() == key
        assert "generated a secret key" not in again.output()
        assert httpx.get(f"{again.base_url}{ME}", headers=bearer(access_token), timeout=30).status_code == 200

    def test_the_platform_and_the_model_server_share_the_key(
        self,
        installation: Settings,
        serve: Callable[..., RunningProcess],
        model_server: Callable[..., RunningProcess],
    ) -> None:
        """Both start at once on a fresh data directory; a token the platform issues
        is accepted by the model server."""
        server = model_server(installation, wait=False)  # both start at once
        platform = serve(installation)
        wait_answering(server, "/v2/health/live")
        signed_up = httpx.post(
            f"{platform.base_url}{API}/auth/register",
            json={"email": "ada@example.com", "password": "long enough"},
            timeout=30,
        )
        token = signed_up.json()["data"]["access_token"]
        answer = httpx.get(f"{server.base_url}{API}/models", headers=bearer(token), timeout=30)
        assert answer.status_code == 200, answer.text
        forged = jwt.encode(jwt.decode(token, options={"verify_signature": False}), DEFAULT_SECRET_KEY)
        refused = httpx.get(f"{server.base_url}{API}/models", headers=bearer(forged), timeout=30)
        assert refused.status_code == 401

    def test_processes_racing_the_first_start_agree(self, tmp_path: Path) -> None:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", READ_KEY, str(tmp_path / "secret_key")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:  # released together
            assert process.stdin is not None
            process.stdin.close()
        keys = {process.stdout.read().strip() for process in processes if process.stdout is not None}
        assert [process.wait(60) for process in processes] == [0] * len(processes)
        assert keys == {(tmp_path / "secret_key").read_text().strip()}
        assert [path.name for path in tmp_path.iterdir()] == ["secret_key"]


class TestRefusals:
    @pytest.mark.parametrize("command", ["serve", "worker", "model-server"])
    def test_the_published_key_stops_every_process(self, installation: Settings, command: str) -> None:
        env = {**settings_env(installation), "MAESTRO_SECRET_KEY": DEFAULT_SECRET_KEY}
        finished = subprocess.run(
            [sys.executable, "-m", "maestro", command], env=env, capture_output=True, text=True, timeout=60
        )
        assert finished.returncode == 2
        assert "configuration error" in finished.stderr
        assert "published development key" in finished.stderr

    def test_a_data_dir_that_cannot_hold_the_key_stops_the_server(
        self, make_settings: Callable[..., Settings], tmp_path: Path
    ) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        settings = make_settings(environment="development", data_dir=blocker / "data")
        finished = subprocess.run(
            [sys.executable, "-m", "maestro", "serve", "--port", str(free_port())],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 2
        assert "configuration error" in finished.stderr
        assert "set MAESTRO_SECRET_KEY" in finished.stderr


class TestForgedSessionToken:
    def test_an_admin_cannot_act_as_a_member_from_the_audit_log(
        self, installation: Settings, serve: Callable[..., RunningProcess]
    ) -> None:
        """alice administers org A; vic belongs to A and to his own organisation. alice
        reads vic's refresh and sign-out entries in A's audit log and signs a token for
        vic with the published key: refused, and the log gave her no session id."""
        server = serve(installation)
        http = httpx.Client(base_url=server.base_url, timeout=30)

        def sign_up(email: str) -> dict[str, Any]:
            answer = http.post(f"{API}/auth/register", json={"email": email, "password": "long enough"})
            assert answer.status_code == 201, answer.text
            return answer.json()["data"]

        alice, vic = sign_up("alice@example.com"), sign_up("vic@example.com")
        org_a = alice["user"]["current_organization"]["id"]
        org_v = vic["user"]["current_organization"]["id"]
        invited = http.post(
            f"{API}/organizations/{org_a}/users/invite",
            json={"email": "vic@example.com", "role": "viewer"},
            headers=bearer(alice["access_token"]),
        )
        assert invited.status_code == 201, invited.text
        accepted = http.post(
            f"{API}/invitations/accept",
            json={"token": invited.json()["data"]["invite_token"]},
            headers=bearer(vic["access_token"]),
        )
        assert accepted.status_code == 200, accepted.text
        moved = http.put(ME, json={"current_organization": org_a}, headers=bearer(vic["access_token"]))
        assert moved.status_code == 200, moved.text
        sid = jwt.decode(vic["access_token"], options={"verify_signature": False})["sid"]

        # vic refreshes (his long-lived session), and signs in and out elsewhere.
        assert (
            http.post(f"{API}/auth/refresh", json={"refresh_token": vic["refresh_token"]}).status_code == 200
        )
        elsewhere = http.post(
            f"{API}/auth/login", json={"email": "vic@example.com", "password": "long enough"}
        ).json()["data"]
        other_sid = jwt.decode(elsewhere["access_token"], options={"verify_signature": False})["sid"]
        assert http.post(f"{API}/auth/logout", headers=bearer(elsewhere["access_token"])).status_code == 204

        log = http.get(
            f"{API}/organizations/{org_a}/audit-logs",
            params={"actor_id": vic["user"]["id"], "limit": 100},
            headers=bearer(alice["access_token"]),
        )
        assert log.status_code == 200, log.text
        entries = {entry["action"]: entry for entry in log.json()["data"]}
        assert {"auth:refresh", "auth:logout"} <= set(entries)
        assert entries["auth:refresh"]["resource_id"].startswith("sessref_")
        assert sid not in log.text and other_sid not in log.text

        # What alice would sign, had she found the session id anyway.
        now = utcnow()
        claims = {
            "iss": "maestro",
            "sub": vic["user"]["id"],
            "sid": sid,
            "org": None,
            "typ": "access",
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(days=30),
            "jti": "jti_forged",
        }
        forged = jwt.encode(claims, DEFAULT_SECRET_KEY, algorithm="HS256")
        assert http.get(ME, headers=bearer(forged)).status_code == 401
        takeover = http.get(f"{API}/organizations/{org_v}/api-keys", headers=bearer(forged))
        assert takeover.status_code == 401
        assert takeover.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"

        # The same claims signed with the installation's key do work: the key, which
        # never leaves the data directory, is all that stands between them.
        genuine = jwt.encode(claims, key_file(installation).read_text().strip(), algorithm="HS256")
        assert http.get(ME, headers=bearer(genuine)).json()["data"]["id"] == vic["user"]["id"]
        http.close()
