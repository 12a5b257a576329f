"""Small-response latency on reused connections: `maestro serve --workers 2` against
plain `uvicorn --workers 2` serving the same app, on uvloop and on asyncio's own
loop (where uvicorn's accepted sockets keep Nagle's algorithm on).

    .venv/bin/python bench/http_latency.py [--requests 300]

Prints the median and p95 of GET /health and of a POST with a small JSON body, one
request at a time over one keep-alive connection.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MAESTRO_DATA_DIR": str(data_dir), "MAESTRO_ACCESS_LOG": "false"}
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start: {command}")


def measure(base: str, requests: int) -> dict[str, tuple[float, float]]:
    figures = {}
    with httpx.Client(base_url=base) as client:
        for label, call in (
            ("GET /health", lambda: client.get("/health")),
            ("POST small JSON (404)", lambda: client.post("/api/v1/nothing", json={"a": 1})),
        ):
            for _ in range(20):
                call()
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                call()
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            figures[label] = (statistics.median(samples), samples[int(len(samples) * 0.95)])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [bin_dir / "maestro", "db", "upgrade"],
            env={**os.environ, "MAESTRO_DATA_DIR": scratch},
            check=True,
            capture_output=True,
        )
        maestro = [str(bin_dir / "maestro"), "serve", "--workers", "2"]
        uvicorn = [
            str(bin_dir / "uvicorn"),
            "maestro.app:create_app",
            "--factory",
            "--workers",
            "2",
            "--no-access-log",
        ]
        servers = {
            "maestro serve, uvloop": [*maestro, "--loop", "uvloop"],
            "uvicorn, uvloop (reference)": [*uvicorn, "--loop", "uvloop"],
            "maestro serve, asyncio loop": [*maestro, "--loop", "asyncio"],
            "uvicorn, asyncio loop (reference)": [*uvicorn, "--loop", "asyncio"],
        }
        print(f"{'server':34} {'request':24} {'median ms':>10} {'p95 ms':>8}")
        for name, command in servers.items():
            process, base = start(command, Path(scratch))
            try:
                for label, (median, p95) in measure(base, args.requests).items():
                    print(f"{name:34} {label:24} {median:10.2f} {p95:8.2f}")
            finally:
                process.terminate()
                process.wait(20)


if __name__ == "__main__":
    main()
