"""Platform inference answered by the fast path (``deployments.fast_path``) exactly as by
the FastAPI routes ``POST /api/v1/inference/{deployment_name}[/batch]``: two platform
apps on the same settings and database, one with ``MAESTRO_FAST_PATHS`` on and one with
it off, get the same requests (successes and every error class) and must give the same
status, headers that matter, body, audit rows and prediction-log rows, and the status
the routes document.

The rule for a body of the wrong type and too large: the content type is checked first
(415, before any byte of the body is read), then the size (413)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from maestro.app import create_app
from maestro.config import Settings
from maestro.deployments.models import PredictionLog
from maestro.identity.models import AuditLog
from tests.deployments.platform import (
    SCHEMA,
    Tiny,
    deployed,
    inference_at_the_front_door,
    onnx_file,
    records,
    register,
    skops_file,
    upload,
)
from tests.factories import Factory, World
from tests.fast_path_equality import (
    assert_same_answer,
    equality_settings,
    masked,
    module_database_url,  # noqa: F401 - a fixture
    stalled_post,
    switched_off,
)

MAX_BODY = 4096  # MAESTRO_INFERENCE_MAX_BODY_BYTES here: small enough to pass
JSON = {"Content-Type": "application/json"}
AUDIT_VOLATILE = ("id", "created_at", "request_id", "ip")
LOG_VOLATILE = ("id", "created_at", "request_id", "latency_ms")


@dataclass
class Apps:
    fast: TestClient
    routed: TestClient
    callers: dict[str, dict[str, str]]
    settings: Settings


@pytest.fixture(scope="module")
def world(module_database_url: str, tmp_path_factory: pytest.TempPathFactory, tiny: Tiny) -> Iterator[Apps]:  # noqa: F811
    """Acme's "fraud-api" (ONNX), "fraud-slow" (skops) and "fraud-labelled" (ONNX, its
    classes named by the version's class_labels) active, "paused-api" inactive; Globex's
    "globex-api"."""
    settings = equality_settings(
        module_database_url,
        tmp_path_factory.mktemp("inference-equality") / "data",
        inference_max_body_bytes=MAX_BODY,
        inference_max_rows=5,
    )
    fast_app, routed_app = create_app(settings), create_app(switched_off(settings))
    assert inference_at_the_front_door(fast_app)
    assert not inference_at_the_front_door(routed_app)
    with (
        TestClient(fast_app, raise_server_exceptions=False) as fast,
        TestClient(routed_app, raise_server_exceptions=False) as routed,
    ):
        factory = Factory(fast_app)
        team = World.build(factory)
        model = register(fast, team)
        onnx = upload(fast, model, team.developer.headers, onnx_file(tiny.first))
        skops = upload(fast, model, team.developer.headers, skops_file(tiny.second), filename="m.skops")
        deployed(fast, team, "fraud-api", onnx["id"])
        deployed(fast, team, "fraud-slow", skops["id"])
        labelled = upload(
            fast,
            model,
            team.developer.headers,
            onnx_file(tiny.first),
            schema={**SCHEMA, "class_labels": ["legit", "fraud"]},
        )
        deployed(fast, team, "fraud-labelled", labelled["id"])
        paused = deployed(fast, team, "paused-api", onnx["id"])
        stopped = fast.put(
            f"/api/v1/deployments/{paused['id']}", json={"status": "inactive"}, headers=team.admin.headers
        )
        assert stopped.status_code == 200, stopped.text
        theirs = register(fast, team, "Globex model", project=team.other_project)
        their_version = upload(fast, theirs, team.outsider.headers, onnx_file(tiny.second))
        answer = fast.post(
            f"/api/v1/projects/{team.other_project}/deployments",
            json={"name": "globex-api", "model_version_id": their_version["id"]},
            headers=team.outsider.headers,
        )
        assert answer.status_code == 201, answer.text
        free = factory.organization("Free plan", plan="free")
        callers = {
            "key": team.key_headers,
            "viewer": team.viewer.headers,
            "developer": team.developer.headers,
            "outsider": team.outsider.headers,
            "no-inference-scope": {"X-API-Key": factory.api_key(team.org, {"models": ["read"]})},
            "free-plan": {"X-API-Key": factory.api_key(free, {"inference": ["read"]})},
            "none": {},
            "bad-key": {"X-API-Key": "mk_not-a-key"},
            "bad-token": {"Authorization": "Bearer not.a.token"},
        }
        yield Apps(fast, routed, callers, settings)


DEPLOYED = ("fraud-api", "fraud-slow", "fraud-labelled", "paused-api")
ROWS = records([[0.5, 0.1, 0.2, 0.9], [-1.0, 0.3, 0.1, -0.5], [2.0, 0.0, 0.0, 1.0]])


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: bytes
    status: int  # what the route documents
    caller: str = "key"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    streamed: bool = False

    def send(self, client: TestClient, world: Apps) -> httpx.Response:
        headers = {**world.callers[self.caller], **self.headers}
        url = f"/api/v1/inference/{self.path}"
        if self.streamed:
            chunks = [self.body[i : i + 1000] for i in range(0, len(self.body), 1000)]
            return client.post(url, content=iter(chunks), headers=headers)
        return client.post(url, content=self.body, headers=headers)


HUGE = _json({"instances": ROWS * 100})
CSV = b"amount,time_of_day,day_of_week,merchant_risk\n" + b"0.1,0.2,0.3,0.4\n" * (MAX_BODY // 16 + 1)
TEXT = {"Content-Type": "text/csv"}
ONE = _json({"instances": ROWS[:1]})
THREE = _json({"instances": ROWS})

CASES = [
    Case("one-row", "fraud-api", ONE, 200),
    Case("rows", "fraud-api", THREE, 200),
    Case("batch", "fraud-api/batch", _json({"instances": ROWS * 4}), 200),
    Case("threaded-model", "fraud-slow", THREE, 200),
    Case("class-labels", "fraud-labelled", THREE, 200),
    Case("class-labels-batch", "fraud-labelled/batch", _json({"instances": ROWS * 4}), 200),
    Case("viewer-token", "fraud-api", ONE, 200, "viewer"),
    Case("json-suffix-type", "fraud-api", ONE, 200, headers={"Content-Type": "application/vnd.x+json"}),
    Case("no-content-type", "fraud-api", ONE, 200, headers={}),
    Case("unknown-deployment", "missing", ONE, 404),
    Case("unknown-deployment-batch", "missing/batch", ONE, 404),
    Case("other-organisations-deployment", "globex-api", ONE, 404),
    Case("other-organisations-caller", "fraud-api", ONE, 404, "outsider"),
    Case("key-without-inference-scope", "fraud-api", ONE, 403, "no-inference-scope"),
    Case("inactive-deployment", "paused-api", ONE, 503),
    Case("name-the-route-refuses", "Not_A_Name", ONE, 422),
    Case("malformed-json", "fraud-api", b'{"instances": [', 422),
    Case("not-an-object", "fraud-api", b"[1, 2]", 422),
    Case("no-instances", "fraud-api", _json({"rows": ROWS}), 422),
    Case("missing-feature", "fraud-api", _json({"instances": [{"amount": 1}]}), 422),
    Case("not-a-number", "fraud-api", _json({"instances": [{**ROWS[0], "amount": "x"}]}), 422),
    Case("too-many-rows", "fraud-api", _json({"instances": ROWS * 2}), 413),
    Case("wrong-type", "fraud-api", ONE, 415, headers=TEXT),
    Case("wrong-type-batch", "fraud-api/batch", ONE, 415, headers={"Content-Type": "multipart/form-data"}),
    Case("oversized", "fraud-api", HUGE, 413),
    Case("oversized-batch", "fraud-api/batch", HUGE, 413),
    Case("oversized-streamed", "fraud-api", HUGE, 413, streamed=True),
    Case("oversized-wrong-type", "fraud-api", CSV, 415, headers=TEXT),
    Case("oversized-streamed-wrong-type", "fraud-api", CSV, 415, headers=TEXT, streamed=True),
    Case("no-credentials", "fraud-api", ONE, 401, "none"),
    Case("unknown-key", "fraud-api", ONE, 401, "bad-key"),
    Case("bad-token", "fraud-api", ONE, 401, "bad-token"),
    Case("no-credentials-unknown-deployment", "missing", ONE, 401, "none"),
    Case("no-credentials-wrong-type", "fraud-api", CSV, 401, "none", headers=TEXT),
]


def _rows(client: TestClient, model: Any, after: set[str], volatile: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of ``model`` not in ``after`` (their ids), volatile columns masked, in a stable order."""
    app = client.app
    app.state.serving.recorder.flush()  # type: ignore[attr-defined]
    with app.state.database.session(write=False) as session:  # type: ignore[attr-defined]
        rows = session.scalars(select(model)).all()
        found = [
            {
                column.key: "<volatile>" if column.key in volatile else getattr(row, column.key)
                for column in model.__table__.columns
            }
            for row in rows
            if row.id not in after
        ]
    return sorted(found, key=repr)


def _ids(client: TestClient, model: Any) -> set[str]:
    client.app.state.serving.recorder.flush()  # type: ignore[attr-defined]
    with client.app.state.database.session(write=False) as session:  # type: ignore[attr-defined]
        return set(session.scalars(select(model.id)).all())


def _answer_and_rows(
    client: TestClient, case: Case, world: Apps
) -> tuple[httpx.Response, list[Any], list[Any]]:
    audits, logs = _ids(client, AuditLog), _ids(client, PredictionLog)
    response = case.send(client, world)
    return (
        response,
        _rows(client, AuditLog, audits, AUDIT_VOLATILE),
        _rows(client, PredictionLog, logs, LOG_VOLATILE),
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_fast_path_answers_like_the_routes(world: Apps, case: Case) -> None:
    fast, fast_audit, fast_log = _answer_and_rows(world.fast, case, world)
    routed, routed_audit, routed_log = _answer_and_rows(world.routed, case, world)
    assert_same_answer(fast, routed)
    assert fast.status_code == case.status, fast.text
    assert fast_audit == routed_audit
    assert masked(fast_log) == masked(routed_log)
    if case.caller == "key" and case.path.split("/")[0] in DEPLOYED:
        # A request that reached a deployment is in its prediction log, either way.
        assert len(fast_log) == 1, fast_log
    if case.status == 403:
        assert fast_audit, "a refused authorisation is in the audit log"


def test_the_plan_rate_limit_answers_alike(world: Apps) -> None:
    """A free plan's 101st request within the hour is refused, with the same headers both ways."""
    settings = world.settings.model_copy(update={"rate_limits_enabled": True})
    case = Case("rate-limited", "fraud-api", ONE, 404, "free-plan")
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as fast,
        TestClient(create_app(switched_off(settings)), raise_server_exceptions=False) as routed,
    ):
        for _ in range(99):
            assert case.send(fast, world).status_code == case.send(routed, world).status_code == 404
        last = case.send(fast, world), case.send(routed, world)  # the 100th: not Acme's deployment
        assert_same_answer(*last)
        assert last[0].headers["x-ratelimit-remaining"] == "0"
        refused = case.send(fast, world), case.send(routed, world)
        assert_same_answer(*refused)
        assert refused[0].status_code == 429


@pytest.mark.parametrize("path", ["fraud-api", "fraud-api/batch"])
def test_a_stalled_body_is_cut_off_alike(world: Apps, path: str) -> None:
    """A client that sends its headers and then nothing: 408, and the connection closed."""
    settings = world.settings.model_copy(update={"request_body_timeout_seconds": 0.05})
    headers = {**world.callers["key"], **JSON}
    fast = stalled_post(create_app(settings), f"/api/v1/inference/{path}", headers)
    routed = stalled_post(create_app(switched_off(settings)), f"/api/v1/inference/{path}", headers)
    assert fast[0] == routed[0] == 408
    assert fast[1]["connection"] == routed[1]["connection"] == "close"
    assert (
        orjson.loads(fast[2])["error"]["code"]
        == orjson.loads(routed[2])["error"]["code"]
        == "REQUEST_TIMEOUT"
    )


def test_the_switch_is_a_setting(tmp_path: Path) -> None:
    assert equality_settings("sqlite://", tmp_path).fast_paths is True
    assert Settings(_env_file=None, fast_paths="false").fast_paths is False  # type: ignore[call-arg]
