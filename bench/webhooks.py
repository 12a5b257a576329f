"""How fast webhooks are delivered: deliveries per second to a local receiver with one and
two `maestro worker` processes, and the delay from a change to its delivery.

    .venv/bin/python bench/webhooks.py [--events 200] [--webhooks 4] [--probes 40]
        [--relay-interval 1.0] [--database-url postgresql://…] [--redis-url redis://…]

For each worker count, a fresh installation: `maestro serve` with no job consumer of its
own, and the workers, all allowed to reach 127.0.0.1 over http. ``--webhooks`` webhooks
subscribe to `model.created` and point at one threaded receiver on loopback that answers
204 at once. Throughput: ``--events`` models are registered by four client threads; every
event becomes one delivery per webhook, and the figure is deliveries over the seconds
from the first arrival to the last (one webhook's deliveries go out one at a time, so the
workers share webhooks, not deliveries of one webhook). Delay: ``--probes`` models are
registered one at a time, each once the one before arrived, and the delay is the
receiver's clock at arrival minus the event's `timestamp` (one machine, one clock). A
worker relays the changes of other processes every ``--relay-interval`` seconds: a change
made at a random time waits half of it on average, but each probe is made just after the
tick that delivered the one before, so with one worker probes wait nearly a whole interval
(two workers tick at different times).

Figures from a shared 2-core machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: bench/ is a package
from bench.harness import (
    Backend,
    expect,
    log,
    nearest_rank,
    running_server,
    scratch_postgres,
    server_env,
)


class Receiver:
    """Answers 204 to everything and notes when each event arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, str]] = []  # (time, event id, event timestamp)
        self.lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                arrived = time.time()
                event = json.loads(body)
                self.send_response(204)
                self.end_headers()
                with receiver.lock:
                    receiver.arrivals.append((arrived, event["id"], event["timestamp"]))
                    receiver.lock.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 600) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.arrivals) >= count, timeout):
                raise SystemExit(f"only {len(self.arrivals)} of {count} deliveries arrived in {timeout:g}s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def workers(backend: Backend, count: int, env: dict[str, str]) -> Iterator[None]:
    maestro = Path(sys.executable).parent / "maestro"
    processes = []
    for number in range(count):
        with (backend.data_dir / f"worker-{number}.log").open("wb") as output:
            processes.append(
                subprocess.Popen(
                    [maestro, "worker"],
                    env=env,
                    cwd=backend.data_dir,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def measure(backend: Backend, worker_count: int, args: argparse.Namespace) -> dict[str, float]:
    settings = {
        "MAESTRO_RUN_WORKER_IN_PROCESS": "false",
        "MAESTRO_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "MAESTRO_WEBHOOK_ALLOW_HTTP": "true",
        "MAESTRO_WEBHOOK_RELAY_INTERVAL_SECONDS": str(args.relay_interval),
        "MAESTRO_MAINTENANCE_INTERVAL_MINUTES": "0",
        "MAESTRO_QUEUE_NAME": f"bench-webhooks-{time.time_ns()}",
    }
    if args.redis_url:
        settings["MAESTRO_REDIS_URL"] = args.redis_url
    receiver = Receiver()
    try:
        with (
            running_server_with(backend, settings) as base,
            workers(backend, worker_count, {**server_env(backend), **settings}),
        ):
            client = httpx.Client(base_url=base, timeout=60)
            registered = expect(
                client.post(
                    "/api/v1/auth/register",
                    json={"email": "bench@example.com", "password": "correct horse battery"},
                ),
                201,
            )
            headers = {"Authorization": f"Bearer {registered['access_token']}"}
            org = registered["user"]["current_organization"]["id"]
            project = expect(
                client.post(f"/api/v1/organizations/{org}/projects", json={"name": "bench"}, headers=headers),
                201,
            )["id"]
            for number in range(args.webhooks):
                expect(
                    client.post(
                        f"/api/v1/organizations/{org}/webhooks",
                        json={"name": f"bench {number}", "url": receiver.url, "events": ["model.created"]},
                        headers=headers,
                    ),
                    201,
                )

            def register(number: int) -> None:
                expect(
                    client.post(
                        f"/api/v1/projects/{project}/models",
                        json={"name": f"model {number}", "model_type": "classification"},
                        headers=headers,
                    ),
                    201,
                )

            log(f"{worker_count} worker(s): {args.events} events x {args.webhooks} webhooks")
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(register, range(args.events)))
            expected = args.events * args.webhooks
            receiver.wait_for(expected)
            times = sorted(arrived for arrived, _, _ in receiver.arrivals[:expected])
            rate = (expected - 1) / max(times[-1] - times[0], 1e-9)

            log(f"{worker_count} worker(s): {args.probes} changes one at a time")
            delays = []
            for number in range(args.probes):
                before = len(receiver.arrivals)
                register(args.events + number)
                receiver.wait_for(before + args.webhooks)
                for arrived, _, stamp in receiver.arrivals[before : before + args.webhooks]:
                    created = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    delays.append((arrived - created) * 1000)
            return {
                "deliveries_per_second": rate,
                "delay_p50_ms": nearest_rank(delays, 0.5),
                "delay_p99_ms": nearest_rank(delays, 0.99),
            }
    finally:
        receiver.close()


@contextlib.contextmanager
def running_server_with(backend: Backend, settings: dict[str, str]) -> Iterator[str]:
    """The harness's server, with the webhook settings in its environment too."""
    import bench.harness as harness

    plain = harness.server_env

    def with_settings(backend: Backend) -> dict[str, str]:
        return {**plain(backend), **settings}

    harness.server_env = with_settings  # type: ignore[assignment]
    try:
        with running_server(backend) as base:
            yield base
    finally:
        harness.server_env = plain  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--webhooks", type=int, default=4)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--relay-interval", type=float, default=1.0)
    parser.add_argument(
        "--database-url", help="a PostgreSQL server; a scratch database is made on it per run"
    )
    parser.add_argument("--redis-url", help="run the job queue on Redis")
    args = parser.parse_args()

    results = {}
    for worker_count in (1, 2):
        with tempfile.TemporaryDirectory(prefix="maestro-bench-webhooks-") as scratch:
            if args.database_url:
                with scratch_postgres(args.database_url) as (url, _):
                    results[worker_count] = measure(
                        Backend("postgresql", Path(scratch), url), worker_count, args
                    )
            else:
                results[worker_count] = measure(Backend("sqlite", Path(scratch), None), worker_count, args)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    queue = "Redis" if args.redis_url else "SQLite"
    print(
        f"webhooks: {args.events} events x {args.webhooks} webhooks; {backend} database, {queue} queue; "
        f"relay interval {args.relay_interval:g}s"
    )
    print(f"{'workers':>8} {'deliveries/s':>13} {'delay p50 ms':>13} {'delay p99 ms':>13}")
    for worker_count, figures in results.items():
        print(
            f"{worker_count:>8} {figures['deliveries_per_second']:>13.1f} "
            f"{figures['delay_p50_ms']:>13.1f} {figures['delay_p99_ms']:>13.1f}"
        )


if __name__ == "__main__":
    main()
