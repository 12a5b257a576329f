"""The real server process: what `make serve` gives a user."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest

from maestro.config import Settings
from maestro.server import enable_nodelay
from tests.conftest import RunningProcess

pytestmark = pytest.mark.slow


def test_serve_migrates_the_embedded_database_and_answers(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess], tmp_path: object
) -> None:
    settings = make_settings(data_dir=tmp_path / "fresh", database_url=None)  # type: ignore[operator]
    server = serve(settings)
    ready = httpx.get(f"{server.base_url}/api/v1/health")
    assert ready.status_code == 200
    assert ready.json()["data"]["checks"]["database"]["backend"] == "sqlite"
    assert (tmp_path / "fresh" / "maestro.db").exists()  # type: ignore[operator]


def test_serve_with_several_workers_keeps_connections_alive(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningProcess]
) -> None:
    server = serve(make_settings(), "--workers", "2")
    with httpx.Client(base_url=server.base_url) as client:
        statuses = {client.get("/health").status_code for _ in range(50)}
    assert statuses == {200}


@pytest.mark.parametrize("loop_factory", ["asyncio", "uvloop"])
def test_accepted_connections_get_tcp_nodelay(loop_factory: str) -> None:
    """uvicorn binds with protocol 0 when it runs several workers; asyncio then leaves
    Nagle on for accepted sockets. Our protocol classes switch it off on each one."""
    observed: dict[str, int] = {}

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            observed["before"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            enable_nodelay(transport)
            observed["after"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            transport.close()

    async def scenario() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # protocol 0, like uvicorn
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        await reader.read()
        writer.close()
        server.close()

    if loop_factory == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
    assert observed["after"] != 0
