from __future__ import annotations

from collections.abc import Callable

import pytest

from maestro.config import Settings


@pytest.fixture(params=["queue_sqlite", "queue_redis"])
def queue_settings(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    """Settings factory for each queue backend: Huey on SQLite, and on Redis."""
    redis = request.getfixturevalue("redis_url") if request.param == "queue_redis" else None

    def make(**overrides: object) -> Settings:
        return make_settings(redis_url=redis, **overrides)

    return make
