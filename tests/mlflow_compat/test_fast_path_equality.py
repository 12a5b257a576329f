"""MLflow's hottest routes answered by the fast path (``mlflow_compat.fast_path``) exactly
as by the FastAPI routes (``runs/log-metric``, ``runs/log-batch``, ``runs/search``,
``runs/get``, at the root and under ``/mlflow/{project_id}``): two platform apps on the
same settings and database, one with ``MAESTRO_FAST_PATHS`` on and one with it off, get
the same requests (successes and every error class) and must give the same status,
headers that matter, body and audit rows, and the status the routes answer.

The cases that write log to a run of their own, and the cases that read read another
run, which nothing writes to, so every answer is the same whichever app gives it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.app import create_app
from maestro.config import Settings
from maestro.identity.models import AuditLog
from maestro.mlflow_compat.fast_path import FastMlflow
from maestro.mlflow_compat.routes import MAX_BODY_BYTES
from tests.factories import Factory
from tests.fast_path_equality import (
    assert_same_answer,
    equality_settings,
    module_database_url,  # noqa: F401 - a fixture
    stalled_post,
    switched_off,
)
from tests.mlflow_compat.conftest import ALL_ACTIONS, API, World, ok

AUDIT_VOLATILE = ("id", "created_at", "request_id", "ip")
JSON = {"Content-Type": "application/json"}
TIMESTAMP = 1_800_000_000_000


@dataclass
class Pair:
    fast: TestClient
    routed: TestClient
    world: World
    settings: Settings
    runs: dict[str, str]  # "write", "read", "theirs": run ids
    experiment: str  # of the read run
    callers: dict[str, dict[str, str]] = field(default_factory=dict)


def _world(factory: Factory) -> World:
    """The organisations and people of ``tests/mlflow_compat/conftest.py``'s ``world``."""
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    other_org = factory.organization("Globex")
    outsider = factory.user(other_org, "admin")
    grants = {"experiments": ALL_ACTIONS, "models": ALL_ACTIONS}
    return World(
        org=org,
        admin=admin,
        developer=factory.user(org, "developer"),
        viewer=factory.user(org, "viewer"),
        project=factory.project(org, admin, "organization", name="Fraud"),
        key=factory.api_key(org, grants),
        other_org=other_org,
        outsider=outsider,
        other_project=factory.project(other_org, outsider, "organization", name="Globex"),
        other_key=factory.api_key(other_org, grants),
    )


def _run(client: TestClient, headers: dict[str, str], experiment: str) -> str:
    body = {"experiment_id": experiment, "start_time": 1_700_000_000_000, "run_name": "r"}
    return ok(client.post(f"{API}/runs/create", json=body, headers=headers))["run"]["info"]["run_id"]


def _experiment(client: TestClient, headers: dict[str, str], name: str) -> str:
    return ok(client.post(f"{API}/experiments/create", json={"name": name}, headers=headers))["experiment_id"]


@pytest.fixture(scope="module")
def pair(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:  # noqa: F811
    settings = equality_settings(module_database_url, tmp_path_factory.mktemp("mlflow-equality") / "data")
    fast_app, routed_app = create_app(settings), create_app(switched_off(settings))
    assert any(m.cls is FastMlflow for m in fast_app.user_middleware)
    assert not any(m.cls is FastMlflow for m in routed_app.user_middleware)
    with (
        TestClient(fast_app, raise_server_exceptions=False) as fast,
        TestClient(routed_app, raise_server_exceptions=False) as routed,
    ):
        factory = Factory(fast_app)
        world = _world(factory)
        experiment = _experiment(fast, world.headers(), "read")
        read_run = _run(fast, world.headers(), experiment)
        metrics = [
            {"key": "acc", "value": 0.5 + step / 100, "timestamp": TIMESTAMP, "step": step}
            for step in range(5)
        ]
        ok(
            fast.post(
                f"{API}/runs/log-batch",
                json={"run_id": read_run, "metrics": metrics},
                headers=world.headers(),
            )
        )
        runs = {
            "write": _run(fast, world.headers(), _experiment(fast, world.headers(), "write")),
            "read": read_run,
            "theirs": _run(
                fast,
                world.headers(world.other_key, world.other_project),
                _experiment(fast, world.headers(world.other_key, world.other_project), "theirs"),
            ),
        }
        callers = {
            "key": world.headers(),
            "developer": world.headers(world.developer.access_token),
            "viewer": world.headers(world.viewer.access_token),
            "outsider": world.headers(world.outsider.access_token, world.other_project),
            "outsider-in-our-project": world.headers(world.outsider.access_token),
            "no-experiments-scope": world.headers(factory.api_key(world.org, {"models": ["read"]})),
            "none": {"X-Maestro-Project": world.project},
            "bad-key": world.headers("mk_not-a-key"),
            "bad-token": world.headers("not.a.token"),
            "free-plan": world.headers(
                factory.api_key(factory.organization("Free", plan="free"), {"experiments": ["read"]})
            ),
        }
        yield Pair(fast, routed, world, settings, runs, experiment, callers)


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # after /api/2.0/mlflow/; "{project}" and "{run:<name>}" are filled in
    body: Any  # JSON document, or bytes sent as they are; for GET, the query
    status: int
    caller: str = "key"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    scoped: bool = False  # under /mlflow/{project_id}

    def _fill(self, value: Any, pair: Pair) -> Any:
        if isinstance(value, bytes):
            return self._fill(value.decode(), pair).encode()
        if isinstance(value, str):
            for name, run in pair.runs.items():
                value = value.replace(f"{{run:{name}}}", run)
            return value.replace("{experiment}", pair.experiment)
        if isinstance(value, dict):
            return {key: self._fill(item, pair) for key, item in value.items()}
        if isinstance(value, list):
            return [self._fill(item, pair) for item in value]
        return value

    def send(self, client: TestClient, pair: Pair) -> httpx.Response:
        prefix = f"/mlflow/{pair.world.project}" if self.scoped else ""
        url = f"{prefix}{API}/{self.path}"
        headers = {**pair.callers[self.caller], **self.headers}
        if self.scoped:
            headers.pop("X-Maestro-Project", None)
        if self.method == "GET":
            return client.get(url, params=self._fill(self.body, pair), headers=headers)
        filled = self._fill(self.body, pair)
        content = filled if isinstance(filled, bytes) else orjson.dumps(filled)
        return client.request(self.method, url, content=content, headers=headers)


def _metric(run: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": f"{{run:{run}}}",
        "key": "loss",
        "value": 0.25,
        "timestamp": TIMESTAMP,
        "step": 1,
        **extra,
    }


OVERSIZED = (
    b'{"run_id": "x", "metrics": ['
    + b'{"key": "a", "value": 1, "timestamp": 1},' * (MAX_BODY_BYTES // 40)
    + b"{}]}"
)
# Past the bytes a log-batch of MAESTRO_MAX_METRIC_BATCH points may take (routes.metric_batch_limit).
OVERSIZED_BATCH = (
    b'{"run_id": "x"' + b" " * (Settings.model_fields["max_metric_batch"].default * 512 + 256 * 1024) + b"}"
)
SEARCH = {"experiment_ids": ["{experiment}"], "filter": "metrics.acc > 0.1"}

CASES = [
    # successes
    Case("log-metric", "POST", "runs/log-metric", _metric("write"), 200),
    Case("log-metric-scoped", "POST", "runs/log-metric", _metric("write"), 200, scoped=True),
    Case("log-metric-developer-token", "POST", "runs/log-metric", _metric("write"), 200, "developer"),
    Case(
        "log-metric-text-plain",
        "POST",
        "runs/log-metric",
        _metric("write"),
        200,
        headers={"Content-Type": "text/plain"},
    ),
    Case(
        "log-metric-nan",
        "POST",
        "runs/log-metric",
        b'{"run_id": "{run:write}", "key": "k", "value": NaN, "timestamp": 1}',
        200,
    ),
    Case(
        "log-batch",
        "POST",
        "runs/log-batch",
        {
            "run_id": "{run:write}",
            "metrics": [{"key": "b", "value": i, "timestamp": TIMESTAMP, "step": i} for i in range(3)],
        },
        200,
    ),
    Case(
        "log-batch-params-and-tags",
        "POST",
        "runs/log-batch",
        {
            "run_id": "{run:write}",
            "params": [{"key": "lr", "value": "0.1"}],
            "tags": [{"key": "t", "value": "v"}],
        },
        200,
    ),
    Case("get", "GET", "runs/get", {"run_id": "{run:read}"}, 200),
    Case("get-scoped", "GET", "runs/get", {"run_id": "{run:read}"}, 200, scoped=True),
    Case("get-viewer", "GET", "runs/get", {"run_id": "{run:read}"}, 200, "viewer"),
    Case("search", "POST", "runs/search", SEARCH, 200),
    Case("search-viewer", "POST", "runs/search", SEARCH, 200, "viewer"),
    Case("search-nothing-matches", "POST", "runs/search", {**SEARCH, "filter": "metrics.acc > 5"}, 200),
    # missing, another organisation's
    Case(
        "log-metric-unknown-run", "POST", "runs/log-metric", {**_metric("write"), "run_id": "run_nope"}, 404
    ),
    Case("get-unknown-run", "GET", "runs/get", {"run_id": "run_nope"}, 404),
    Case("log-metric-their-run", "POST", "runs/log-metric", _metric("theirs"), 404),
    Case("get-their-run", "GET", "runs/get", {"run_id": "{run:theirs}"}, 404),
    Case("get-our-run-as-outsider", "GET", "runs/get", {"run_id": "{run:read}"}, 404, "outsider"),
    Case(
        "get-in-our-project-as-outsider",
        "GET",
        "runs/get",
        {"run_id": "{run:read}"},
        404,
        "outsider-in-our-project",
    ),
    Case("search-unknown-experiment", "POST", "runs/search", {"experiment_ids": ["exp_nope"]}, 404),
    # rights
    Case("log-metric-viewer", "POST", "runs/log-metric", _metric("write"), 403, "viewer"),
    Case(
        "log-batch-viewer", "POST", "runs/log-batch", {"run_id": "{run:write}", "metrics": []}, 403, "viewer"
    ),
    Case(
        "get-without-experiments-scope",
        "GET",
        "runs/get",
        {"run_id": "{run:read}"},
        403,
        "no-experiments-scope",
    ),
    # malformed, wrong shapes, too large
    Case("log-metric-malformed-json", "POST", "runs/log-metric", b'{"run_id": ', 400),
    Case("log-metric-not-an-object", "POST", "runs/log-metric", b"[1, 2]", 400),
    Case(
        "log-metric-no-key",
        "POST",
        "runs/log-metric",
        {"run_id": "{run:write}", "value": 1, "timestamp": 1},
        400,
    ),
    Case("log-metric-value-not-a-number", "POST", "runs/log-metric", _metric("write", value="high"), 400),
    Case(
        "log-batch-metrics-not-a-list",
        "POST",
        "runs/log-batch",
        {"run_id": "{run:write}", "metrics": "all"},
        400,
    ),
    Case("search-bad-filter", "POST", "runs/search", {**SEARCH, "filter": "metrics.acc >>> 1"}, 400),
    Case("search-malformed-json", "POST", "runs/search", b"{nope", 400),
    Case("get-no-run-id", "GET", "runs/get", {}, 400),
    Case("log-batch-oversized", "POST", "runs/log-batch", OVERSIZED_BATCH, 413),
    Case("log-metric-oversized", "POST", "runs/log-metric", OVERSIZED, 413),
    # credentials
    Case("log-metric-no-credentials", "POST", "runs/log-metric", _metric("write"), 401, "none"),
    Case("log-metric-unknown-key", "POST", "runs/log-metric", _metric("write"), 401, "bad-key"),
    Case("get-bad-token", "GET", "runs/get", {"run_id": "{run:read}"}, 401, "bad-token"),
    Case("search-no-credentials", "POST", "runs/search", SEARCH, 401, "none"),
]


def _audit(client: TestClient, before: set[str] | None = None) -> Any:
    with client.app.state.database.session(write=False) as session:  # type: ignore[attr-defined]
        rows = session.scalars(select(AuditLog)).all()
        if before is None:
            return {row.id for row in rows}
        found = [
            {
                column.key: "<volatile>" if column.key in AUDIT_VOLATILE else getattr(row, column.key)
                for column in AuditLog.__table__.columns
            }
            for row in rows
            if row.id not in before
        ]
    return sorted(found, key=repr)


def _answer(client: TestClient, case: Case, pair: Pair) -> tuple[httpx.Response, list[Any]]:
    before = _audit(client)
    response = case.send(client, pair)
    return response, _audit(client, before)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_fast_path_answers_like_the_routes(pair: Pair, case: Case) -> None:
    fast, fast_audit = _answer(pair.fast, case, pair)
    routed, routed_audit = _answer(pair.routed, case, pair)
    assert_same_answer(fast, routed)
    assert fast.status_code == case.status, fast.text
    assert fast_audit == routed_audit
    if case.status == 200 and case.method == "POST" and case.path.startswith("runs/log"):
        assert len(fast_audit) == 1, "a change is in the audit log"
    if case.status == 403:
        assert fast_audit, "a refused authorisation is in the audit log"


def test_the_plan_rate_limit_answers_alike(pair: Pair) -> None:
    """A free plan's 101st request within the hour is refused, with the same headers both ways."""
    settings = pair.settings.model_copy(update={"rate_limits_enabled": True})
    case = Case("rate-limited", "GET", "runs/get", {"run_id": "run_nope"}, 404, "free-plan")
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as fast,
        TestClient(create_app(switched_off(settings)), raise_server_exceptions=False) as routed,
    ):
        for _ in range(99):
            assert case.send(fast, pair).status_code == case.send(routed, pair).status_code == 404
        last = case.send(fast, pair), case.send(routed, pair)
        assert_same_answer(*last)
        assert last[0].headers["x-ratelimit-remaining"] == "0"
        refused = case.send(fast, pair), case.send(routed, pair)
        assert_same_answer(*refused)
        assert refused[0].status_code == 429


@pytest.mark.parametrize("path", ["runs/log-metric", "runs/log-batch", "runs/search"])
def test_a_stalled_body_is_cut_off_alike(pair: Pair, path: str) -> None:
    """A client that sends its headers and then nothing: 408, and the connection closed."""
    settings = pair.settings.model_copy(update={"request_body_timeout_seconds": 0.05})
    headers = {**pair.callers["key"], **JSON}
    fast = stalled_post(create_app(settings), f"{API}/{path}", headers)
    routed = stalled_post(create_app(switched_off(settings)), f"{API}/{path}", headers)
    assert fast[0] == routed[0] == 408
    assert fast[1]["connection"] == routed[1]["connection"] == "close"
    assert fast[2] == routed[2] or (
        orjson.loads(fast[2]).get("error", {}).get("code")
        == orjson.loads(routed[2]).get("error", {}).get("code")
    )
