"""One codec for every cursor and page token (``api.pagination.encode_token`` /
``decode_token``): the MLflow facade's ``page_token`` is one of them, and a garbled or
forged token, or one issued for another list, is MLflow's ``400 INVALID_PARAMETER_VALUE``
(Maestro's own lists answer ``422 VALIDATION_ERROR`` naming the cursor)."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from maestro.api.pagination import TokenError, decode_token, encode_token
from tests.mlflow_compat.conftest import World, error_of, mlflow_call, ok


def raw(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


MALFORMED = [
    "garbage !!",
    "=",
    "A",
    raw(b"\xff\xfe not UTF-8"),
    raw(b"[" * 300 + b"]" * 300),
    raw(b'{"offset": 2}'),  # an object, not a token
    encode_token(["o", 2, "extra"]),
    encode_token(["h", 2]),  # a metric history cursor's kind
    encode_token(["s", 2, "fingerprint"]),  # a run search cursor
]
HOSTILE = [
    *MALFORMED,
    encode_token(["o", -1]),
    encode_token(["o", 10**12]),
    encode_token(["o", "2"]),
    encode_token(["o", 1.5]),
    encode_token(["o", True]),
]


class TestCodec:
    def test_a_token_round_trips(self) -> None:
        token = encode_token(["s", 40, "abc"])
        assert "=" not in token
        assert decode_token(token, kind="s", length=3) == ["s", 40, "abc"]
        assert decode_token(token + "=") == ["s", 40, "abc"]  # padding is optional

    @pytest.mark.parametrize("token", MALFORMED)
    def test_anything_else_is_a_token_error(self, token: str) -> None:
        with pytest.raises(TokenError):
            decode_token(token, kind="o", length=2)

    def test_nesting_past_the_parser_s_depth_is_a_token_error(self) -> None:
        with pytest.raises(TokenError):
            decode_token(raw(b"[" * 100_000 + b"]" * 100_000))


class TestMlflowPageTokens:
    @pytest.mark.parametrize("token", HOSTILE)
    def test_a_hostile_page_token_is_invalid_parameter_value(
        self, client: TestClient, world: World, token: str
    ) -> None:
        experiment_id = ok(mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": "e"}))[
            "experiment_id"
        ]
        searches = [
            ("POST", "experiments/search", {}),
            ("POST", "runs/search", {"experiment_ids": [experiment_id]}),
            ("GET", "registered-models/search", {}),
        ]
        for method, path, body in searches:
            response = mlflow_call(client, method, path, world.headers(), {**body, "page_token": token})
            assert "page token" in error_of(response, 400, "INVALID_PARAMETER_VALUE"), path

    def test_a_page_token_leads_to_the_next_page(self, client: TestClient, world: World) -> None:
        for name in ("a", "b", "c"):
            ok(mlflow_call(client, "POST", "experiments/create", world.headers(), {"name": name}))
        body = {"max_results": 2, "order_by": ["name ASC"]}
        first = ok(mlflow_call(client, "POST", "experiments/search", world.headers(), body))
        assert decode_token(first["next_page_token"]) == ["o", 2]
        second = ok(
            mlflow_call(
                client,
                "POST",
                "experiments/search",
                world.headers(),
                {**body, "page_token": first["next_page_token"]},
            )
        )
        names = [e["name"] for e in first["experiments"] + second["experiments"]]
        assert names[:3] == ["a", "b", "c"] and "next_page_token" not in second
