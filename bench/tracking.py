"""The same tracking workload, through the same `mlflow` client, against Maestro and
against an MLflow tracking server, started side by side in one run.

    .venv/bin/python bench/tracking.py [--database-url postgresql+psycopg://user@host:5432/db]
                                      [--runs 20] [--search-runs 2000]

Maestro runs as `maestro serve` on a fresh embedded SQLite data directory; MLflow as
`mlflow server` with a SQLite backend store, from `bench/.venv-mlflow` (created with
`pip install mlflow` when missing). With --database-url, Maestro runs the workload once
more on PostgreSQL (a scratch database created on that server and dropped afterwards).
Every figure is measured one request at a time over keep-alive connections:

1. `log_batch` ingestion: 20 runs x 10,000 points (two metrics x 5,000 steps) in
   batches of 1,000 with `MlflowClient.log_batch`, in points per second. The same
   client against a server that answers `{}` at once shows the client's own limit (it
   builds and serialises 1,000 protobuf metrics per call), and the same batches are
   also posted as raw JSON to `runs/log-batch`, which shows what the servers themselves
   sustain.
2. `log_metric` one call at a time: median and p95 of 500 calls.
3. `search_runs` over 2,000 runs (two parameters and two metrics each) with a metric
   filter and order: `metrics.accuracy > 0.5` ordered by `metrics.accuracy DESC`,
   median of 30 searches, for pages of 100 and of 1,000 runs.
4. Maestro's native metrics endpoint (`POST /api/v1/experiments/{id}/runs/{id}/metrics`)
   with the load of (1), for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from bench.harness import Backend, free_port, log, nearest_rank, running_server, scratch_postgres  # noqa: E402
from bench.tracking_native import sign_up  # noqa: E402

MLFLOW_VENV = ROOT / "bench" / ".venv-mlflow"
POINTS_PER_RUN, BATCH = 10_000, 1_000
METRIC_CALLS = 500
SEARCHES = 30
SEARCH_FILTER, SEARCH_ORDER = "metrics.accuracy > 0.5", ["metrics.accuracy DESC"]
TIMESTAMP = 1_800_000_000_000
PARTS = ("batch", "metric", "search", "native")


# --- the MLflow server ---------------------------------------------------------------------
def mlflow_executable() -> Path:
    executable = MLFLOW_VENV / "bin" / "mlflow"
    if not executable.exists():
        log(f"creating {MLFLOW_VENV} with `pip install mlflow` (once)")
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", "mlflow"], check=True)
    return executable


@contextlib.contextmanager
def mlflow_server(directory: Path) -> Iterator[str]:
    port = free_port()
    log_path = directory / "mlflow.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(mlflow_executable()),
                "server",
                "--backend-store-uri",
                f"sqlite:///{directory / 'mlflow.db'}",
                "--artifacts-destination",
                str(directory / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"mlflow server exited early:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("mlflow server did not answer /health within 180 s")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- the workload --------------------------------------------------------------------------
@dataclass
class Figures:
    name: str
    values: dict[str, float] = field(default_factory=dict)


def client_for(uri: str, token: str | None) -> Any:
    """An MlflowClient for ``uri``; the token travels as MLFLOW_TRACKING_TOKEN does."""
    import mlflow

    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def metric_batches(run_number: int) -> list[list[Any]]:
    from mlflow.entities import Metric

    out = []
    for first in range(0, POINTS_PER_RUN // 2, BATCH // 2):
        batch = []
        for step in range(first, first + BATCH // 2):
            batch.append(Metric("loss", 1 / (step + 1 + run_number), TIMESTAMP + step, step))
            batch.append(Metric("accuracy", 1 - 1 / (step + 2), TIMESTAMP + step, step))
        out.append(batch)
    return out


def bench_log_batch(client: Any, runs: int) -> tuple[float, float]:
    """(points per second through MlflowClient.log_batch, median ms per batch)."""
    experiment = client.create_experiment(f"ingestion-{secrets.token_hex(4)}")
    targets = [client.create_run(experiment).info.run_id for _ in range(runs)]
    timings = []
    started = time.perf_counter()
    for number, run_id in enumerate(targets):
        for batch in metric_batches(number):
            begun = time.perf_counter()
            client.log_batch(run_id, metrics=batch)
            timings.append((time.perf_counter() - begun) * 1000)
    elapsed = time.perf_counter() - started
    return runs * POINTS_PER_RUN / elapsed, statistics.median(timings)


NULL_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
"""


def client_floor() -> tuple[float, float]:
    """(ms per log_batch of 1,000, ms per log_metric) through the same client against a
    server that answers every request with ``{}`` at once, in a process of its own: the
    client's own work and the HTTP round trip, i.e. the best any server could do here."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", NULL_SERVER, str(port)])
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            time.sleep(0.05)
        client = client_for(f"http://127.0.0.1:{port}", "token")
        batches = metric_batches(0)
        client.log_batch("run_x", metrics=batches[0])
        started = time.perf_counter()
        for batch in batches:
            client.log_batch("run_x", metrics=batch)
        batch_ms = (time.perf_counter() - started) * 1000 / len(batches)
        started = time.perf_counter()
        for step in range(200):
            client.log_metric("run_x", "loss", 0.5, step=step)
        metric_ms = (time.perf_counter() - started) * 1000 / 200
    finally:
        process.terminate()
        process.wait(10)
    return batch_ms, metric_ms


def bench_raw_log_batch(base: str, headers: dict[str, str], runs: int) -> float:
    """Points per second for the same batches posted as ready JSON to runs/log-batch."""
    api = f"{base}/api/2.0/mlflow"
    with httpx.Client(headers=headers, timeout=120) as http:
        experiment = http.post(
            f"{api}/experiments/create", json={"name": f"raw-{secrets.token_hex(4)}"}
        ).json()["experiment_id"]
        targets = [
            http.post(
                f"{api}/runs/create", json={"experiment_id": experiment, "start_time": TIMESTAMP}
            ).json()["run"]["info"]["run_id"]
            for _ in range(runs)
        ]
        bodies = [
            [
                json.dumps(
                    {
                        "run_id": run_id,
                        "metrics": [
                            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                            for m in batch
                        ],
                    }
                )
                for batch in metric_batches(number)
            ]
            for number, run_id in enumerate(targets)
        ]
        started = time.perf_counter()
        for run_bodies in bodies:
            for body in run_bodies:
                response = http.post(
                    f"{api}/runs/log-batch", content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code != 200:
                    raise SystemExit(f"raw log-batch answered {response.status_code}: {response.text[:300]}")
        return runs * POINTS_PER_RUN / (time.perf_counter() - started)


def bench_log_metric(client: Any) -> tuple[float, float]:
    experiment = client.create_experiment(f"latency-{secrets.token_hex(4)}")
    run_id = client.create_run(experiment).info.run_id
    for step in range(20):
        client.log_metric(run_id, "warmup", 0.5, step=step)
    samples = []
    for step in range(METRIC_CALLS):
        started = time.perf_counter()
        client.log_metric(run_id, "loss", 1 / (step + 1), step=step)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), nearest_rank(samples, 0.95)


def bench_raw(base: str, headers: dict[str, str], experiment_id: str) -> tuple[float, float]:
    """(median ms of one raw log-metric, median ms of one raw runs/search for a page of
    100): the same requests as ready JSON over httpx, without the client."""
    api = f"{base}/api/2.0/mlflow"
    with httpx.Client(headers=headers, timeout=60) as http:
        run_id = http.post(f"{api}/runs/create", json={"experiment_id": experiment_id}).json()["run"]["info"][
            "run_id"
        ]
        metric_samples = []
        for step in range(METRIC_CALLS):
            body = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": TIMESTAMP, "step": step}
            started = time.perf_counter()
            http.post(f"{api}/runs/log-metric", json=body)
            metric_samples.append((time.perf_counter() - started) * 1000)
        search = {
            "experiment_ids": [experiment_id],
            "filter": SEARCH_FILTER,
            "order_by": SEARCH_ORDER,
            "max_results": 100,
            "run_view_type": "ACTIVE_ONLY",
        }
        search_samples = []
        for _ in range(SEARCHES):
            started = time.perf_counter()
            http.post(f"{api}/runs/search", json=search)
            search_samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(metric_samples), statistics.median(search_samples)


def seed_search(client: Any, runs: int) -> str:
    from mlflow.entities import Metric, Param

    experiment = client.create_experiment(f"search-{secrets.token_hex(4)}")
    log(f"creating {runs} runs with two parameters and two metrics")

    def one(number: int) -> None:
        run_id = client.create_run(experiment).info.run_id
        accuracy = (number * 7919 % runs) / runs
        client.log_batch(
            run_id,
            metrics=[Metric("accuracy", accuracy, TIMESTAMP, 0), Metric("loss", 1 - accuracy, TIMESTAMP, 0)],
            params=[
                Param("optimizer", ("adam", "sgd", "rmsprop")[number % 3]),
                Param("lr", str(10 ** -(number % 4))),
            ],
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(runs)))
    return experiment


def bench_search(client: Any, experiment: str, page: int) -> tuple[float, int]:
    def search() -> Any:
        return client.search_runs(
            [experiment], filter_string=SEARCH_FILTER, order_by=SEARCH_ORDER, max_results=page
        )

    found = search()
    for _ in range(3):
        search()
    samples = []
    for _ in range(SEARCHES):
        started = time.perf_counter()
        search()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), len(found)


def bench_native_ingestion(base: str, headers: dict[str, str], project: str, runs: int) -> float:
    api = f"{base}/api/v1"
    with httpx.Client(headers=headers, timeout=120) as http:
        experiment = http.post(
            f"{api}/projects/{project}/experiments", json={"name": f"native-{secrets.token_hex(4)}"}
        ).json()["data"]["id"]
        targets = [
            http.post(f"{api}/experiments/{experiment}/runs", json={}).json()["data"]["id"]
            for _ in range(runs)
        ]
        bodies = [
            [
                {
                    "metrics": [
                        {"name": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp}
                        for m in batch
                    ]
                }
                for batch in metric_batches(number)
            ]
            for number in range(runs)
        ]
        started = time.perf_counter()
        for run_id, run_bodies in zip(targets, bodies, strict=True):
            for body in run_bodies:
                response = http.post(f"{api}/experiments/{experiment}/runs/{run_id}/metrics", json=body)
                if response.status_code != 200:
                    raise SystemExit(f"native metrics answered {response.status_code}: {response.text[:300]}")
        return runs * POINTS_PER_RUN / (time.perf_counter() - started)


def workload(
    name: str,
    uri: str,
    base: str,
    token: str | None,
    runs: int,
    search_runs: int,
    native: Callable[[], float] | None,
    parts: frozenset[str] = frozenset(PARTS),
) -> Figures:
    figures = Figures(name)
    client = client_for(uri, token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if "batch" in parts:
        log(f"{name}: log_batch ingestion")
        figures.values["log_batch points/s"], figures.values["log_batch ms per batch"] = bench_log_batch(
            client, runs
        )
        log(f"{name}: the same batches as raw JSON")
        figures.values["raw log-batch points/s (server)"] = bench_raw_log_batch(uri, headers, runs)
    if "metric" in parts:
        log(f"{name}: log_metric latency")
        figures.values["log_metric median ms"], figures.values["log_metric p95 ms"] = bench_log_metric(client)
    if "search" in parts:
        experiment = seed_search(client, search_runs)
        log(f"{name}: search_runs")
        for page in (100, 1000):
            median, found = bench_search(client, experiment, page)
            figures.values[f"search_runs median ms (page {page})"] = median
            figures.values[f"search_runs runs returned (page {page})"] = found
    else:
        experiment = client.create_experiment(f"raw-{secrets.token_hex(4)}")
    if "metric" in parts or "search" in parts:
        log(f"{name}: raw log-metric and search")
        raw_metric, raw_search = bench_raw(uri, headers, experiment)
        figures.values["raw log-metric median ms (server)"] = raw_metric
        figures.values["raw runs/search median ms (page 100)"] = raw_search
    if native is not None and "native" in parts:
        log(f"{name}: native metrics endpoint")
        figures.values["native metrics points/s"] = native()
    return figures


def maestro_figures(backend: Backend, runs: int, search_runs: int, parts: frozenset[str]) -> Figures:
    with running_server(backend) as base:
        account = sign_up(base)
        token = account.headers["Authorization"].removeprefix("Bearer ")
        uri = f"{base}/mlflow/{account.project}"
        return workload(
            f"Maestro ({backend.name})",
            uri,
            base,
            token,
            runs,
            search_runs,
            lambda: bench_native_ingestion(base, account.headers, account.project, runs),
            parts,
        )


# --- report --------------------------------------------------------------------------------
HIGHER_IS_BETTER = ("points/s",)


def report(
    maestro: Figures, mlflow: Figures | None, others: list[Figures], client: tuple[float, float]
) -> None:
    columns = [maestro, *others] + ([mlflow] if mlflow else [])
    print()
    print(
        f"{'':42}"
        + "".join(f"{column.name:>22}" for column in columns)
        + (f"{'ratio':>10}" if mlflow else "")
    )
    for key in maestro.values:
        row = f"{key:42}"
        for column in columns:
            value = column.values.get(key)
            row += f"{'' if value is None else f'{value:,.1f}':>22}"
        if mlflow and key in mlflow.values and "returned" not in key:
            ours, theirs = maestro.values[key], mlflow.values[key]
            ratio = ours / theirs if any(word in key for word in HIGHER_IS_BETTER) else theirs / ours
            row += f"{ratio:9.1f}x"
        print(row)
    batch_ms, metric_ms = client
    print(
        f"\nThe same client against a server that answers {{}} at once: {batch_ms:.1f} ms per "
        f"log_batch of 1,000 metrics (so at most {1000 / batch_ms * 1000:,.0f} points/s through "
        f"MlflowClient.log_batch against any server on this machine) and {metric_ms:.2f} ms per "
        "log_metric. The raw-JSON rows show the servers without the client."
    )
    print(
        "Ratios: Maestro over MLflow for rates, MLflow over Maestro for times (higher is better for Maestro)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="a PostgreSQL server for a second Maestro run")
    parser.add_argument("--runs", type=int, default=20, help="runs of 10,000 points for ingestion")
    parser.add_argument("--search-runs", type=int, default=2000)
    parser.add_argument("--skip-mlflow", action="store_true", help="measure Maestro only")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable): batch ingestion, log_metric latency, search, "
        "the native endpoint; the raw log-metric and search figures come with metric or search",
    )
    args = parser.parse_args()
    parts = frozenset(args.only or PARTS)
    with tempfile.TemporaryDirectory(prefix="maestro-tracking-bench-") as scratch:
        root = Path(scratch)
        (root / "sqlite").mkdir()
        sqlite = maestro_figures(Backend("SQLite", root / "sqlite", None), args.runs, args.search_runs, parts)
        others = []
        if args.database_url:
            with scratch_postgres(args.database_url) as (url, _):
                (root / "postgresql").mkdir()
                postgres = maestro_figures(
                    Backend("PostgreSQL", root / "postgresql", url), args.runs, args.search_runs, parts
                )
            others.append(postgres)
        mlflow = None
        if not args.skip_mlflow:
            (root / "mlflow").mkdir()
            with mlflow_server(root / "mlflow") as base:
                mlflow = workload(
                    "MLflow (SQLite)", base, base, None, args.runs, args.search_runs, None, parts
                )
        report(sqlite, mlflow, others, client_floor())


if __name__ == "__main__":
    main()
