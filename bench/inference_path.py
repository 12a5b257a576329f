"""Where the time of a platform inference request goes, and what it costs over HTTP.

    .venv/bin/python bench/inference_path.py [--requests 2000] [--seconds 5]

1. In process, profiled with pyinstrument: requests go through the whole ASGI app
   (middleware, authentication, the deployment directory, access check, parsing,
   prediction, the response, the in-memory record) on one thread, with the worker-thread
   hops run inline so the profiler sees every frame. Printed: the share of the request
   spent in authentication and the access check, in the model call, in parsing, and the
   rest, with the credential cache off (``MAESTRO_AUTH_CACHE_SECONDS=0``) and on.
2. Against a real ``maestro serve`` (one worker, SQLite, enterprise plan so no limit
   applies): p50/p95 of one-row predictions one at a time over a keep-alive connection
   with an API key, cache off and on, beside GET /health; and requests per second from
   4 client threads.

The model is a LogisticRegression on 20 features deployed from a skops file (served as
ONNX). Figures from a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import skops.io as sio
from pyinstrument import Profiler
from sklearn.linear_model import LogisticRegression

FEATURES = [f"f{i}" for i in range(20)]
SCHEMA = {"inputs": [{"name": name, "type": "float"} for name in FEATURES]}
ROW = dict.fromkeys(FEATURES, 0.25)


def model_file() -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, len(FEATURES)))  # noqa: N806 - the usual name for a feature matrix
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    return sio.dumps(LogisticRegression(max_iter=500).fit(X, y))


# --- 1. in process ---------------------------------------------------------------------------------
CATEGORIES = {
    "authentication and access": (
        "maestro/identity/",
        "maestro/api/deps.py",
        "deployments/inference.py:_decide",
    ),
    "model call": ("maestro/runtimes/", "onnxruntime"),
    "parsing and validation": ("maestro/runtimes/inputs.py",),
}


def _category(frame: Any) -> str | None:
    where = f"{frame.file_path or ''}:{frame.function}"
    for name, markers in CATEGORIES.items():
        if any(marker in where for marker in markers):
            return name
    return None


def _topmost(frame: Any, test: Any) -> list[Any]:
    if test(frame):
        return [frame]
    return [found for child in frame.children for found in _topmost(child, test)]


def _shares(root: Any) -> dict[str, float]:
    """Shares of the app's own time (from the outermost middleware in), not the client's."""
    apps = _topmost(
        root, lambda f: (f.file_path or "").endswith("maestro/api/middleware.py") and f.function == "__call__"
    )
    whole = sum(frame.time for frame in apps) or 1.0
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for name in CATEGORIES:
        for app_frame in apps:
            totals[name] += sum(f.time for f in _topmost(app_frame, lambda f, n=name: _category(f) == n))
    shares = {name: value / whole for name, value in totals.items()}
    shares["everything else (ASGI, FastAPI, JSON, recording)"] = 1.0 - sum(shares.values())
    return shares


@contextmanager
def inline_threads() -> Iterator[None]:
    """Run ``run_sync`` hops on the calling thread, so one profile holds every frame."""
    import maestro.api.deps
    import maestro.deployments.inference

    async def inline(function: Any, *args: Any, **_: Any) -> Any:
        return function(*args)

    modules = (maestro.api.deps, maestro.deployments.inference)
    saved = [module.run_sync for module in modules]
    for module in modules:
        module.run_sync = inline  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.run_sync = original  # type: ignore[attr-defined]


def in_process(requests: int, data: bytes, cache_seconds: float) -> tuple[dict[str, float], float]:
    from fastapi.testclient import TestClient
    from tests.factories import Factory

    from maestro.app import create_app
    from maestro.config import Settings
    from maestro.migrations import upgrade

    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(scratch),
            access_log=False,
            run_worker_in_process=False,
            maintenance_interval_minutes=0,
            rate_limits_enabled=False,
            auth_cache_seconds=cache_seconds,
            password_hash_time_cost=1,
            password_hash_memory_kib=64,
        )
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        factory = Factory(app)
        org = factory.organization()
        admin = factory.user(org, "admin")
        project = factory.project(org, admin)
        key = {"X-API-Key": factory.api_key(org, {"inference": ["read"]})}
        with TestClient(app) as client:
            deploy(client, admin.headers, project, data)
        body = json.dumps({"instances": [ROW]}).encode()

        async def run() -> tuple[Any, float]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://maestro") as caller:
                headers = {**key, "Content-Type": "application/json"}
                for _ in range(50):
                    assert (
                        await caller.post("/api/v1/inference/bench", content=body, headers=headers)
                    ).status_code == 200
                started = time.perf_counter()
                for _ in range(requests):
                    await caller.post("/api/v1/inference/bench", content=body, headers=headers)
                per_request_us = (time.perf_counter() - started) / requests * 1e6
                profiler = Profiler(interval=0.001, async_mode="disabled")
                profiler.start()
                for _ in range(requests):
                    await caller.post("/api/v1/inference/bench", content=body, headers=headers)
                profiler.stop()
                return profiler.last_session, per_request_us

        with inline_threads():
            session, per_request_us = asyncio.run(run())
        app.state.serving.recorder.flush()
        return _shares(session.root_frame()), per_request_us


# --- 2. over HTTP ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy(client: Any, headers: dict[str, str], project: str, data: bytes) -> None:
    model = client.post(
        f"/api/v1/projects/{project}/models",
        json={"name": "Bench", "model_type": "classification"},
        headers=headers,
    ).json()["data"]["id"]
    version = client.post(
        f"/api/v1/models/{model}/versions",
        data={"model_schema": json.dumps(SCHEMA)},
        files={"model_file": ("bench.skops", data, "application/octet-stream")},
        headers=headers,
    ).json()["data"]["id"]
    response = client.post(
        f"/api/v1/projects/{project}/deployments",
        json={"name": "bench", "model_version_id": version},
        headers=headers,
    )
    assert response.status_code == 201, response.text


def timed(client: httpx.Client, method: str, path: str, seconds: float, **kwargs: Any) -> tuple[float, float]:
    for _ in range(30):
        assert client.request(method, path, **kwargs).status_code == 200, path
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        client.request(method, path, **kwargs)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def throughput(base: str, headers: dict[str, str], seconds: float, threads: int = 4) -> float:
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(index: int) -> None:
        with httpx.Client(base_url=base, headers=headers) as client:
            while time.perf_counter() < stop:
                client.post("/api/v1/inference/bench", json={"instances": [ROW]})
                counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def over_http(data: bytes, cache_seconds: float, seconds: float) -> dict[str, tuple[float, float] | float]:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "MAESTRO_DATA_DIR": scratch,
            "MAESTRO_ACCESS_LOG": "false",
            "MAESTRO_DEFAULT_PLAN": "enterprise",
            "MAESTRO_AUTH_CACHE_SECONDS": str(cache_seconds),
            "MAESTRO_PASSWORD_HASH_TIME_COST": "1",
            "MAESTRO_PASSWORD_HASH_MEMORY_KIB": "64",
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
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=60) as client:
                signup = client.post(
                    "/api/v1/auth/register",
                    json={"email": "bench@example.com", "password": "benchmark password"},
                ).json()["data"]
                token = {"Authorization": f"Bearer {signup['access_token']}"}
                org = signup["user"]["current_organization"]["id"]
                project = client.post(
                    f"/api/v1/organizations/{org}/projects", headers=token, json={"name": "Bench"}
                ).json()["data"]["id"]
                key = client.post(
                    f"/api/v1/organizations/{org}/api-keys",
                    headers=token,
                    json={"name": "bench", "permissions": {"inference": ["read"]}},
                ).json()["data"]["key"]
                deploy(client, token, project, data)
                headers = {"X-API-Key": key}
                return {
                    "GET /health (reference)": timed(client, "GET", "/health", seconds),
                    "POST /api/v1/inference/bench, API key": timed(
                        client,
                        "POST",
                        "/api/v1/inference/bench",
                        seconds,
                        json={"instances": [ROW]},
                        headers=headers,
                    ),
                    "POST /api/v1/inference/bench, access token": timed(
                        client,
                        "POST",
                        "/api/v1/inference/bench",
                        seconds,
                        json={"instances": [ROW]},
                        headers=token,
                    ),
                    "requests/s from 4 threads, API key": throughput(base, headers, seconds),
                }
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="profiled in-process requests per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent on each HTTP measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.factories, for the set-up
    data = model_file()

    logging.getLogger("alembic").setLevel(logging.WARNING)
    print("1. In process, one request at a time (share of the request's time, profiled)")
    for label, seconds in (("credential cache off", 0.0), ("credential cache on (1 s)", 1.0)):
        shares, per_request = in_process(args.requests, data, seconds)
        print(f"   {label}: {per_request:,.0f} µs per request, the test client included (not profiled)")
        for name, share in shares.items():
            print(f"     {name:52} {share:6.1%}")
    print()
    print("2. Over HTTP against maestro serve (one worker, SQLite)")
    print(f"   {'request':52} {'cache':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for label, seconds in (("off", 0.0), ("on", 1.0)):
        for name, figure in over_http(data, seconds, args.seconds).items():
            if isinstance(figure, tuple):
                print(f"   {name:52} {label:>6} {figure[0]:8.2f} {figure[1]:8.2f}")
            else:
                print(f"   {name:52} {label:>6} {figure:8.0f}")


if __name__ == "__main__":
    main()
