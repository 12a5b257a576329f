"""What authentication costs per request, against a real `maestro serve` process.

    .venv/bin/python bench/auth_overhead.py [--requests 500]

Prints median and p95 latency, one request at a time over one keep-alive
connection, for: the unauthenticated liveness probe (the reference), an
authenticated read with an access token (JWT check, session and membership
lookup, rate-limit count), the same with an API key (checksum, hash lookup), and
a project read that also runs the authorisation decision. Also the cost of one
password hash at the configured argon2id parameters (sign-in time).
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


def timed(client: httpx.Client, path: str, headers: dict[str, str], requests: int) -> tuple[float, float]:
    for _ in range(20):
        assert client.get(path, headers=headers).status_code == 200, path
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "MAESTRO_DATA_DIR": scratch,
            "MAESTRO_ACCESS_LOG": "false",
            "MAESTRO_DEFAULT_PLAN": "enterprise",
        }
        port = free_port()
        server = subprocess.Popen(
            [bin_dir / "maestro", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with httpx.Client(base_url=base) as client:
                started = time.perf_counter()
                signup = client.post(
                    "/api/v1/auth/register",
                    json={"email": "bench@example.com", "password": "benchmark password"},
                ).json()["data"]
                hash_ms = (time.perf_counter() - started) * 1000
                token = {"Authorization": f"Bearer {signup['access_token']}"}
                org = signup["user"]["current_organization"]["id"]
                key = client.post(
                    f"/api/v1/organizations/{org}/api-keys",
                    headers=token,
                    json={"name": "bench", "permissions": {"projects": ["read"]}},
                ).json()["data"]["key"]
                project = client.post(
                    f"/api/v1/organizations/{org}/projects", headers=token, json={"name": "Bench"}
                ).json()["data"]["id"]
                rows = {
                    "GET /health (no auth, reference)": timed(client, "/health", {}, args.requests),
                    "GET /api/v1/auth/me (access token)": timed(
                        client, "/api/v1/auth/me", token, args.requests
                    ),
                    "GET /api/v1/projects/{id} (access token)": timed(
                        client, f"/api/v1/projects/{project}", token, args.requests
                    ),
                    "GET /api/v1/projects/{id} (API key)": timed(
                        client, f"/api/v1/projects/{project}", {"X-API-Key": key}, args.requests
                    ),
                }
        finally:
            server.terminate()
            server.wait(20)
    print(f"{'request':44} {'median ms':>10} {'p95 ms':>8}")
    for label, (median, p95) in rows.items():
        print(f"{label:44} {median:10.2f} {p95:8.2f}")
    print(f"sign-up including one argon2id hash: {hash_ms:.0f} ms")


if __name__ == "__main__":
    main()
