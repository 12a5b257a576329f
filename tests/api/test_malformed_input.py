"""Malformed input is a clear 4xx in the error shape, never a 500, and leaves nothing
behind: crafted pagination cursors on every kind of list, and free-form JSON nested
deeper than responses can serialise (metrics, a model schema, an experiment's config,
a run's parameters)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from maestro.api.pagination import _sort_type, decode_cursor, encode_cursor
from maestro.db import utcnow
from maestro.organizations.models import Membership
from maestro.registry.models import ModelVersion, RegisteredModel
from maestro.schemas import MAX_JSON_DEPTH, json_depth
from maestro.tracking.models import Experiment, Run, RunArtifact
from tests.factories import Actor, Factory
from tests.registry.conftest import new_model, new_version, upload


@dataclass
class Lists:
    admin: Actor
    org: str
    project: str
    model: str
    experiment: str
    run: str

    def routes(self) -> list[tuple[str, str]]:
        """(list route, the key it sorts by): one of every kind of sort column (times,
        names, paths) and of every domain. A route's own query goes in ``query``."""
        run = f"/api/v1/experiments/{self.experiment}/runs/{self.run}"
        return [
            (f"/api/v1/projects/{self.project}/models", "created_at"),
            (f"/api/v1/projects/{self.project}/models", "name"),
            (f"/api/v1/projects/{self.project}/models", "updated_at"),
            (f"/api/v1/models/{self.model}/versions", "created_at"),
            (f"/api/v1/projects/{self.project}/experiments", "created_at"),
            (f"/api/v1/experiments/{self.experiment}/runs", "created_at"),
            (f"{run}/artifacts", "path"),
            (f"/api/v1/organizations/{self.org}/projects", "created_at"),
            (f"/api/v1/projects/{self.project}/members", "added_at"),
            (f"/api/v1/organizations/{self.org}/users", "joined_at"),
            ("/api/v1/organizations", "created_at"),
            (f"/api/v1/projects/{self.project}/deployments", "created_at"),
            (f"/api/v1/projects/{self.project}/files", "created_at"),
            (f"/api/v1/organizations/{self.org}/api-keys", "created_at"),
            (f"/api/v1/organizations/{self.org}/audit-logs", "created_at"),
        ]


@pytest.fixture
def lists(client: TestClient, factory: Factory) -> Lists:
    org = factory.organization("Acme")
    admin = factory.user(org, "admin")
    project = factory.project(org, admin, "organization", name="Fraud")
    model = new_model(client, project, admin.headers)["id"]
    new_version(client, model, admin.headers)
    experiment = client.post(
        f"/api/v1/projects/{project}/experiments", json={"name": "Tuning"}, headers=admin.headers
    ).json()["data"]["id"]
    run = client.post(f"/api/v1/experiments/{experiment}/runs", json={}, headers=admin.headers).json()["data"]
    return Lists(admin, org, project, model, experiment, run["id"])


def page(client: TestClient, lists: Lists, path: str, key: str, cursor: str | None = None) -> Any:
    """GET a list sorted by ``key`` (models choose their sort; the others have one)."""
    params = {"sort": key} if path.endswith("/models") else {}
    if cursor is not None:
        params["cursor"] = cursor
    return client.get(path, params=params, headers=lists.admin.headers)


def cursor_of(payload: Any) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def refused_naming_cursor(response: Any, field: str = "cursor") -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert [detail["field"] for detail in body["error"]["details"]] == [field]
    assert body["metadata"]["request_id"]


def crafted(key: str) -> list[str]:
    """Cursors a client can make for a list sorted by ``key``."""
    now = utcnow().isoformat()
    payloads: list[Any] = [
        [key, 1e30, "x"],  # a number where a time (or a name) belongs
        [key, {"d": "NaN"}, "x"],
        [key, {"d": "Infinity"}, "x"],
        [key, {"d": "not a number"}, "x"],
        [key, {"t": "2026-01-01T00:00:00"}, "x"],  # a time without a time zone
        [key, {"t": "0001-01-01T00:00:00+05:00"}, "x"],  # before year 1 in UTC
        [key, {"t": "9999-12-31T23:00:00-05:00"}, "x"],  # after year 9999 in UTC
        [key, {"t": 5}, "x"],
        [key, {"t": now, "d": "1"}, "x"],
        [key, {"x": 1}, "x"],
        [key, [now], "x"],
        [key, True, "x"],
        [key, 10**30, "x"],
        [key, {"t": now}, 5],  # an id that is not a string
        [key, {"t": now}, "x\u0000y"],
        [key, {"t": now}, "x' OR '1'='1"],
        [key, {"t": now}, "x" * 65],
        [key],  # wrong lengths
        [],
        [key, {"t": now}, "x", "extra"],
        {key: 1, "b": 2, "c": 3},  # an object of three keys unpacks like a list of three
        "abc",
        None,
        42,
        ["other_key", {"t": now}, "x"],
    ]
    if key in ("name", "path"):
        payloads += [[key, {"t": now}, "x"], [key, 1, "x"]]  # a time or a number where text belongs
        payloads += [[key, "a\ud800", "x"], [key, "a\x00", "x"]]  # text no database stores
    cursors = [cursor_of(payload) for payload in payloads]
    cursors += [
        cursor_of(b"\xff\xfe\xfa not UTF-8"),
        cursor_of(b'["' + key.encode() + b'", 1e400, "x"]'),  # infinity, as Python's JSON reads it
        cursor_of(b'["' + key.encode() + b'", NaN, "x"]'),
        cursor_of(b"[" * 300 + b"]" * 300),
        cursor_of(b'["' + key.encode() + b'", ' + b"9" * 300 + b', "x"]'),  # as long as a cursor may be
        "not base64 !!",
        "=",
        "A",
        "A" * 512,
        "\u202e",
    ]
    return cursors


def test_crafted_cursors_are_refused_naming_the_cursor_on_every_list(
    client: TestClient, lists: Lists
) -> None:
    for path, key in lists.routes():
        assert page(client, lists, path, key).status_code == 200, path
        for cursor in [*crafted(key), "A" * 513]:
            refused_naming_cursor(page(client, lists, path, key, cursor))


def test_crafted_cursors_of_run_searches_and_metric_histories_are_refused(
    client: TestClient, lists: Lists
) -> None:
    """Run searches and metric histories page with cursors of their own making."""
    headers = lists.admin.headers
    run = f"/api/v1/experiments/{lists.experiment}/runs/{lists.run}"
    logged = client.post(
        f"{run}/metrics", json={"metrics": [{"name": "loss", "value": 1.0}]}, headers=headers
    )
    assert logged.status_code == 200, logged.text
    for cursor in [*crafted("s"), *crafted("h"), cursor_of(["s", 10**30, "x"]), cursor_of(["h", 1e30, 1])]:
        searched = client.post(
            f"/api/v1/experiments/{lists.experiment}/runs/search", json={"cursor": cursor}, headers=headers
        )
        history = client.get(f"{run}/metrics/loss", params={"cursor": cursor}, headers=headers)
        for response in (searched, history):
            assert response.status_code == 422, (cursor, response.text)
            assert response.json()["error"]["details"][0]["field"] == "cursor"


def walk(client: TestClient, lists: Lists, path: str, key: str) -> list[str]:
    """Every item of a list, one per page, following ``next_cursor``."""
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"sort": key} if path.endswith("/models") else {})}
        listed = client.get(
            path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=lists.admin.headers
        ).json()
        assert listed["success"] is True, (path, key, listed)
        seen += [item["id"] for item in listed["data"]]
        cursor = listed["pagination"]["next_cursor"]
        if cursor is None:
            return seen


def test_the_reported_cursors_are_a_422_and_real_cursors_still_page(client: TestClient, lists: Lists) -> None:
    models = f"/api/v1/projects/{lists.project}/models"
    for number in range(2):
        new_model(client, lists.project, lists.admin.headers, name=f"Model {number}")
        client.post(f"/api/v1/experiments/{lists.experiment}/runs", json={}, headers=lists.admin.headers)
    for reported in (["created_at", 1e30, "x"], ["created_at", {"d": "NaN"}, "x"]):
        refused_naming_cursor(page(client, lists, models, "created_at", cursor_of(reported)))
    for key in ("created_at", "name", "updated_at"):
        seen = walk(client, lists, models, key)
        assert len(seen) == len(set(seen)) == 3, key
    runs = walk(client, lists, f"/api/v1/experiments/{lists.experiment}/runs", "created_at")
    assert len(runs) == len(set(runs)) == 3


_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(exclude_categories=()), max_size=30),  # lone surrogates too
        st.fixed_dictionaries({"t": st.one_of(st.text(max_size=30), st.datetimes().map(str), st.integers())}),
        st.fixed_dictionaries(
            {"d": st.one_of(st.text(max_size=10), st.sampled_from(["NaN", "-0", "1e999"]))}
        ),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children)
    ),
    max_leaves=6,
)


@st.composite
def _cursors(draw: st.DrawFn, key: str) -> str:
    kind = draw(st.sampled_from(["payload", "bytes", "text"]))
    if kind == "bytes":
        return cursor_of(draw(st.binary(max_size=300)))
    if kind == "text":
        return draw(st.text(max_size=100))
    key_part = draw(st.one_of(st.just(key), st.text(max_size=12)))
    id_part = draw(st.one_of(st.from_regex(r"[a-z]{1,5}_[0-9a-z]{1,26}", fullmatch=True), _values))
    payload = draw(st.one_of(st.just([key_part, draw(_values), id_part]), st.lists(_values, max_size=5)))
    return cursor_of(payload)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_cursor_is_a_page_or_a_422_naming_the_cursor(client: TestClient, lists: Lists, data: Any) -> None:
    path, key = data.draw(st.sampled_from(lists.routes()))
    cursor = data.draw(_cursors(key))
    response = page(client, lists, path, key, cursor)
    if response.status_code != 200:
        # A NUL anywhere in a query string is refused before any route, naming the path.
        refused_naming_cursor(response, "path" if "\x00" in cursor else "cursor")
    else:
        assert response.json()["pagination"]["has_prev"] is True


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (RegisteredModel.created_at, utcnow()),
        (RegisteredModel.name, "Fraud \u00e9 detector"),
        (RunArtifact.path, "plots/a b.png"),
        (Membership.joined_at, utcnow()),
    ],
)
def test_the_cursors_a_list_gives_out_are_taken_back(column: Any, value: Any) -> None:
    cursor = encode_cursor(column.key, value, "obj_01jd8x6q2v0000000000000000")
    assert decode_cursor(cursor, column.key, _sort_type(column)) == (value, "obj_01jd8x6q2v0000000000000000")


# --- free-form JSON nested deeper than responses can serialise -------------------------------
def nested(depth: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": … leaf}}``, ``depth`` objects deep (built without recursion)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def test_depth_counts_every_level_of_objects_and_arrays() -> None:
    assert [json_depth(v) for v in (1, "x", None, {}, [], {"a": []}, [1, [2, [3]]])] == [0, 0, 0, 1, 1, 2, 3]
    assert json_depth({"a": {"b": 1}, "c": [[[]]]}) == 4
    assert json_depth(nested(5000)) == 5000  # no recursion, so nothing is too deep to measure


def refused_naming(response: Any, field: str) -> None:
    """A 422 naming ``field``, or, for a JSON body nested beyond what the JSON parser
    reads at all (about a thousand levels), naming the body."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    fields = [detail["field"] for detail in body["error"]["details"]]
    assert field in fields or fields == ["body"], body


def count(factory: Factory, model: type) -> int:
    with factory.database.session(write=False) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def deep_json(depth: int) -> str:
    """``{"deep": {"a": {"a": … 1}}}`` as text, ``depth`` objects deep: written out by hand,
    since Python's own JSON encoder gives up at about a thousand levels."""
    return '{"deep":' + '{"a":' * (depth - 1) + "1" + "}" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 900, 2999])
def test_deep_metrics_and_schemas_are_refused_and_nothing_is_stored(
    client: TestClient, factory: Factory, lists: Lists, depth: int
) -> None:
    versions = count(factory, ModelVersion)
    for field in ("performance_metrics", "training_metrics", "model_schema"):
        response = upload(client, lists.model, lists.admin.headers, **{field: deep_json(depth)})
        refused_naming(response, field)
    assert count(factory, ModelVersion) == versions


def test_json_as_deep_as_accepted_is_served_back_everywhere(
    client: TestClient, factory: Factory, lists: Lists
) -> None:
    deepest = {"deep": nested(MAX_JSON_DEPTH - 1)}
    assert json_depth(deepest) == MAX_JSON_DEPTH
    version = new_version(
        client,
        lists.model,
        lists.admin.headers,
        version="2.0.0",
        performance_metrics=deepest,
        model_schema=deepest,
    )
    headers = lists.admin.headers
    base = f"/api/v1/models/{lists.model}/versions"
    for path in (
        f"{base}/{version['version']}",
        base,
        f"/api/v1/models/{lists.model}",
        f"/api/v1/projects/{lists.project}/models",
        f"{base}/{version['version']}/card",
        f"{base}/{version['version']}/card?format=markdown",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text[:300])
    assert (
        client.get(f"{base}/{version['version']}", headers=headers).json()["data"]["performance_metrics"]
        == deepest
    )

    config = {"grid": nested(MAX_JSON_DEPTH - 1)}
    experiment = client.post(
        f"/api/v1/projects/{lists.project}/experiments",
        json={"name": "Deep", "config": config},
        headers=headers,
    )
    assert experiment.status_code == 201, experiment.text
    assert client.get(f"/api/v1/projects/{lists.project}/experiments", headers=headers).status_code == 200
    run = client.post(
        f"/api/v1/experiments/{lists.experiment}/runs",
        json={"parameters": {"grid": nested(MAX_JSON_DEPTH - 1)}},
        headers=headers,
    )
    assert run.status_code == 201, run.text
    assert client.get(f"/api/v1/experiments/{lists.experiment}/runs", headers=headers).status_code == 200


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 900, 2999])
def test_deep_configs_and_parameters_are_refused_and_nothing_is_stored(
    client: TestClient, factory: Factory, lists: Lists, depth: int
) -> None:
    headers = {**lists.admin.headers, "Content-Type": "application/json"}
    experiments, runs = count(factory, Experiment), count(factory, Run)
    deep = deep_json(depth)
    run = f"/api/v1/experiments/{lists.experiment}/runs/{lists.run}"
    for method, path, body, field in (
        (
            "POST",
            f"/api/v1/projects/{lists.project}/experiments",
            f'{{"name": "Deep", "config": {deep}}}',
            "config",
        ),
        (
            "POST",
            "/api/v1/experiments",
            f'{{"project_id": "{lists.project}", "name": "deep", "config": {deep}}}',
            "config",
        ),
        ("PUT", f"/api/v1/experiments/{lists.experiment}", f'{{"config": {deep}}}', "config"),
        ("POST", f"/api/v1/experiments/{lists.experiment}/runs", f'{{"parameters": {deep}}}', "parameters"),
        ("POST", f"{run}/params", f'{{"params": {deep}}}', "params"),
    ):
        refused_naming(client.request(method, path, content=body, headers=headers), field)
    assert (count(factory, Experiment), count(factory, Run)) == (experiments, runs)
    stored = client.get(f"/api/v1/experiments/{lists.experiment}", headers=headers).json()["data"]
    assert stored["config"] == {}
    assert client.get(run, headers=headers).json()["data"]["params"] == {}
