"""What the model registry costs, against a real `maestro serve` process.

    .venv/bin/python bench/registry.py [--database-url postgresql+psycopg://user@host:5432/db]

Runs once on a fresh embedded SQLite data directory (a temporary directory) and,
with --database-url, once more on PostgreSQL: a scratch database created on that
server for the run and dropped afterwards (artifacts still go to a temporary data
directory). Every figure comes from HTTP requests to the server, as a user who
signed up through /api/v1/auth/register, with rate limits turned off.

1. Upload throughput of one model file of random bytes (50 MB), streamed from disk
   by httpx as multipart/form-data, through POST /api/v1/models/{id}/versions and,
   when the server's OpenAPI document has it, POST /api/v1/upload/models; beside it,
   measured in the same run, a plain copy of the same file into the data directory,
   flushed with fsync as the artifact store does before it answers.
2. List latency of GET /api/v1/projects/{id}/models over 1,000 models created
   through the API (every fifth with one to three small versions, so
   `latest_version` is filled in): the default page, limit=100, a search filter
   and sort=name, each one request at a time over one keep-alive connection, after
   GET /api/v1/projects/{id} as the reference (the same authentication and access
   check, one row to read).
3. Version creation rate with small files: one client after another, then several
   concurrent clients each on a model of its own, then sharing one model (versions
   numbered by the server).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Backend, expect, log, nearest_rank, running_server, scratch_postgres

API = "/api/v1"
UPLOAD_ROUTE = f"{API}/upload/models"
MB = 1_000_000
SEARCH_TERM = "churn"
TIMEOUT = httpx.Timeout(120.0)


@dataclass
class Session:
    """A signed-up user's client: one keep-alive connection with the access token."""

    base: str
    client: httpx.Client
    organization_id: str
    headers: dict[str, str]

    def new_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=TIMEOUT)

    def create_project(self, name: str) -> str:
        response = self.client.post(
            f"{API}/organizations/{self.organization_id}/projects", json={"name": name}
        )
        return expect(response, 201)["id"]

    def create_model(self, project_id: str, name: str, **fields: Any) -> str:
        body = {"name": name, "model_type": "classification", **fields}
        return expect(self.client.post(f"{API}/projects/{project_id}/models", json=body), 201)["id"]


def sign_up(base: str) -> Session:
    client = httpx.Client(base_url=base, timeout=TIMEOUT)
    signup = expect(
        client.post(
            f"{API}/auth/register",
            json={
                "email": "registry-bench@example.com",
                "password": "registry benchmark password",
                "organization_name": "Registry bench",
            },
        ),
        201,
    )
    headers = {"Authorization": f"Bearer {signup['access_token']}"}
    client.headers.update(headers)
    return Session(base, client, signup["user"]["current_organization"]["id"], headers)


# --- 1. upload throughput --------------------------------------------------------------------
@dataclass
class UploadRow:
    label: str
    mb_per_s: list[float] = field(default_factory=list)
    skipped: str | None = None


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as file:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 1024 * 1024))
            file.write(chunk)
            remaining -= len(chunk)


def copy_with_fsync(source: Path, target: Path) -> None:
    with source.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 1024 * 1024)
        writer.flush()
        os.fsync(writer.fileno())


def post_file(
    client: httpx.Client, path: str, field_name: str, source: Path, filename: str, data: dict[str, str]
) -> httpx.Response:
    """httpx streams a file object in 64 KiB chunks (Content-Length from its size);
    form fields in ``data`` go before the file."""
    with source.open("rb") as file:
        return client.post(path, data=data, files={field_name: (filename, file, "application/octet-stream")})


def upload_route_in_openapi(client: httpx.Client) -> bool:
    paths = client.get(f"{API}/openapi.json").json().get("paths", {})
    return "post" in paths.get(UPLOAD_ROUTE, {})


def bench_uploads(session: Session, backend: Backend, megabytes: int, repetitions: int) -> list[UploadRow]:
    size = megabytes * MB
    project = session.create_project("Uploads")
    model = session.create_model(project, "Large model")
    source = backend.data_dir / "upload-source.bin"
    write_random_file(source, size)
    copy = UploadRow("plain copy into the data dir (+fsync)")
    versions = UploadRow(f"POST {API}/models/{{id}}/versions")
    upload = UploadRow(f"POST {UPLOAD_ROUTE}")
    if not upload_route_in_openapi(session.client):
        upload.skipped = "skipped: not in /api/v1/openapi.json"
    client = session.client
    for repetition in range(repetitions):
        log(f"{backend.name}: {megabytes} MB upload, repetition {repetition + 1}/{repetitions}")
        target = backend.data_dir / "copy-target.bin"
        os.sync()  # no timing pays for the writeback of the one before
        started = time.perf_counter()
        copy_with_fsync(source, target)
        copy.mb_per_s.append(size / MB / (time.perf_counter() - started))
        target.unlink()

        os.sync()
        started = time.perf_counter()
        response = post_file(client, f"{API}/models/{model}/versions", "model_file", source, "model.bin", {})
        elapsed = time.perf_counter() - started
        created = expect(response, 201)
        if created["model_size_bytes"] != size:
            raise SystemExit(f"the server stored {created['model_size_bytes']} bytes of {size}")
        versions.mb_per_s.append(size / MB / elapsed)
        expect_deleted(client.delete(f"{API}/models/{model}/versions/{created['version']}"))

        if upload.skipped is None:
            os.sync()
            started = time.perf_counter()
            response = post_file(
                client,
                UPLOAD_ROUTE,
                "file",
                source,
                f"bench-upload-{repetition}.bin",
                {"project_id": project},
            )
            elapsed = time.perf_counter() - started
            if response.status_code not in (200, 201):
                upload.skipped = f"failed: {response.status_code} {response.text[:120]}"
            else:
                upload.mb_per_s.append(size / MB / elapsed)
    source.unlink()
    return [copy, versions, upload]


def expect_deleted(response: httpx.Response) -> None:
    if response.status_code != 204:
        raise SystemExit(
            f"DELETE {response.request.url.path} answered {response.status_code}: {response.text}"
        )


# --- 2. list latency -------------------------------------------------------------------------
@dataclass
class ListRow:
    label: str
    median_ms: float
    p99_ms: float
    server_ms: float  # median X-Process-Time: the server's own share
    items: int | None
    total: int | None


def seed_models(session: Session, count: int, clients: int) -> tuple[str, float, int]:
    """``count`` models through the API, ``clients`` at a time; every fifth model gets
    one to three 1 KiB versions. Returns the project, requests per second and versions."""
    project = session.create_project("Catalogue")
    payload = os.urandom(1024)
    stages = ("development", "staging", "production")

    def seed(numbers: range) -> tuple[int, int]:
        requests = versions = 0
        with session.new_client() as client:
            for number in numbers:
                purpose = SEARCH_TERM if number % 10 == 0 else "demand"
                body = {
                    "name": f"model-{number:05d}",
                    "model_type": "classification",
                    "description": f"Forecasts {purpose} for segment {number % 37}",
                    "framework": ("scikit-learn", "xgboost", "pytorch")[number % 3],
                    "tags": ["bench", f"group-{number % 10}"],
                }
                model_id = expect(client.post(f"{API}/projects/{project}/models", json=body), 201)["id"]
                requests += 1
                for index in range(0 if number % 5 else number % 3 + 1):
                    response = client.post(
                        f"{API}/models/{model_id}/versions",
                        data={"stage": stages[index], "performance_metrics": '{"accuracy": 0.9}'},
                        files={"model_file": ("model.bin", payload)},
                    )
                    expect(response, 201)
                    requests += 1
                    versions += 1
        return requests, versions

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(seed, [range(first, count, clients) for first in range(clients)]))
    requests_per_s = sum(requests for requests, _ in done) / (time.perf_counter() - started)
    return project, requests_per_s, sum(versions for _, versions in done)


def bench_lists(session: Session, project: str, requests: int) -> list[ListRow]:
    """The list queries, after GET /projects/{id} as the reference: the same
    authentication and authorisation with one row to read."""
    models = f"{API}/projects/{project}/models"
    variants = {
        "GET /projects/{id} (reference)": (f"{API}/projects/{project}", {}),
        "default page (20, newest first)": (models, {}),
        "limit=100": (models, {"limit": 100}),
        f"search={SEARCH_TERM}": (models, {"search": SEARCH_TERM}),
        "sort=name": (models, {"sort": "name"}),
    }
    rows = []
    client = session.client
    for label, (path, params) in variants.items():
        for _ in range(20):
            expect(client.get(path, params=params), 200)
        samples, server = [], []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(path, params=params)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"GET {path} {params} answered {response.status_code}: {response.text}")
            server.append(float(response.headers["x-process-time"]) * 1000)
        body = response.json()
        paged = "pagination" in body
        rows.append(
            ListRow(
                label,
                statistics.median(samples),
                nearest_rank(samples, 0.99),
                statistics.median(server),
                len(body["data"]) if paged else None,
                body["pagination"]["total"] if paged else None,
            )
        )
    return rows


# --- 3. version creation rate ---------------------------------------------------------------
@dataclass
class RateRow:
    label: str
    uploads: int
    seconds: float
    latencies_ms: list[float]
    failures: Counter[str]  # "status: error message" -> how many

    @property
    def per_second(self) -> float:
        return (self.uploads - sum(self.failures.values())) / self.seconds


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:60]
    except (ValueError, KeyError, TypeError):
        return response.text[:60]


def upload_many(session: Session, model_ids: list[str], uploads: int, payload: bytes) -> RateRow:
    """``len(model_ids)`` clients at once, client i uploading to model_ids[i]."""

    def one_client(model_id: str, count: int) -> tuple[list[float], Counter[str]]:
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        with session.new_client() as client:
            for _ in range(count):
                started = time.perf_counter()
                response = client.post(
                    f"{API}/models/{model_id}/versions", files={"model_file": ("model.bin", payload)}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 201:
                    failures[f"{response.status_code}: {error_message(response)}"] += 1
        return latencies, failures

    clients = len(model_ids)
    shares = [uploads // clients + (1 if index < uploads % clients else 0) for index in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, model_ids, shares))
    seconds = time.perf_counter() - started
    latencies = [latency for result in results for latency in result[0]]
    failures: Counter[str] = Counter()
    for _, counts in results:
        failures.update(counts)
    return RateRow("", uploads, seconds, latencies, failures)


def bench_version_rate(session: Session, uploads: int, clients: int, kib: int) -> list[RateRow]:
    project = session.create_project("Version rate")
    payload = os.urandom(kib * 1024)
    # warm-up on a model of its own, so no run starts on a cold path
    warm = session.create_model(project, "warm-up")
    upload_many(session, [warm], 10, payload)

    single = session.create_model(project, "sequential")
    sequential = upload_many(session, [single], uploads, payload)
    sequential.label = "1 client, one model"

    own = [session.create_model(project, f"concurrent-{index}") for index in range(clients)]
    concurrent = upload_many(session, own, uploads, payload)
    concurrent.label = f"{clients} clients, a model each"

    shared_model = session.create_model(project, "shared")
    shared = upload_many(session, [shared_model] * clients, uploads, payload)
    shared.label = f"{clients} clients, one shared model"
    return [sequential, concurrent, shared]


# --- running and printing -------------------------------------------------------------------
@dataclass
class Results:
    backend: Backend
    uploads: list[UploadRow]
    rss_growth_mb: float  # the bench process's peak memory, grown while uploading
    seeding: tuple[float, int]  # requests per second, versions created
    lists: list[ListRow]
    rates: list[RateRow]


def run_backend(backend: Backend, args: argparse.Namespace) -> Results:
    log(f"{backend.name}: starting maestro serve ({backend.description})")
    with running_server(backend, args.workers) as base:
        session = sign_up(base)
        try:
            rss_before = peak_rss_mb()
            uploads = bench_uploads(session, backend, args.upload_mb, args.repetitions)
            rss_growth = peak_rss_mb() - rss_before
            log(f"{backend.name}: creating {args.models} models through the API")
            project, requests_per_s, versions = seed_models(session, args.models, args.clients)
            log(f"{backend.name}: {args.requests} list requests per variant")
            lists = bench_lists(session, project, args.requests)
            log(f"{backend.name}: {args.versions} version uploads per mode")
            rates = bench_version_rate(session, args.versions, args.clients, args.version_kib)
        finally:
            session.client.close()
    return Results(backend, uploads, rss_growth, (requests_per_s, versions), lists, rates)


def print_results(all_results: list[Results], args: argparse.Namespace) -> None:
    print()
    for results in all_results:
        print(f"{results.backend.name}: {results.backend.description}")

    print(f"\n1. Upload of a {args.upload_mb} MB file, {args.repetitions} repetitions")
    print(f"{'backend':11} {'path':44} {'median MB/s':>11} {'best MB/s':>10} {'vs copy':>8}")
    for results in all_results:
        reference = statistics.median(results.uploads[0].mb_per_s)
        for row in results.uploads:
            if row.skipped or not row.mb_per_s:
                print(f"{results.backend.name:11} {row.label:44} {row.skipped}")
                continue
            median = statistics.median(row.mb_per_s)
            print(
                f"{results.backend.name:11} {row.label:44} {median:11.1f} {max(row.mb_per_s):10.1f}"
                f" {median / reference:8.2f}"
            )
    growth = max(results.rss_growth_mb for results in all_results)
    print(f"the client's peak memory grew by {growth:.0f} MB while uploading: httpx streams the file")

    print(f"\n2. GET {API}/projects/{{id}}/models over {args.models:,} models (created through the API),")
    print(f"   {args.requests} sequential requests each on one keep-alive connection")
    header = f"{'backend':11} {'query':34} {'median ms':>10} {'p99 ms':>8} {'server ms':>10}"
    print(f"{header} {'items':>6} {'total':>6}")
    for results in all_results:
        for row in results.lists:
            items = "" if row.items is None else f"{row.items:6d} {row.total:6d}"
            print(
                f"{results.backend.name:11} {row.label:34} {row.median_ms:10.2f} {row.p99_ms:8.2f}"
                f" {row.server_ms:10.2f} {items}"
            )
    print("server ms: the median X-Process-Time header, the server's own time for the request")
    for results in all_results:
        requests_per_s, versions = results.seeding
        print(
            f"{results.backend.name}: seeding {args.models} models and {versions} versions with"
            f" {args.clients} clients ran at {requests_per_s:.0f} requests/s"
        )

    print(f"\n3. Version creation, {args.version_kib} KiB files, {args.versions} uploads per mode")
    print(f"{'backend':11} {'clients':34} {'created/s':>10} {'median ms':>10} {'p99 ms':>8}  failures")
    for results in all_results:
        for row in results.rates:
            failures = ", ".join(f"{count} x {failure}" for failure, count in sorted(row.failures.items()))
            print(
                f"{results.backend.name:11} {row.label:34} {row.per_second:10.1f}"
                f" {statistics.median(row.latencies_ms):10.2f} {nearest_rank(row.latencies_ms, 0.99):8.2f}"
                f"  {failures or 'none'}"
            )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help="also run on PostgreSQL: a scratch database is created on this server and dropped afterwards",
    )
    parser.add_argument("--upload-mb", type=positive, default=50, help="size of the large model file (MB)")
    parser.add_argument("--repetitions", type=positive, default=5, help="large uploads per route")
    parser.add_argument("--models", type=positive, default=1000, help="models in the listed project")
    parser.add_argument("--requests", type=positive, default=300, help="measured requests per list query")
    parser.add_argument("--versions", type=positive, default=200, help="small uploads per creation mode")
    parser.add_argument("--clients", type=positive, default=4, help="concurrent clients in the creation rate")
    parser.add_argument(
        "--version-kib", type=positive, default=10, help="size of the small version files (KiB)"
    )
    parser.add_argument("--workers", type=positive, default=1, help="worker processes of maestro serve")
    args = parser.parse_args()

    all_results = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maestro-bench-")))
        # The scratch database first, so a wrong URL fails before the long SQLite run.
        postgres = stack.enter_context(scratch_postgres(args.database_url)) if args.database_url else None
        backends = [Backend("sqlite", scratch / "sqlite", None, "embedded SQLite in a fresh data directory")]
        if postgres is not None:
            url, name = postgres
            host = make_url(url).render_as_string(hide_password=True)
            backends.append(
                Backend("postgresql", scratch / "postgresql", url, f"scratch database {name} ({host})")
            )
        for backend in backends:
            backend.data_dir.mkdir()
            all_results.append(run_backend(backend, args))
    print_results(all_results, args)


if __name__ == "__main__":
    main()
