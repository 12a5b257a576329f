"""Experiment tracking through the native API, against a real `maestro serve` process.

    .venv/bin/python bench/tracking_native.py [--database-url postgresql+psycopg://user@host:5432/db]
                                             [--mlflow-url http://127.0.0.1:5000]

Runs once on a fresh embedded SQLite data directory and, with --database-url, once
more on PostgreSQL (a scratch database created on that server and dropped
afterwards). Every figure comes from HTTP requests, as a user who signed up
through /api/v1/auth/register, with rate limits turned off, one request at a time
over one keep-alive connection unless said otherwise.

1. Metric ingestion: 20 runs x 10,000 points (two metrics x 5,000 steps), posted in
   batches of 1,000 points to POST …/runs/{id}/metrics: points per second over the
   whole load, and the median and p95 time of one batch. Then the same load from
   4 clients at once (5 runs each).
2. Run search over 2,000 runs of one experiment (each with two parameters and two
   metrics, created through the API): the median and p95 of POST …/runs/search with
   one metric filter and a metric order (`metrics.accuracy > 0.5`, ordered by
   `metrics.accuracy DESC`, 20 per page), and the query plan of that search.
3. With --mlflow-url, the ingestion load of (1) against an MLflow tracking server
   through its REST API (`runs/log-batch`, whose limit is 1,000 metrics a request),
   for the ratio the design aims at (at least ten times MLflow's rate).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Backend, expect, log, nearest_rank, running_server, scratch_postgres

API = "/api/v1"
TIMEOUT = httpx.Timeout(120.0)
RUNS, POINTS_PER_RUN, BATCH = 20, 10_000, 1_000
SEARCH_RUNS, SEARCHES = 2_000, 50
SEARCH = {"filter": "metrics.accuracy > 0.5", "order_by": ["metrics.accuracy DESC"], "limit": 20}


@dataclass
class Client:
    base: str
    headers: dict[str, str]
    http: httpx.Client
    project: str

    def another(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=TIMEOUT)

    def experiment(self, name: str) -> str:
        return expect(self.http.post(f"{API}/projects/{self.project}/experiments", json={"name": name}), 201)[
            "id"
        ]

    def run(self, experiment: str, **body: Any) -> str:
        return expect(self.http.post(f"{API}/experiments/{experiment}/runs", json=body), 201)["id"]


def sign_up(base: str) -> Client:
    http = httpx.Client(base_url=base, timeout=TIMEOUT)
    signup = expect(
        http.post(
            f"{API}/auth/register",
            json={
                "email": "tracking-bench@example.com",
                "password": "tracking benchmark password",
                "organization_name": "Tracking bench",
            },
        ),
        201,
    )
    headers = {"Authorization": f"Bearer {signup['access_token']}"}
    http.headers.update(headers)
    organization = signup["user"]["current_organization"]["id"]
    project = expect(http.post(f"{API}/organizations/{organization}/projects", json={"name": "Bench"}), 201)[
        "id"
    ]
    return Client(base, headers, http, project)


# --- 1. ingestion --------------------------------------------------------------------------
def batches(run_number: int) -> list[list[dict[str, Any]]]:
    """Two metrics over 5,000 steps, 1,000 points (500 steps) a batch."""
    steps_per_batch = BATCH // 2
    out = []
    for first in range(0, POINTS_PER_RUN // 2, steps_per_batch):
        batch = []
        for step in range(first, first + steps_per_batch):
            batch.append({"name": "loss", "value": 1 / (step + 1 + run_number), "step": step})
            batch.append({"name": "accuracy", "value": 1 - 1 / (step + 2), "step": step})
        out.append(batch)
    return out


@dataclass
class Ingestion:
    points: int
    seconds: float
    batch_ms: list[float]

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def ingest(
    post: Callable[[httpx.Client, str, list[dict[str, Any]]], None],
    clients: list[httpx.Client],
    targets: list[str],
) -> Ingestion:
    """Post every batch of every target run, the runs shared out among the clients."""
    work = [(targets[n], batches(n)) for n in range(len(targets))]
    timings: list[float] = []

    def drive(index: int) -> None:
        client = clients[index]
        for target, run_batches in work[index :: len(clients)]:
            for batch in run_batches:
                started = time.perf_counter()
                post(client, target, batch)
                timings.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(drive, range(len(clients))))
    elapsed = time.perf_counter() - started
    return Ingestion(len(targets) * POINTS_PER_RUN, elapsed, timings)


def bench_native_ingestion(client: Client, concurrency: int) -> Ingestion:
    experiment = client.experiment(f"ingestion-{concurrency}")
    runs = [f"{API}/experiments/{experiment}/runs/{client.run(experiment)}/metrics" for _ in range(RUNS)]

    def post(http: httpx.Client, url: str, batch: list[dict[str, Any]]) -> None:
        expect(http.post(url, json={"metrics": batch}))

    clients = [client.http] if concurrency == 1 else [client.another() for _ in range(concurrency)]
    try:
        return ingest(post, clients, runs)
    finally:
        if concurrency > 1:
            for http in clients:
                http.close()


def bench_mlflow_ingestion(url: str) -> Ingestion:
    api = "/api/2.0/mlflow"
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        created = http.post(
            f"{api}/experiments/create", json={"name": f"maestro-bench-{secrets.token_hex(4)}"}
        )
        experiment = created.json()["experiment_id"]
        runs = []
        for _ in range(RUNS):
            response = http.post(f"{api}/runs/create", json={"experiment_id": experiment, "start_time": 0})
            runs.append(response.json()["run"]["info"]["run_id"])

        def post(client: httpx.Client, run_id: str, batch: list[dict[str, Any]]) -> None:
            metrics = [
                {"key": point["name"], "value": point["value"], "step": point["step"], "timestamp": 0}
                for point in batch
            ]
            response = client.post(f"{api}/runs/log-batch", json={"run_id": run_id, "metrics": metrics})
            if response.status_code != 200:
                raise SystemExit(f"MLflow log-batch answered {response.status_code}: {response.text[:300]}")

        return ingest(post, [http], runs)


# --- 2. search -----------------------------------------------------------------------------
def seed_search(client: Client) -> str:
    experiment = client.experiment("search")
    log(f"creating {SEARCH_RUNS} runs through the API")
    for number in range(SEARCH_RUNS):
        run = client.run(
            experiment,
            parameters={"optimizer": ("adam", "sgd", "rmsprop")[number % 3], "lr": 10 ** -(number % 4)},
        )
        accuracy = (number * 7919 % SEARCH_RUNS) / SEARCH_RUNS
        points = [{"name": "accuracy", "value": accuracy}, {"name": "loss", "value": 1 - accuracy}]
        expect(
            client.http.post(f"{API}/experiments/{experiment}/runs/{run}/metrics", json={"metrics": points})
        )
    return experiment


def timed(call: Callable[[], httpx.Response], repetitions: int) -> list[float]:
    for _ in range(5):
        call()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_search(client: Client, experiment: str) -> tuple[list[float], list[float], int]:
    """The search, and GET /projects/{id} beside it: the same authentication and access
    check around a single-row read, the floor any request pays."""
    url = f"{API}/experiments/{experiment}/runs/search"
    first = client.http.post(url, json=SEARCH)
    expect(first)
    samples = timed(lambda: client.http.post(url, json=SEARCH), SEARCHES)
    reference = timed(lambda: client.http.get(f"{API}/projects/{client.project}"), SEARCHES)
    return samples, reference, first.json()["pagination"]["total"]


def query_plan(backend: Backend, experiment: str) -> list[str]:
    """The plan of the page query of the search, read from the database directly."""
    from sqlalchemy.orm import Session

    from maestro.migrations import import_models
    from maestro.tracking.schemas import RunSearch
    from maestro.tracking.service import search_statement_for_plan

    import_models()
    url = backend.resolved_url
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            statement = search_statement_for_plan(session, [experiment], RunSearch(**SEARCH))
            sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            if engine.dialect.name == "sqlite":
                return [row[-1] for row in session.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
            session.execute(text("ANALYZE"))
            return [row[0] for row in session.execute(text(f"EXPLAIN ANALYZE {sql}"))]
    finally:
        engine.dispose()


# --- report --------------------------------------------------------------------------------
def report_ingestion(label: str, result: Ingestion) -> None:
    print(
        f"{label:44} {result.rate:12,.0f} {statistics.median(result.batch_ms):10.1f} "
        f"{nearest_rank(result.batch_ms, 0.95):8.1f}"
    )


def bench_backend(backend: Backend, mlflow_url: str | None) -> None:
    print(f"\n== {backend.name}")
    with running_server(backend) as base:
        client = sign_up(base)
        log("ingestion, one client")
        single = bench_native_ingestion(client, 1)
        log("ingestion, four clients")
        four = bench_native_ingestion(client, 4)
        experiment = seed_search(client)
        log("searching")
        samples, reference, total = bench_search(client, experiment)
        plan = query_plan(backend, experiment)
    print(f"\n{RUNS} runs x {POINTS_PER_RUN:,} points in batches of {BATCH:,}")
    print(f"{'ingestion':44} {'points/s':>12} {'batch ms':>10} {'p95 ms':>8}")
    report_ingestion("maestro, 1 client", single)
    report_ingestion("maestro, 4 clients", four)
    if mlflow_url:
        log("ingestion into MLflow")
        mlflow = bench_mlflow_ingestion(mlflow_url)
        report_ingestion("MLflow tracking server, 1 client (reference)", mlflow)
        print(f"{'ratio, 1 client':44} {single.rate / mlflow.rate:11.1f}x")
    print(
        f"\nrun search over {SEARCH_RUNS:,} runs: {SEARCH['filter']!r} ordered by {SEARCH['order_by'][0]!r}"
    )
    print(f"  {total} matching, {SEARCH['limit']} per page")
    print(f"  median {statistics.median(samples):.1f} ms, p95 {nearest_rank(samples, 0.95):.1f} ms")
    print(
        f"  reference GET /projects/{{id}}: median {statistics.median(reference):.1f} ms, "
        f"p95 {nearest_rank(reference, 0.95):.1f} ms"
    )
    print("  query plan:")
    for line in plan:
        print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="A PostgreSQL server to run on as well (a scratch database).")
    parser.add_argument("--mlflow-url", help="An MLflow tracking server to compare ingestion with.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        sqlite_dir = Path(scratch) / "sqlite"
        sqlite_dir.mkdir()
        bench_backend(Backend("SQLite (embedded)", sqlite_dir, None), args.mlflow_url)
        if args.database_url:
            postgres_dir = Path(scratch) / "postgresql"
            postgres_dir.mkdir()
            with scratch_postgres(args.database_url) as (url, _):
                bench_backend(Backend("PostgreSQL", postgres_dir, url), None)


if __name__ == "__main__":
    main()
