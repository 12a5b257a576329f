"""What CPU-heavy requests cost everyone else, against a real `maestro serve` process.

    .venv/bin/python bench/heavy_requests.py [--gets 200] [--seconds 20]
        [--database-url postgresql+psycopg://user@host/db]

1. A victim's latency while others render model card PDFs: one organisation reads a
   model (GET /api/v1/models/{id}, one request at a time, for at least 20 seconds)
   while four other organisations each render the largest card the sections allow
   (POST …/card/generate) in a loop. Three servers, started one after the other in this run, differ only in
   how the PDFs run:

   * `unbounded, in request threads`: every PDF in the request's own thread, as many
     at once as callers ask (how Maestro rendered before the shared pool:
     MAESTRO_HEAVY_PROCESSES=false and limits too high to matter);
   * `pool, threads`: the shared pool's limits, rendering in the request's thread
     (MAESTRO_HEAVY_PROCESSES=false);
   * `pool, processes`: the default, rendering in worker processes.

   Prints the victim's p50/p99/max with and without the PDF load, how many PDFs were
   rendered and how many requests the pool refused (429/503).

2. Downsampling a 500,002-point metric series (GET …/metrics/{name}?max_points=…,
   the median of five requests) through the server, and beside it, on the same
   database in this process, the query Maestro used before (four window functions
   over the whole series), for comparison. With --database-url, again on PostgreSQL.

3. Parsing an MLflow search filter of `a`, a run of spaces and `x` (4,000 characters,
   the longest a filter may be, and for comparison 2,000), in this process: the parser
   now, and the splitter and pattern used before (kept here for comparison only).

Figures move with the machine's load; compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, or_, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Backend, expect, log, nearest_rank, running_server, scratch_postgres
from maestro.mlflow_compat import filters
from maestro.tracking.models import MetricPoint

API = "/api/v1"
TIMEOUT = httpx.Timeout(300.0)
ATTACKERS = 4
SERIES_POINTS = 500_002
BATCH = 10_000
UNBOUNDED = {
    "MAESTRO_HEAVY_PROCESSES": "false",
    "MAESTRO_HEAVY_WORKERS": "64",
    "MAESTRO_HEAVY_PER_OWNER": "64",
    "MAESTRO_HEAVY_QUEUE_PER_OWNER": "64",
    "MAESTRO_HEAVY_QUEUE": "1000",
}
CONFIGURATIONS = (
    ("unbounded, in request threads", UNBOUNDED),
    ("pool, threads", {"MAESTRO_HEAVY_PROCESSES": "false"}),
    ("pool, processes (default)", {}),
)
LARGEST_SECTIONS = {  # 19,800 characters; a card's sections hold at most 20,000
    "intended_use": {"primary_uses": ["Привет мир " * 45] * 20},
    "limitations": ["word " * 99] * 18,
    "training_data": {"name": "transactions", "description": "Long text. " * 90},
}


def sign_up(base: str, number: int) -> tuple[httpx.Client, str]:
    """A new organisation's admin: a client with its access token, and the organisation."""
    client = httpx.Client(base_url=base, timeout=TIMEOUT)
    signup = expect(
        client.post(
            f"{API}/auth/register",
            json={
                "email": f"heavy-{number}@example.com",
                "password": "heavy requests benchmark",
                "organization_name": f"Heavy {number}",
            },
        ),
        201,
    )
    client.headers["Authorization"] = f"Bearer {signup['access_token']}"
    return client, signup["user"]["current_organization"]["id"]


def project_of(client: httpx.Client, organization: str) -> str:
    return expect(client.post(f"{API}/organizations/{organization}/projects", json={"name": "p"}), 201)["id"]


def model_of(client: httpx.Client, project: str) -> str:
    body = {"name": "Fraud Detector", "model_type": "classification"}
    return expect(client.post(f"{API}/projects/{project}/models", json=body), 201)["id"]


def largest_card(client: httpx.Client, organization: str) -> str:
    """A version whose card is as large as a card gets: 1,000 metrics, 1,000 schema
    fields and the longest sections; returns its generate URL."""
    model = model_of(client, project_of(client, organization))
    schema = {
        "inputs": [{"name": f"feature_{i}", "type": "float", "description": "x" * 40} for i in range(1000)],
        "outputs": [{"name": "score", "type": "float"}],
    }
    metrics = {f"metric_{i}": i / 1001 for i in range(1000)}
    expect(
        client.post(
            f"{API}/models/{model}/versions",
            data={"performance_metrics": json.dumps(metrics), "model_schema": json.dumps(schema)},
            files={"model_file": ("model.bin", b"model bytes", "application/octet-stream")},
        ),
        201,
    )
    url = f"{API}/models/{model}/versions/1.0.0/card"
    expect(client.put(url, json=LARGEST_SECTIONS))
    return f"{url}/generate"


def latencies(client: httpx.Client, url: str, count: int, seconds: float = 0.0) -> list[float]:
    """Times of ``count`` GETs one after the other, and more until ``seconds`` passed."""
    found: list[float] = []
    until = time.perf_counter() + seconds
    while len(found) < count or time.perf_counter() < until:
        start = time.perf_counter()
        expect(client.get(url))
        found.append(time.perf_counter() - start)
    return found


def describe(samples: list[float]) -> str:
    return (
        f"p50 {nearest_rank(samples, 0.5) * 1000:7.1f} ms  p99 {nearest_rank(samples, 0.99) * 1000:7.1f} ms  "
        f"max {max(samples) * 1000:7.1f} ms"
    )


def bench_pdf_load(label: str, env: dict[str, str], gets: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="maestro-heavy-") as directory:
        data_dir = Path(directory)
        # The server reads `.env` in its working directory, the data directory.
        (data_dir / ".env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        with running_server(Backend(label, data_dir, None)) as base:
            victim, organization = sign_up(base, 0)
            model_url = f"{API}/models/{model_of(victim, project_of(victim, organization))}"
            signed_up = [sign_up(base, number) for number in range(1, ATTACKERS + 1)]
            attackers = [client for client, _ in signed_up]
            generate = [largest_card(client, organization) for client, organization in signed_up]
            expect(victim.get(model_url))
            alone = latencies(victim, model_url, gets)
            log(f"{label}: rendering one card to warm up")
            started = time.perf_counter()
            first = attackers[0].post(generate[0])
            assert first.status_code == 200, first.text
            one_pdf = time.perf_counter() - started
            statuses: Counter[int] = Counter()
            stop = threading.Event()

            def attack(client: httpx.Client, url: str) -> None:
                while not stop.is_set():
                    statuses[client.post(url).status_code] += 1

            threads = [
                threading.Thread(target=attack, args=(client, url), daemon=True)
                for client, url in zip(attackers, generate, strict=True)
            ]
            for thread in threads:
                thread.start()
            started = time.perf_counter()
            loaded = latencies(victim, model_url, gets, seconds)
            elapsed = time.perf_counter() - started
            stop.set()
            for thread in threads:
                thread.join()
            print(f"{label}")
            print(f"  one largest card alone: {one_pdf * 1000:.0f} ms, {len(first.content) / 1024:.0f} KiB")
            print(f"  victim GET, alone:        {describe(alone)}  ({len(alone)} requests)")
            print(f"  victim GET, {ATTACKERS} renderers:  {describe(loaded)}  ({len(loaded)} requests)")
            refused = {status: n for status, n in statuses.items() if status != 200}
            print(
                f"  PDFs rendered meanwhile: {statuses[200]} in {elapsed:.1f} s; "
                f"refused: {refused or 'none'}",
                flush=True,
            )


# --- downsampling --------------------------------------------------------------------------
def previous_downsampled(session: Session, run_id: str, key: str, max_points: int) -> int:
    """Maestro's downsampling before this change, kept here for comparison only: four
    window functions (lowest, highest, first, last) over every point of the series.
    Returns the number of points it kept."""
    where = (MetricPoint.run_id == run_id, MetricPoint.key == key)
    _, low, high = session.execute(
        select(func.count(), func.min(MetricPoint.step), func.max(MetricPoint.step)).where(*where)
    ).one()
    buckets = max(1, max_points // 2 - 1)
    width = max(1, -(-(high - low + 1) // buckets))
    bucket = (MetricPoint.step - low) // width
    nan_last = MetricPoint.value.is_(None)
    ranked = (
        select(
            MetricPoint.id,
            MetricPoint.step,
            func.row_number()
            .over(
                partition_by=bucket, order_by=(nan_last, MetricPoint.value, MetricPoint.step, MetricPoint.id)
            )
            .label("lowest"),
            func.row_number()
            .over(
                partition_by=bucket,
                order_by=(nan_last, MetricPoint.value.desc(), MetricPoint.step, MetricPoint.id),
            )
            .label("highest"),
            func.row_number().over(order_by=(MetricPoint.step, MetricPoint.id)).label("first"),
            func.row_number().over(order_by=(MetricPoint.step.desc(), MetricPoint.id.desc())).label("last"),
        )
        .where(*where)
        .subquery()
    )
    return len(
        session.execute(
            select(ranked.c.id).where(
                or_(ranked.c.lowest == 1, ranked.c.highest == 1, ranked.c.first == 1, ranked.c.last == 1)
            )
        ).all()
    )


def median_seconds(call: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_downsampling(backend: Backend) -> None:
    with running_server(backend) as base:
        client, organization = sign_up(base, 0)
        project = project_of(client, organization)
        experiment = expect(client.post(f"{API}/projects/{project}/experiments", json={"name": "long"}), 201)[
            "id"
        ]
        run = expect(client.post(f"{API}/experiments/{experiment}/runs", json={}), 201)["id"]
        url = f"{API}/experiments/{experiment}/runs/{run}/metrics"
        log(f"{backend.name}: logging {SERIES_POINTS:,} points")
        started = time.perf_counter()
        for first in range(0, SERIES_POINTS, BATCH):
            points = [
                {"name": "loss", "step": step, "value": 1 / (step + 1) + (step % 97) / 1000}
                for step in range(first, min(first + BATCH, SERIES_POINTS))
            ]
            expect(client.post(url, json={"metrics": points}))
        print(f"{backend.name}: logged {SERIES_POINTS:,} points in {time.perf_counter() - started:.1f} s")
        engine = create_engine(backend.resolved_url)
        for max_points in (10, 1000):

            def through_server(max_points: int = max_points) -> None:
                page = expect(client.get(f"{url}/loss", params={"max_points": max_points}))
                assert page["total_points"] == SERIES_POINTS
                assert len(page["points"]) <= max_points

            def before(max_points: int = max_points) -> None:
                with Session(engine) as session:
                    assert previous_downsampled(session, run, "loss", max_points) <= max_points

            now, then = median_seconds(through_server), median_seconds(before)
            print(
                f"  max_points={max_points:<5} now, through the server: {now * 1000:7.0f} ms   "
                f"the previous query, in process: {then * 1000:7.0f} ms",
                flush=True,
            )
        engine.dispose()


# --- filter parsing -----------------------------------------------------------------------
PREVIOUS_CONDITION = re.compile(
    r"\s*(?:(?P<prefix>attributes?|tags?)\.)?(?P<key>`[^`]+`|\"[^\"]+\"|[\w.]+)\s*"
    r"(?P<op>!=|<>|<=|>=|=|<|>|(?:NOT\s+)?I?LIKE|(?:NOT\s+)?IN)\s*"
    r"(?P<value>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\((?:[^)]*)\)|[-+]?\d+(?:\.\d+)?)\s*",
    re.IGNORECASE,
)


def previous_parse(text: str) -> None:
    """How MLflow filters were split and matched before, for comparison only."""
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        PREVIOUS_CONDITION.fullmatch(part)


def bench_filter_parsing() -> None:
    for length in (2000, 4000):
        text = "a" + " " * (length - 2) + "x"

        def now(text: str = text) -> None:
            with contextlib.suppress(filters.FilterError):
                filters.parse(text, {"a": "text"})

        print(
            f"  {length:,} characters: now {median_seconds(now) * 1000:8.2f} ms   "
            f"before {median_seconds(lambda text=text: previous_parse(text)) * 1000:8.1f} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=200, help="Victim requests per measurement.")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="Least time the victim measures under load."
    )
    parser.add_argument("--database-url", help="A PostgreSQL server to downsample on as well.")
    parser.add_argument("--skip-pdf", action="store_true")
    parser.add_argument("--skip-downsampling", action="store_true")
    parser.add_argument("--skip-filters", action="store_true")
    options = parser.parse_args()
    if not options.skip_pdf:
        print(f"1. A victim's GET while {ATTACKERS} other organisations render the largest model card")
        for label, env in CONFIGURATIONS:
            bench_pdf_load(label, {"MAESTRO_ACCESS_LOG": "false", **env}, options.gets, options.seconds)
    if not options.skip_downsampling:
        print(f"2. Downsampling {SERIES_POINTS:,} points (median of 5)")
        with tempfile.TemporaryDirectory(prefix="maestro-heavy-") as directory:
            bench_downsampling(Backend("SQLite", Path(directory), None))
        if options.database_url:
            with (
                scratch_postgres(options.database_url) as (url, _),
                tempfile.TemporaryDirectory(prefix="maestro-heavy-") as directory,
            ):
                bench_downsampling(Backend("PostgreSQL", Path(directory), url))
    if not options.skip_filters:
        print("3. Parsing an MLflow filter of `a`, spaces and `x` (median of 5)")
        bench_filter_parsing()


if __name__ == "__main__":
    main()
