"""A client that stalls mid-body on the model server is answered 408 and disconnected,
while other callers are served meanwhile."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from maestro.config import Settings
from tests.api.test_write_lock import final_answer, open_stalled_request, unanswered
from tests.conftest import RunningProcess
from tests.model_server.test_model_server import OPERATOR, OPERATOR_KEY

pytestmark = pytest.mark.slow


def test_a_stalled_body_is_cut_off(
    make_settings: Callable[..., Settings],
    model_server: Callable[..., RunningProcess],
) -> None:
    settings = make_settings(model_server_api_keys=[OPERATOR_KEY], request_body_timeout_seconds=2)
    server = model_server(settings, ready=False)
    stalled = open_stalled_request(
        server.base_url, "/api/v1/predict", OPERATOR, "application/json", b'{"features": [0.1, '
    )
    try:
        assert unanswered(stalled)
        status = httpx.get(f"{server.base_url}/api/v1/status", headers=OPERATOR, timeout=30)
        assert status.status_code == 200, status.text  # others are served meanwhile
        code, headers, body = final_answer(stalled)
    finally:
        stalled.close()
    assert code == 408
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "REQUEST_TIMEOUT"
