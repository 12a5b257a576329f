"""What a run search may cost: the filter language's limits answer 422 naming the limit,
a statement past the request budget is stopped and answered 503 with Retry-After, and
searches, however heavy, run on readers, so they never make another tenant's writes
fail."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from maestro.app import create_app
from maestro.config import Settings
from maestro.db import new_id, utcnow
from maestro.tracking import search
from maestro.tracking.models import Run, RunTag
from tests.conftest import RunningProcess, wait_until
from tests.factories import Actor, Factory

TAG_LENGTH = 7900  # near the longest tag value a run may have


def seed_runs_with_long_tags(factory: Factory, experiment_id: str, organization_id: str, count: int) -> None:
    """Runs with two long tags each, written in bulk (as an attacker would over days)."""
    now = utcnow()
    runs, tags = [], []
    for number in range(count):
        run_id = new_id("run")
        runs.append(
            {
                "id": run_id,
                "experiment_id": experiment_id,
                "organization_id": organization_id,
                "name": f"seeded-{number}",
                "status": "completed",
                "start_time": 1_700_000_000_000 + number,
                "lifecycle_stage": "active",
                "created_at": now,
            }
        )
        for key in ("t", "u"):
            tags.append({"run_id": run_id, "key": key, "value": f"{number}-{key}-".ljust(TAG_LENGTH, "y")})
    with factory.database.session() as session:
        session.execute(insert(Run), runs)
        session.execute(insert(RunTag), tags)


def heavy_filter(conditions: int = search.MAX_PATTERN_CONDITIONS) -> str:
    """As many pattern matches over the long tags as a filter may hold, matching nothing."""
    return " or ".join(f"tags.{'tu'[n % 2]} ILIKE '%zz{n:03d}%'" for n in range(conditions))


def new_experiment(client: TestClient | httpx.Client, project: str, headers: dict[str, str]) -> str:
    created = client.post(f"/api/v1/projects/{project}/experiments", json={"name": "Sweep"}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert body["success"] is False
    return body["error"]


# --- limits of the language -------------------------------------------------------------------
class TestFilterLimits:
    @pytest.fixture
    def searched(self, client: TestClient, factory: Factory) -> Callable[..., httpx.Response]:
        org = factory.organization()
        user = factory.user(org, "admin")
        project = factory.project(org, user, "private")
        experiment = new_experiment(client, project, user.headers)

        def run_search(filter_text: str, *, across: bool = False) -> httpx.Response:
            url = (
                f"/api/v1/projects/{project}/runs/search"
                if across
                else f"/api/v1/experiments/{experiment}/runs/search"
            )
            return client.post(url, json={"filter": filter_text}, headers=user.headers)

        return run_search

    @pytest.mark.parametrize("across", [False, True])
    @pytest.mark.parametrize(
        ("filter_text", "limit"),
        [
            (
                " and ".join(f"params.p{n} = 'x'" for n in range(search.MAX_CONDITIONS + 1)),
                f"more than {search.MAX_CONDITIONS} conditions",
            ),
            (
                heavy_filter(search.MAX_PATTERN_CONDITIONS + 1),
                f"more than {search.MAX_PATTERN_CONDITIONS} LIKE or ILIKE conditions",
            ),
            (
                "tags.t NOT LIKE '" + "%a" * (search.MAX_PATTERN_LENGTH // 2 + 1) + "'",
                f"longer than {search.MAX_PATTERN_LENGTH} characters",
            ),
        ],
    )
    def test_limits_answer_422_naming_the_limit(
        self, searched: Callable[..., httpx.Response], filter_text: str, limit: str, across: bool
    ) -> None:
        response = searched(filter_text, across=across)
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == "VALIDATION_ERROR"
        assert limit in error["message"]
        assert error["details"][0]["field"] == "filter"

    def test_at_the_limits_a_search_runs(self, searched: Callable[..., httpx.Response]) -> None:
        pattern = "'%" + "a" * (search.MAX_PATTERN_LENGTH - 2) + "%'"
        conditions = [f"tags.t LIKE {pattern}"] * search.MAX_PATTERN_CONDITIONS
        conditions += ["params.p = 'x'"] * (search.MAX_CONDITIONS - search.MAX_PATTERN_CONDITIONS)
        response = searched(" or ".join(conditions))
        assert response.status_code == 200, response.text

    def test_an_overlong_filter_is_refused(self, searched: Callable[..., httpx.Response]) -> None:
        response = searched("params.p = '" + "x" * search.MAX_FILTER_LENGTH + "'")
        assert response.status_code == 422, response.text
        assert error_of(response)["details"][0]["field"] == "filter"
        with pytest.raises(search.SearchError, match=f"longer than {search.MAX_FILTER_LENGTH} characters"):
            search.parse_filter("params.p = '" + "x" * search.MAX_FILTER_LENGTH + "'")


# --- the statement budget ---------------------------------------------------------------------
def test_a_statement_past_the_budget_is_stopped_with_503(make_settings: Callable[..., Settings]) -> None:
    """A search over 2,000 runs with long tags takes hundreds of milliseconds: with a
    50 ms budget it is stopped and answered 503, and the same search on a server
    without a budget completes."""
    unbounded = create_app(make_settings(statement_timeout_ms=0))
    factory = Factory(unbounded)
    org = factory.organization()
    user = factory.user(org, "admin")
    project = factory.project(org, user, "private")
    bounded = create_app(make_settings(statement_timeout_ms=50))
    with (
        TestClient(unbounded, raise_server_exceptions=False) as free,
        TestClient(bounded, raise_server_exceptions=False) as budgeted,
    ):
        experiment = new_experiment(free, project, user.headers)
        seed_runs_with_long_tags(factory, experiment, org, 2000)
        url = f"/api/v1/experiments/{experiment}/runs/search"

        stopped = budgeted.post(url, json={"filter": heavy_filter()}, headers=user.headers)
        assert stopped.status_code == 503, stopped.text
        assert error_of(stopped)["code"] == "SERVICE_UNAVAILABLE"
        assert int(stopped.headers["retry-after"]) >= 1
        # the server carries on with what fits the budget
        assert budgeted.get(f"/api/v1/experiments/{experiment}", headers=user.headers).status_code == 200

        completed = free.post(url, json={"filter": heavy_filter()}, headers=user.headers)
        assert completed.status_code == 200, completed.text
        assert completed.json()["pagination"]["total"] == 0


# --- heavy searches against other tenants' writes, on a real server ---------------------------
@pytest.mark.slow
def test_heavy_searches_never_fail_another_tenants_writes(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    """Two attacker threads loop the heaviest search the language allows over 5,000 runs
    with two 7,900-character tags each. A write that waited for the lock would fail after
    one second; every write and sign-in of another tenant made while the searches run
    succeeds. (PostgreSQL has no database-wide lock; there 100 runs keep the test short,
    as its pattern matches over long values cost about thirty times more.)"""
    # No statement budget here (it has its own test): on a loaded machine it could stop
    # the attacker's searches, and this test is about what they do to others' writes.
    settings = make_settings(sqlite_busy_timeout_ms=1000, statement_timeout_ms=0)
    app = create_app(settings)
    factory = Factory(app)
    victim_org = factory.organization("Victim")
    victim = factory.user(victim_org, "admin")
    victim_project = factory.project(victim_org, victim, "private")
    attacker_org = factory.organization("Attacker")
    attacker: Actor = factory.user(attacker_org, "admin")
    attacker_project = factory.project(attacker_org, attacker, "private")
    server = serve(settings)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        created = client.post(
            f"/api/v1/projects/{victim_project}/models",
            json={"name": "Churn", "model_type": "classification"},
            headers=victim.headers,
        )
        assert created.status_code == 201, created.text
        model = created.json()["data"]["id"]
        experiment = new_experiment(client, attacker_project, attacker.headers)
    seed_runs_with_long_tags(
        factory, experiment, attacker_org, 5000 if settings.uses_embedded_database else 100
    )

    searches: list[int] = []
    stop = threading.Event()

    def attack() -> None:
        with httpx.Client(base_url=server.base_url, headers=attacker.headers, timeout=120) as client:
            while not stop.is_set():
                found = client.post(
                    f"/api/v1/experiments/{experiment}/runs/search", json={"filter": heavy_filter()}
                )
                searches.append(found.status_code)

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for thread in attackers:
        thread.start()
    writes: list[int] = []
    try:
        wait_until(lambda: searches, timeout=120)  # the attack is under way
        with httpx.Client(base_url=server.base_url, headers=victim.headers, timeout=120) as client:
            # Write until the attackers have finished two more searches; they search without
            # pause until stopped, so every write overlaps a search in flight.
            until = len(searches) + 2
            while len(searches) < until:
                written = client.put(f"/api/v1/models/{model}/tags/ping", json={"value": str(len(writes))})
                writes.append(written.status_code)
            signed_in = client.post(
                "/api/v1/auth/login", json={"email": victim.email, "password": victim.password}
            )
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
    assert writes and set(writes) == {200}
    assert signed_in.status_code == 200, signed_in.text
    assert set(searches) == {200}
