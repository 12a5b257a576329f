"""Refresh tokens, sign-in and sign-up against anonymous abuse: refresh spam is limited
per address and leaves nothing behind, unknown tokens never take the write lock,
concurrent refreshes of one token keep the session (within the grace) while later
reuse ends it, the audit log names sessions only by a digest, and what the rate
limiter keeps for anonymous keys does not grow without bound."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, insert, select, text

from maestro.api.ratelimit import RateLimiter
from maestro.app import create_app
from maestro.config import Settings
from maestro.db import utcnow
from maestro.errors import RateLimited
from maestro.identity import security, service
from maestro.identity.models import AuditLog, AuthSession, RefreshToken
from maestro.migrations import upgrade
from tests.conftest import PG_SKIP, PG_URL, RunningProcess
from tests.factories import Factory

ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
GARBAGE = ["mr_garbage", "x" * 199, "", "mr_" + "A" * 43]  # the last is well formed but unknown


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def row_counts(app: Any) -> dict[str, int]:
    with app.state.database.session(write=False) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (AuditLog, AuthSession, RefreshToken)
        }


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """A client of an app with the given settings (and address), closed at the end."""
    clients: list[TestClient] = []

    def make(settings: Settings | None = None, address: str = "testclient", **overrides: Any) -> TestClient:
        app = create_app(settings or make_settings(**overrides))
        client = TestClient(app, raise_server_exceptions=False, client=(address, 50000))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.rate_limiter.reset()
        client.__exit__(None, None, None)


@pytest.fixture(params=["memory", "redis"])
def limit_storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {}


# --- refresh spam ------------------------------------------------------------------------
class TestRefreshSpam:
    def test_spam_from_one_address_gets_429_and_writes_nothing(
        self,
        make_client: Callable[..., TestClient],
        make_settings: Callable[..., Settings],
        limit_storage: dict[str, Any],
    ) -> None:
        settings = make_settings(rate_limits_enabled=True, refresh_limit_per_ip="5/minute", **limit_storage)
        attacker = make_client(settings, address="203.0.113.7")
        user = Factory(attacker.app).user(Factory(attacker.app).organization())  # type: ignore[arg-type]
        before = row_counts(attacker.app)

        for token in [*GARBAGE, "mr_again"][:5]:
            response = attacker.post(REFRESH, json={"refresh_token": token})
            assert_401(response)
            assert all(header in response.headers for header in LIMIT_HEADERS)
        limited = attacker.post(REFRESH, json={"refresh_token": "mr_garbage"})
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-remaining"] == "0"
        # Once limited, even a genuine token from that address waits its turn.
        assert attacker.post(REFRESH, json={"refresh_token": user.refresh_token}).status_code == 429

        assert row_counts(attacker.app) == before  # no audit row, no session, no token

        # Another address (another replica's client, in Redis) is served as usual.
        victim = make_client(settings, address="198.51.100.9")
        response = victim.post(REFRESH, json={"refresh_token": user.refresh_token})
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit"] == "5"

    def test_unknown_tokens_leave_no_trace(self, client: TestClient, app: Any) -> None:
        before = row_counts(app)
        for _ in range(25):
            for token in GARBAGE:
                assert_401(client.post(REFRESH, json={"refresh_token": token}))
        assert row_counts(app) == before

    def test_unknown_tokens_never_wait_for_the_write_lock(
        self, make_client: Callable[..., TestClient], database_url: str
    ) -> None:
        """Another writer holds SQLite's write lock and the server waits for it only
        briefly: unknown tokens are still answered 401, since they are looked up on a
        reader, while a genuine refresh has to wait for the lock."""
        if not database_url.startswith("sqlite"):
            pytest.skip("the write lock is SQLite's")
        client = make_client(sqlite_busy_timeout_ms=50)
        user = Factory(client.app).user(Factory(client.app).organization())  # type: ignore[arg-type]
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for token in GARBAGE:
                assert_401(client.post(REFRESH, json={"refresh_token": token}))
            assert client.post(REFRESH, json={"refresh_token": user.refresh_token}).status_code >= 500
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert client.post(REFRESH, json={"refresh_token": user.refresh_token}).status_code == 200


# --- the grace for concurrent refreshes ----------------------------------------------------
class TestReuseGrace:
    def test_the_grace_follows_the_clock(self, make_client: Callable[..., TestClient]) -> None:
        """The clock is the test's: the same spent token is accepted 9 s after it was
        spent (grace 10 s), and refused 11 s after, which ends the session."""
        client = make_client(refresh_reuse_grace_seconds=10)
        app: Any = client.app
        actor = Factory(app).user(Factory(app).organization())
        settings, database = app.state.settings, app.state.database
        spent_at = utcnow()
        with database.session() as session:
            first = service.refresh(session, settings, actor.refresh_token, now=spent_at)
        with database.session() as session:
            again = service.refresh(
                session, settings, actor.refresh_token, now=spent_at + timedelta(seconds=9)
            )
        assert first.tokens is not None and again.tokens is not None and not again.reused
        assert first.tokens.refresh_token != again.tokens.refresh_token
        for pair in (first.tokens, again.tokens):  # both are live pairs of the same session
            assert client.get(ME, headers=bearer(pair.access_token)).status_code == 200
        with database.session() as session:
            late = service.refresh(
                session, settings, actor.refresh_token, now=spent_at + timedelta(seconds=11)
            )
        assert late.tokens is None and late.reused
        for pair in (first.tokens, again.tokens):
            assert_401(client.get(ME, headers=bearer(pair.access_token)))
            assert_401(client.post(REFRESH, json={"refresh_token": pair.refresh_token}))

    def test_within_the_grace_both_tabs_stay_signed_in(self, make_client: Callable[..., TestClient]) -> None:
        client = make_client(refresh_reuse_grace_seconds=300)
        app: Any = client.app
        actor = Factory(app).user(Factory(app).organization())
        tabs = [client.post(REFRESH, json={"refresh_token": actor.refresh_token}) for _ in range(2)]
        assert [tab.status_code for tab in tabs] == [200, 200]
        for tab in tabs:
            pair = tab.json()["data"]
            assert client.get(ME, headers=bearer(pair["access_token"])).status_code == 200
            assert client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}).status_code == 200
        with app.state.database.session(write=False) as session:
            assert session.scalar(select(AuthSession.revoked_at)) is None
            assert session.scalar(select(func.count()).where(AuditLog.outcome == "failure")) == 0

    def test_the_grace_does_not_revive_an_ended_session(self, make_client: Callable[..., TestClient]) -> None:
        client = make_client(refresh_reuse_grace_seconds=300)
        app: Any = client.app
        actor = Factory(app).user(Factory(app).organization())
        assert client.post(REFRESH, json={"refresh_token": actor.refresh_token}).status_code == 200
        assert client.post("/api/v1/auth/logout", headers=actor.headers).status_code == 204
        assert_401(client.post(REFRESH, json={"refresh_token": actor.refresh_token}))


# --- the audit log names sessions by a digest ------------------------------------------------
class TestSessionsInTheAuditLog:
    def test_refresh_logout_and_reuse_rows_carry_no_session_id(
        self, make_client: Callable[..., TestClient]
    ) -> None:
        client = make_client(refresh_reuse_grace_seconds=0)
        app: Any = client.app
        org = Factory(app).organization()
        actor = Factory(app).user(org)
        sid = jwt.decode(actor.access_token, options={"verify_signature": False})["sid"]
        pair = client.post(REFRESH, json={"refresh_token": actor.refresh_token}).json()["data"]
        assert client.post("/api/v1/auth/logout", headers=bearer(pair["access_token"])).status_code == 204
        other = Factory(app).user(org)  # a second user's session, ended by reuse
        client.post(REFRESH, json={"refresh_token": other.refresh_token})
        assert_401(client.post(REFRESH, json={"refresh_token": other.refresh_token}))

        with app.state.database.session(write=False) as session:
            rows = session.scalars(select(AuditLog).where(AuditLog.resource_type == "sessions")).all()
        assert {(row.action, row.outcome, row.status_code) for row in rows} == {
            ("auth:refresh", "success", 200),
            ("auth:logout", "success", 204),
            ("auth:refresh", "failure", 401),
        }
        assert all(row.resource_id and row.resource_id.startswith("sessref_") for row in rows)
        ours = {row.resource_id for row in rows if row.actor_id == actor.user_id}
        assert ours == {security.session_reference(sid)}  # one session's entries still match up
        admin = Factory(app).user(org)
        listing = client.get(f"/api/v1/organizations/{org}/audit-logs", headers=admin.headers)
        assert listing.status_code == 200
        assert "sess_" not in listing.text

    @pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
    def test_the_upgrade_replaces_ids_already_in_the_log(self, tmp_path: Path, backend: str) -> None:
        url = f"sqlite:///{tmp_path / 'old.db'}"
        scratch = None
        if backend == "postgresql":
            if not PG_URL:
                pytest.skip(PG_SKIP)
            scratch = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
            scratch = scratch.execution_options(isolation_level="AUTOCOMMIT")
            name = f"maestro_test_sessref_{time.time_ns()}"
            with scratch.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            url = scratch.url.set(database=name).render_as_string(hide_password=False)
        try:
            upgrade(url, "69a023c44d7c")  # the revision before
            engine = create_engine(url)
            sessions = [f"sess_{n:026d}" for n in range(3)]
            with engine.begin() as connection:
                for number, sid in enumerate([*sessions, "sess_untouched"]):
                    connection.execute(
                        insert(AuditLog.__table__),
                        {
                            "id": f"audit_{number:026d}",
                            "created_at": utcnow(),
                            "actor_type": "user",
                            "action": "auth:refresh",
                            "resource_type": "sessions" if sid != "sess_untouched" else "projects",
                            "resource_id": sid,
                            "outcome": "success",
                            "details": {},
                        },
                    )
            upgrade(url, "a1d3e5c7b901")
            with engine.connect() as connection:
                rows = connection.execute(select(AuditLog.resource_type, AuditLog.resource_id)).all()
            engine.dispose()
            assert sorted(rows) == sorted(
                [
                    ("projects", "sess_untouched"),
                    *(("sessions", security.session_reference(s)) for s in sessions),
                ]
            )
        finally:
            if scratch is not None:
                with scratch.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                scratch.dispose()


# --- sign-up and sign-in ----------------------------------------------------------------------
class TestSignUpAndSignIn:
    def test_a_taken_email_gets_a_neutral_refusal(self, client: TestClient) -> None:
        body = {"email": "ada@example.com", "password": "analytical engine"}
        assert client.post(REGISTER, json=body).status_code == 201
        taken = client.post(REGISTER, json={**body, "email": "ADA@example.com"})
        assert taken.status_code == 409
        error = taken.json()["error"]
        assert error["code"] == "CONFLICT"
        assert "already" not in error["message"] and "exists" not in error["message"]
        assert error["details"] == [{"field": "email", "message": "cannot be registered"}]

    def test_sign_ups_are_limited_per_address(
        self, make_client: Callable[..., TestClient], limit_storage: dict[str, Any]
    ) -> None:
        client = make_client(
            address="203.0.113.8", rate_limits_enabled=True, login_limit_per_ip="3/minute", **limit_storage
        )
        before = row_counts(client.app)
        answers = [
            client.post(REGISTER, json={"email": f"probe{n}@example.com", "password": "long enough"})
            for n in range(4)
        ]
        assert [answer.status_code for answer in answers] == [201, 201, 201, 429]
        assert "retry-after" in answers[-1].headers
        assert row_counts(client.app)["auth_sessions"] == before["auth_sessions"] + 3

    def test_failed_sign_ins_record_nothing(self, make_client: Callable[..., TestClient]) -> None:
        client = make_client(rate_limits_enabled=True, login_limit_per_ip="1000/minute")
        actor = Factory(client.app).user(Factory(client.app).organization())  # type: ignore[arg-type]
        before = row_counts(client.app)
        for number in range(20):
            response = client.post(LOGIN, json={"email": f"nobody{number}@example.com", "password": "wrong"})
            assert_401(response)
        for _ in range(5):
            assert_401(client.post(LOGIN, json={"email": actor.email, "password": "wrong password"}))
        assert row_counts(client.app) == before


# --- what the rate limiter keeps --------------------------------------------------------------
class TestLimiterMemory:
    def test_keys_of_past_windows_are_forgotten(self, settings: Settings) -> None:
        limiter = RateLimiter(settings.model_copy(update={"rate_limits_enabled": True}))
        for number in range(3000):
            limiter.refresh(f"10.{number // 250}.{number % 250}.1")
            limiter.login(f"10.9.{number % 250}.2", f"someone{number}@example.com")
        storage: Any = limiter.storage
        assert len(storage.events) > 3000
        storage.sweep(now=time.time() + 61)  # a minute later, every window has passed
        assert len(storage.events) == 0

    def test_a_sweep_keeps_the_counts_still_in_their_window(self, settings: Settings) -> None:
        limiter = RateLimiter(
            settings.model_copy(update={"rate_limits_enabled": True, "refresh_limit_per_ip": "2/minute"})
        )
        limiter.refresh("192.0.2.1")
        limiter.refresh("192.0.2.1")
        limiter.storage.sweep()  # type: ignore[union-attr]
        with pytest.raises(RateLimited):
            limiter.refresh("192.0.2.1")

    def test_an_ipv6_client_counts_as_its_slash_64(self, settings: Settings) -> None:
        limiter = RateLimiter(
            settings.model_copy(update={"rate_limits_enabled": True, "refresh_limit_per_ip": "2/minute"})
        )
        limiter.refresh("2001:db8:1:2::1")
        limiter.refresh("2001:db8:1:2:ffff::9")
        with pytest.raises(RateLimited):
            limiter.refresh("2001:db8:1:2::abcd")
        limiter.refresh("2001:db8:1:3::1")  # the next /64 is someone else


# --- against a real server ----------------------------------------------------------------
def _release_together(base_url: str, token: str, callers: int) -> list[httpx.Response]:
    """``callers`` threads present the same refresh token, released at once."""
    barrier = threading.Barrier(callers)

    def call(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            barrier.wait()
            return http.post(REFRESH, json={"refresh_token": token})

    with ThreadPoolExecutor(callers) as pool:
        return list(pool.map(call, range(callers)))


def _signed_up(base_url: str, email: str) -> dict[str, Any]:
    answer = httpx.post(f"{base_url}{REGISTER}", json={"email": email, "password": "long enough"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]


@pytest.mark.slow
class TestConcurrentRefreshOnARealServer:
    CALLERS = 8

    def test_within_the_grace_every_caller_gets_a_live_pair(
        self, serve: Callable[..., RunningProcess], make_settings: Callable[..., Settings]
    ) -> None:
        server = serve(make_settings(refresh_reuse_grace_seconds=300))
        tokens = _signed_up(server.base_url, "tabs@example.com")
        answers = _release_together(server.base_url, tokens["refresh_token"], self.CALLERS)
        assert [answer.status_code for answer in answers] == [200] * self.CALLERS, [a.text for a in answers]
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            for answer in answers:
                pair = answer.json()["data"]
                assert http.get(ME, headers=bearer(pair["access_token"])).status_code == 200
                assert http.post(REFRESH, json={"refresh_token": pair["refresh_token"]}).status_code == 200

    def test_after_the_grace_reuse_ends_the_session(
        self, serve: Callable[..., RunningProcess], make_settings: Callable[..., Settings]
    ) -> None:
        server = serve(make_settings(refresh_reuse_grace_seconds=0))
        tokens = _signed_up(server.base_url, "stolen@example.com")
        answers = _release_together(server.base_url, tokens["refresh_token"], self.CALLERS)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] + [401] * (self.CALLERS - 1), [a.text for a in answers]
        winner = next(answer for answer in answers if answer.status_code == 200).json()["data"]
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            assert_401(http.get(ME, headers=bearer(winner["access_token"])))
            assert_401(http.post(REFRESH, json={"refresh_token": winner["refresh_token"]}))
            # Another user's session is untouched.
            bystander = _signed_up(server.base_url, "bystander@example.com")
            assert http.get(ME, headers=bearer(bystander["access_token"])).status_code == 200
