from __future__ import annotations

from tests.registry.conftest import World, world

__all__ = ["World", "world"]
