"""Serving throughput and latency over HTTP: Maestro's platform inference against its
model server, each with its default and its tuned settings, and both against
``mlflow models serve``, with in-process prediction as the limit.

    .venv/bin/python bench/serving.py [--seconds 5] [--rounds 3] [--client auto|wrk|httpx]
        [--settings default,tuned] [--configs model-server,platform,platform-log-0,platform-first-5s]
        [--skip-model-server] [--skip-platform] [--skip-mlflow]
        [--models logreg,forest] [--rows 1,1000] [--concurrency 1,8] [--no-v2]
        [--isolation | --isolation-only]

Trains a LogisticRegression and a 100-tree RandomForest on 20 features, then measures,
with the same models and payloads, at concurrency 1 and 8, with 1-row and 1,000-row
bodies, these configurations:

- ``raw``: the loaded runtime's ``predict`` in this process (no HTTP; concurrency 1);
- ``model-server``: ``maestro model-server``, ``POST /api/v1/predict/{model}`` (1 row)
  and ``/api/v1/batch-predict`` (1,000 rows), and ``POST /v2/models/{name}/infer``
  (``/v2``). Its bodies ask for probabilities (``"return_probabilities": true``), as the
  platform always answers them, so both do the same work;
- ``platform``: ``maestro serve``, ``POST /api/v1/inference/{deployment}`` (1 row) and
  ``…/batch`` (1,000 rows), deployed with ``POST /api/v1/projects/{id}/deployments``,
  with every request in the prediction log (MAESTRO_PREDICTION_LOG_SAMPLE_RATE=1, the
  default);
- ``platform log 0%``: the same with MAESTRO_PREDICTION_LOG_SAMPLE_RATE=0;
- ``platform first 5 s``: on the ``platform`` server, a new version of the model is
  deployed in place (``PUT /api/v1/deployments/{id}``) and measured at once, with no
  warm-up, for 5 s (1 row at c=8, 1,000 rows at c=1); ``platform 5 s later`` is the same
  measurement right after it, the steady state it is compared with;
- ``mlflow``: ``mlflow models serve --env-manager local`` from ``bench/.venv-mlflow``
  (created with ``pip install mlflow scikit-learn`` when missing), ``POST /invocations``
  with ``inputs``.

Each Maestro server runs with each of two settings (``--settings``): ``default``, what a
user runs (MAESTRO_ACCESS_LOG and MAESTRO_LOG_LEVEL unset: an access-log line per request,
INFO; the server's output goes to a log file), and ``tuned`` (MAESTRO_ACCESS_LOG=false,
MAESTRO_LOG_LEVEL=WARNING). Rate limits are off in both (MAESTRO_RATE_LIMITS_ENABLED=false):
the bench floods one organisation. All the servers run at once and the configurations
take turns on each measurement, so drift in the machine's load spreads evenly over them;
each run starts once the previous one's server is idle again. Every cell is measured
``--rounds`` times (3) in turns and the median is reported, with the lowest and highest
requests/s beside it: on a shared 2-core machine one 5 s run of the same server can
differ from the next by a third, more than the margins the targets test.

With ``--isolation`` (or ``--isolation-only``) it also measures what isolating XGBoost
and LightGBM costs: a 100-tree booster of each, 1-row and 1,000-row bodies, ``raw``
(the runtime in this process) against ``isolated`` (the same model answering from its
isolated process through the sandbox's message format) and ``platform`` (``maestro
serve`` end to end, which serves them isolated); and the time the load check takes per
format (skops, ONNX, XGBoost, LightGBM: a fork from the zygote, loading, warming up and
trying extreme rows), with the memory it measured.

The load generator is ``wrk`` (one thread, a Lua script setting the body) when it is
installed, else a tight asyncio httpx client in a process of its own per run; the
script says which. It prints requests/s, rows/s, p50, p99, the server's CPU time per
request (user + system time of its processes, from /proc, over the run and until the
work it left behind, such as prediction logs, is done, divided by the requests answered:
steadier than throughput on a shared machine) and each server's ratio to MLflow's
throughput on the same model, rows and concurrency; then the targets, met or missed,
computed from the same run. Figures from a shared 2-core machine are noisy: compare
within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import orjson
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_VENV = ROOT / "bench" / ".venv-mlflow"
FEATURES = 20
KEY = "bench-operator-key-0123456789"
CONCURRENCY = (1, 8)
ROWS = (1, 1000)
MODELS = ("logreg", "forest")
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},  # what a user runs: the access log on, INFO
    "tuned": {"access_log": "false", "log_level": "WARNING"},
}
CONFIGS = ("model-server", "platform", "platform-log-0", "platform-first-5s")
FIRST_SECONDS = 5.0
FIRST_CELLS = ((1, 8), (1000, 1))  # (rows, concurrency) measured right after a deploy
# Shown nowhere: scratch paths, the bench's key and the models it preloads.
UNSHOWN_ENV = {
    "MAESTRO_DATA_DIR",
    "MAESTRO_MODEL_SERVER_MODELS_DIR",
    "MAESTRO_MODEL_SERVER_API_KEYS",
    "MAESTRO_MODEL_SERVER_PRELOAD",
}


@dataclass
class Result:
    target: str
    model: str
    rows: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    settings: str = ""
    cpu_ms: float | None = None  # the server's CPU time per request
    runs: int = 1  # measurements this result is the median of
    rps_low: float | None = None  # the lowest and highest of them
    rps_high: float | None = None


class Run(NamedTuple):
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


# --- load generators -------------------------------------------------------------------------
_WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
{headers}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> Run:
    with tempfile.TemporaryDirectory() as scratch:
        body_path = Path(scratch) / "body"
        body_path.write_bytes(body)
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(scratch) / "post.lua"
        script.write_text(_WRK_SCRIPT.format(body=body_path, headers=lines))
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(int(seconds), 1)}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Run(rps, p50, p99, int(errors.group(1)) if errors else 0, requests)


def _httpx_worker(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, out: Any
) -> None:
    async def scenario() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as client:
            deadline = time.perf_counter() + seconds

            async def loop() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    response = await client.post(url, content=body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += response.status_code >= 300

            began = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - began

    latencies, errors, elapsed = asyncio.run(scenario())
    latencies.sort()
    out.put(
        Run(
            len(latencies) / elapsed,
            statistics.median(latencies),
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            errors,
            len(latencies),
        )
    )


def run_httpx(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> Run:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_httpx_worker, args=(url, body, headers, concurrency, seconds, out))
    process.start()
    result = Run(*out.get(timeout=seconds + 120))
    process.join(30)
    return result


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants alive now, in seconds:
    isolated runtimes answer from child processes."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / _TICK
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(member, 0.0) for member in tree)


def settle(pid: int, timeout: float = 15.0) -> None:
    """Waits until the server has finished the work a run left behind (prediction logs
    still being written): it counts in that run's CPU time, not in the next run's."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last < 0.015:  # at most a clock tick in a quarter of a second
            return
        last = now


# --- servers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    url: str, timeout: float = 180.0, headers: dict[str, str] | None = None, process: Process | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            tail = process.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{process.log.name}: the server exited: {' | '.join(tail)}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


class Process:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.env = env
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def maestro_env(data_dir: Path, settings: str, **values: str) -> dict[str, str]:
    """The bench's configuration only (a developer's MAESTRO_* settings stay out): the
    ``settings``' logging, rate limits off, and ``values``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    chosen = {"rate_limits_enabled": "false", **SETTINGS[settings], **values}
    env["MAESTRO_DATA_DIR"] = str(data_dir)
    env.update({f"MAESTRO_{key.upper()}": value for key, value in chosen.items()})
    return env


def shown_env(env: dict[str, str]) -> str:
    shown = [
        f"{key}={value}"
        for key, value in sorted(env.items())
        if key.startswith("MAESTRO_") and key not in UNSHOWN_ENV
    ]
    if "MAESTRO_ACCESS_LOG" not in env and "MAESTRO_LOG_LEVEL" not in env:
        shown.append("(MAESTRO_ACCESS_LOG, MAESTRO_LOG_LEVEL unset: access log on, INFO)")
    return " ".join(shown)


def start_model_server(workdir: Path, settings: str) -> tuple[Process, str]:
    port = free_port()
    env = maestro_env(
        workdir / f"model-server-{settings}-data",
        settings,
        model_server_api_keys=KEY,
        model_server_models_dir=str(workdir / "models"),
        model_server_preload="logreg=file:logreg.skops,forest=file:forest.skops",
    )
    command = [sys.executable, "-m", "maestro", "model-server", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, env, workdir / f"model-server-{settings}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/v1/health", process=process)
    except RuntimeError:
        process.stop()
        raise
    return process, base


@dataclass
class Deployed:
    id: str
    name: str
    model_id: str


@dataclass
class Platform:
    process: Process
    base: str
    headers: dict[str, str]
    deployments: dict[str, Deployed]  # model name → its deployment

    def inference_url(self, model: str, rows: int) -> str:
        return f"{self.base}/api/v1/inference/{self.deployments[model].name}" + (
            "" if rows == 1 else "/batch"
        )

    def redeploy(self, model: str, filename: str, content: bytes) -> None:
        """A new version of ``model`` uploaded and deployed in place; returns once traffic
        has moved to it."""
        deployed = self.deployments[model]
        with httpx.Client(base_url=self.base, timeout=120, headers=self.headers) as http:
            version = (
                http.post(
                    f"/api/v1/models/{deployed.model_id}/versions", files={"model_file": (filename, content)}
                )
                .raise_for_status()
                .json()["data"]
            )
            http.put(
                f"/api/v1/deployments/{deployed.id}",
                json={"model_version_id": version["id"], "reason": "bench: the first seconds after a deploy"},
            ).raise_for_status()


def start_platform(
    workdir: Path,
    files: dict[str, tuple[str, bytes]] | None = None,
    settings: str = "tuned",
    label: str = "platform",
    **values: str,
) -> Platform | str:
    """The platform with the models deployed (by default both scikit-learn models, from
    their skops files; ``files``: name → (file name, bytes)); or why it was skipped."""
    if files is None:
        files = {
            name: (f"{name}.skops", (workdir / "models" / f"{name}.skops").read_bytes()) for name in MODELS
        }
    port = free_port()
    env = maestro_env(
        workdir / f"{label}-data",
        settings,
        access_token_ttl_seconds="7200",  # noqa: S106 - a lifetime, not a secret
        **{"run_worker_in_process": "false", **values},
    )
    command = [sys.executable, "-m", "maestro", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, env, workdir / f"{label}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", process=process)
        paths = httpx.get(f"{base}/api/v1/openapi.json", timeout=30).json()["paths"]
        if "/api/v1/inference/{deployment_name}" not in paths:
            process.stop()
            return "the platform's OpenAPI document has no /api/v1/inference/{deployment_name}"
        with httpx.Client(base_url=base, timeout=120) as http:
            tokens = (
                http.post(
                    "/api/v1/auth/register",
                    json={
                        "email": "bench@example.com",
                        "password": "bench-password-1",
                        "organization_name": "Bench",
                    },
                )
                .raise_for_status()
                .json()["data"]
            )
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            org = tokens["user"]["current_organization"]["id"]
            project = (
                http.post(f"/api/v1/organizations/{org}/projects", json={"name": "Bench"}, headers=headers)
                .raise_for_status()
                .json()["data"]["id"]
            )
            deployments = {}
            for name, (filename, content) in files.items():
                model = (
                    http.post(
                        f"/api/v1/projects/{project}/models",
                        json={"name": name, "model_type": "classification"},
                        headers=headers,
                    )
                    .raise_for_status()
                    .json()["data"]
                )
                version = (
                    http.post(
                        f"/api/v1/models/{model['id']}/versions",
                        files={"model_file": (filename, content)},
                        headers=headers,
                    )
                    .raise_for_status()
                    .json()["data"]
                )
                deployment = (
                    http.post(
                        f"/api/v1/projects/{project}/deployments",
                        json={"name": f"bench-{name}", "model_version_id": version["id"]},
                        headers=headers,
                    )
                    .raise_for_status()
                    .json()["data"]
                )
                deployments[name] = Deployed(deployment["id"], deployment["name"], model["id"])
        return Platform(process, base, headers, deployments)
    except Exception as exc:
        process.stop()
        return f"the platform could not be set up ({type(exc).__name__}: {str(exc)[:200]})"


def ensure_mlflow_venv() -> Path:
    python = MLFLOW_VENV / "bin" / "python"
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        import sklearn

        print(
            f"creating {MLFLOW_VENV} (pip install mlflow scikit-learn=={sklearn.__version__}) …", flush=True
        )
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "mlflow", f"scikit-learn=={sklearn.__version__}"],
            check=True,
        )
    return python


def save_mlflow_models(workdir: Path, models: dict[str, Any]) -> None:
    python = ensure_mlflow_venv()
    for name, model in models.items():
        pickled = workdir / f"{name}.pkl"
        pickled.write_bytes(pickle.dumps(model))
        script = (
            "import inspect, pickle, sys, mlflow.sklearn\n"
            "model = pickle.load(open(sys.argv[1], 'rb'))\n"  # this script's own file
            "options = inspect.signature(mlflow.sklearn.save_model).parameters\n"
            "trusted = ['sklearn.tree._tree.Tree']\n"
            "extra = {'skops_trusted_types': trusted} if 'skops_trusted_types' in options else {}\n"
            "mlflow.sklearn.save_model(model, sys.argv[2], **extra)\n"
        )
        subprocess.run(
            [str(python), "-c", script, str(pickled), str(workdir / f"mlflow-{name}")],
            check=True,
            capture_output=True,
        )


def start_mlflow(workdir: Path, name: str) -> tuple[Process, str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    env["PATH"] = f"{MLFLOW_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # it runs the venv's uvicorn
    command = [
        str(MLFLOW_VENV / "bin" / "mlflow"),
        "models",
        "serve",
        "-m",
        str(workdir / f"mlflow-{name}"),
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    process = Process(command, env, workdir / f"mlflow-{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/ping", process=process)
    except RuntimeError:
        process.stop()
        raise
    return process, base


# --- measuring ---------------------------------------------------------------------------------
def body_for(kind: str, batch: np.ndarray, model: str) -> bytes:
    """The request body for ``batch`` in the protocol ``kind`` names."""
    if kind == "maestro":  # one row to /predict/{model}; a batch names its model in the body
        if len(batch) == 1:
            return orjson.dumps({"features": batch[0].tolist(), "return_probabilities": True})
        return orjson.dumps({"features": batch.tolist(), "model_name": model, "return_probabilities": True})
    if kind == "v2":  # no outputs named: the labels and the probabilities
        tensor = {
            "name": "input",
            "shape": list(batch.shape),
            "datatype": "FP64",
            "data": batch.ravel().tolist(),
        }
        return orjson.dumps({"inputs": [tensor]})
    return orjson.dumps({"instances" if kind == "platform" else "inputs": batch.tolist()})


@dataclass
class Target:
    """One way in to a server under test, in one configuration and settings."""

    name: str
    settings: str
    url_for: Callable[[str, int], str]  # (model, rows) → URL
    kind: str  # the body's protocol, for body_for
    headers: dict[str, str]
    pid: int | None = None  # the server's process, for its CPU time


@dataclass
class Bench:
    load: Callable[[str, bytes, dict[str, str], int, float], Run]
    seconds: float
    batches: dict[int, np.ndarray]
    results: list[Result] = field(default_factory=list)

    def answers(self, target: Target, model: str, rows: int) -> bool:
        """Whether one request succeeds; if not, says why."""
        body = body_for(target.kind, self.batches[rows], model)
        response = httpx.post(target.url_for(model, rows), content=body, headers=target.headers, timeout=60)
        if response.status_code != 200:
            print(f"  {target.name} {model} {rows} rows: HTTP {response.status_code} {response.text[:200]}")
        return response.status_code == 200

    def run(
        self,
        target: Target,
        model: str,
        rows: int,
        concurrency: int,
        *,
        seconds: float | None = None,
        warm_up: bool = True,
        name: str | None = None,
    ) -> Result:
        body = body_for(target.kind, self.batches[rows], model)
        url = target.url_for(model, rows)
        if warm_up:
            self.load(url, body, target.headers, concurrency, 1.0)
            if target.pid:
                settle(target.pid)
        cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
        run = self.load(url, body, target.headers, concurrency, seconds or self.seconds)
        cpu_ms = None
        if target.pid:
            settle(target.pid)
            if run.requests:
                cpu_ms = (cpu_seconds(target.pid) - cpu_before) * 1000 / run.requests
        result = Result(
            name or target.name,
            model,
            rows,
            concurrency,
            run.rps,
            run.p50_ms,
            run.p99_ms,
            run.errors,
            target.settings,
            cpu_ms,
        )
        self.results.append(result)
        cpu = f" CPU {cpu_ms:6.3f} ms/req" if cpu_ms is not None else ""
        print(
            f"  {result.target:<20} {result.settings:<8} {model:<8} {rows:>5} rows c={concurrency}: "
            f"{run.rps:8.1f} req/s p50 {run.p50_ms:7.2f} ms p99 {run.p99_ms:7.2f} ms{cpu}",
            flush=True,
        )
        return result

    def grid(
        self,
        targets: list[Target],
        models: list[str],
        rows_run: list[int],
        concurrency: list[int],
        rounds: int = 1,
    ) -> None:
        """Every model, rows and concurrency on every target, the targets taking turns on
        each measurement; ``rounds`` times over, so that a slow moment of the machine falls
        on one measurement of each, not on all of one target's."""
        ready = {
            (model, rows): [target for target in targets if self.answers(target, model, rows)]
            for model in models
            for rows in rows_run
        }
        for _ in range(rounds):
            for model in models:
                for rows in rows_run:
                    for clients in concurrency:
                        for target in ready[(model, rows)]:
                            self.run(target, model, rows, clients)

    def first_seconds(self, platform: Platform, target: Target, model: str, rows_run: list[int]) -> None:
        """A new version deployed and measured at once, then the same again 5 s later."""
        for rows, concurrency in FIRST_CELLS:
            if rows not in rows_run:
                continue
            seed = 100 + sum(r.target == "platform first 5 s" for r in self.results)
            platform.redeploy(model, f"{model}-v{seed}.skops", sio.dumps(fit(model, seed)))
            self.run(
                target,
                model,
                rows,
                concurrency,
                seconds=FIRST_SECONDS,
                warm_up=False,
                name="platform first 5 s",
            )
            self.run(target, model, rows, concurrency, seconds=FIRST_SECONDS, name="platform 5 s later")


# --- the run -------------------------------------------------------------------------------------
def fit(name: str, seed: int) -> Any:
    """``name`` trained on data drawn from ``seed``: another seed, another version."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(5000, FEATURES))
    labels = (
        matrix[:, 0] + 0.5 * matrix[:, 1] - 0.8 * matrix[:, 2] + rng.normal(scale=0.5, size=5000) > 0
    ).astype(int)
    if name == "logreg":
        return LogisticRegression(max_iter=1000).fit(matrix, labels)
    return RandomForestClassifier(n_estimators=100, random_state=seed).fit(matrix, labels)


def train() -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {name: fit(name, 0) for name in MODELS}, {rows: rng.normal(size=(rows, FEATURES)) for rows in ROWS}


def raw_results(workdir: Path, batches: dict[int, np.ndarray], seconds: float) -> list[Result]:
    from maestro.runtimes import load_runtime

    results = []
    for name in MODELS:
        runtime = load_runtime((workdir / "models" / f"{name}.skops").read_bytes(), format="skops")
        for rows, batch in batches.items():
            for _ in range(20):
                runtime.predict(batch)
            samples: list[float] = []
            deadline = time.perf_counter() + min(seconds, 2.0)
            while time.perf_counter() < deadline or len(samples) < 50:
                started = time.perf_counter()
                runtime.predict(batch)
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            results.append(
                Result(
                    "raw",
                    name,
                    rows,
                    1,
                    1000 / statistics.mean(samples),
                    statistics.median(samples),
                    samples[int(len(samples) * 0.99)],
                )
            )
    return results


# --- isolation of XGBoost and LightGBM ---------------------------------------------------------
def tree_models(matrix: np.ndarray, labels: np.ndarray, workdir: Path) -> dict[str, tuple[str, bytes]]:
    """100-tree boosters on the same data: name → (format, file)."""
    import lightgbm
    import xgboost

    booster = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1, n_jobs=1).fit(
        matrix, labels
    )
    xgboost.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1).fit(matrix, labels).save_model(
        workdir / "xgboost.json"
    )
    return {
        "lightgbm": ("lightgbm-txt", booster.booster_.model_to_string().encode()),
        "xgboost": ("xgboost-json", (workdir / "xgboost.json").read_bytes()),
    }


def _timed(call: Callable[[], Any], seconds: float) -> tuple[float, float, float]:
    for _ in range(20):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + min(seconds, 2.0)
    while time.perf_counter() < deadline or len(samples) < 50:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return 1000 / statistics.mean(samples), statistics.median(samples), samples[int(len(samples) * 0.99)]


def isolation_results(
    workdir: Path, files: dict[str, tuple[str, bytes]], batches: dict[int, np.ndarray], seconds: float
) -> list[Result]:
    """The same booster answering in this process and from its isolated process."""
    from maestro.config import Settings
    from maestro.runtimes import load_runtime
    from maestro.runtimes.isolation import IsolatedRuntime, Isolation

    isolation = Isolation.from_settings(Settings(_env_file=None, data_dir=workdir / "isolation-data"))  # type: ignore[call-arg]
    results = []
    for name, (fmt, content) in files.items():
        here = load_runtime(content, format=fmt)
        isolated = IsolatedRuntime(content, format=fmt, isolation=isolation)
        try:
            for rows, batch in batches.items():
                for target, runtime in (("raw", here), ("isolated", isolated)):
                    rps, p50, p99 = _timed(lambda r=runtime, b=batch: r.predict_with_proba(b), seconds)
                    results.append(Result(target, name, rows, 1, rps, p50, p99))
                    print(f"  {target:<18} {name:<8} {rows:>5} rows c=1: {rps:8.1f} req/s p50 {p50:7.3f} ms")
        finally:
            isolated.close()
    return results


def check_times(workdir: Path, files: dict[str, tuple[str, bytes]], repeats: int = 3) -> None:
    """How long the load check takes per format, and what it measured."""
    from maestro.config import Settings
    from maestro.runtimes.isolation import Isolation, check_model

    isolation = Isolation.from_settings(Settings(_env_file=None, data_dir=workdir / "isolation-data"))  # type: ignore[call-arg]
    print()
    print(f"{'load check':<14} {'file bytes':>11} {'first s':>8} {'median s':>9} {'memory MiB':>11}  serving")
    for name, (fmt, content) in files.items():
        seconds, check = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            check = check_model(content, format=fmt, isolation=isolation)
            seconds.append(time.perf_counter() - started)
        assert check is not None
        memory = f"{(check.memory_bytes or 0) / 1024**2:11.1f}" if check.passed else f"{check.reason:>11}"
        print(
            f"{name:<14} {len(content):>11,} {seconds[0]:>8.3f} {statistics.median(seconds):>9.3f} "
            f"{memory}  {check.serving or ''}"
        )


def run_isolation(
    workdir: Path,
    models: dict[str, Any],
    bench: Bench,
    rows_run: list[int],
    concurrency: list[int],
    skip_platform: bool,
) -> None:
    """Isolated boosters against the same ones in this process, and on the platform
    (tuned settings)."""
    from skl2onnx import to_onnx

    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(5000, FEATURES))
    labels = (matrix[:, 0] - matrix[:, 3] > 0).astype(int)
    trees = tree_models(matrix, labels, workdir)
    print("isolation of XGBoost and LightGBM (100 trees each):", flush=True)
    bench.results += isolation_results(workdir, trees, bench.batches, bench.seconds)
    if not skip_platform:
        files = {name: (f"{name}.model", content) for name, (_fmt, content) in trees.items()}
        platform = start_platform(workdir, files, label="platform-isolation")
        if isinstance(platform, str):
            print(f"  platform: skipped: {platform}", flush=True)
        else:
            target = Target(
                "platform",
                "tuned",
                platform.inference_url,
                "platform",
                {"Content-Type": "application/json", **platform.headers},
                platform.process.pid,
            )
            try:
                bench.grid([target], list(trees), rows_run, concurrency)
            finally:
                platform.process.stop()
    check_times(
        workdir,
        {
            "skops logreg": ("skops", sio.dumps(models["logreg"])),
            "skops forest": ("skops", sio.dumps(models["forest"])),
            "onnx logreg": (
                "onnx",
                to_onnx(
                    models["logreg"], matrix[:1].astype(np.float32), options={"zipmap": False}
                ).SerializeToString(),
            ),
            **{f"{name} 100 trees": trees[name] for name in trees},
        },
    )


def start_targets(
    workdir: Path, configs: list[str], settings_run: list[str], v2: bool
) -> tuple[list[Target], dict[str, tuple[Platform, Target]], list[Process]]:
    """The servers each configuration needs, for each settings, all running; the targets
    to measure, the platforms to redeploy on (by settings) and the processes to stop."""
    json_headers = {"Content-Type": "application/json"}
    targets: list[Target] = []
    redeployable: dict[str, tuple[Platform, Target]] = {}
    processes: list[Process] = []
    print("configurations (each on a scratch MAESTRO_DATA_DIR of its own):", flush=True)
    for config in configs:
        for settings in settings_run:
            if config == "model-server":
                process, base = start_model_server(workdir, settings)
                processes.append(process)
                keyed = {**json_headers, "X-API-Key": KEY}
                targets.append(
                    Target(
                        "model-server",
                        settings,
                        lambda model, rows, b=base: (
                            f"{b}/api/v1/predict/{model}" if rows == 1 else f"{b}/api/v1/batch-predict"
                        ),
                        "maestro",
                        keyed,
                        process.pid,
                    )
                )
                if v2:
                    targets.append(
                        Target(
                            "model-server /v2",
                            settings,
                            lambda model, _rows, b=base: f"{b}/v2/models/{model}/infer",
                            "v2",
                            keyed,
                            process.pid,
                        )
                    )
            elif config == "platform-first-5s" and settings in redeployable:
                process = redeployable[settings][0].process
            else:
                name, rate = ("platform log 0%", "0") if config == "platform-log-0" else ("platform", "1")
                platform = start_platform(
                    workdir, settings=settings, label=f"{config}-{settings}", prediction_log_sample_rate=rate
                )
                if isinstance(platform, str):
                    print(f"  {config:<20} {settings:<8} skipped: {platform}", flush=True)
                    continue
                process = platform.process
                processes.append(process)
                target = Target(
                    name,
                    settings,
                    platform.inference_url,
                    "platform",
                    {**json_headers, **platform.headers},
                    process.pid,
                )
                if config != "platform-first-5s":
                    targets.append(target)
                if config != "platform-log-0":
                    redeployable[settings] = (platform, target)
            print(f"  {config:<20} {settings:<8} {shown_env(process.env)}", flush=True)
    return targets, redeployable, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements of each cell, taken in turns; the median is shown"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="comma-separated subset of default,tuned"
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}"
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-platform", action="store_true", help="no platform-* configurations")
    parser.add_argument("--skip-model-server", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of logreg,forest")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated subset of 1,1000")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="subset of 1,8")
    parser.add_argument("--no-v2", action="store_true", help="skip the model server's /v2 protocol runs")
    parser.add_argument("--isolation", action="store_true", help="also measure isolated XGBoost and LightGBM")
    parser.add_argument(
        "--isolation-only", action="store_true", help="measure only isolation and load checks"
    )
    args = parser.parse_args()
    if args.isolation_only:
        args.isolation = args.skip_mlflow = args.skip_model_server = True
        args.concurrency = "1"
    models_run = [name for name in args.models.split(",") if name]
    rows_run = [int(rows) for rows in args.rows.split(",") if rows]
    concurrency_run = [int(c) for c in args.concurrency.split(",") if c]
    settings_run = [name for name in args.settings.split(",") if name]
    configs = [name for name in args.configs.split(",") if name]
    if not set(models_run) <= set(MODELS) or not set(rows_run) <= set(ROWS):
        parser.error(f"--models takes {', '.join(MODELS)}; --rows takes {', '.join(map(str, ROWS))}")
    if not set(settings_run) <= set(SETTINGS) or not set(configs) <= set(CONFIGS):
        parser.error(f"--settings takes {', '.join(SETTINGS)}; --configs takes {', '.join(CONFIGS)}")
    configs = [
        config
        for config in CONFIGS
        if config in configs
        and not (args.isolation_only or (args.skip_model_server and config == "model-server"))
        and not (args.skip_platform and config.startswith("platform"))
    ]
    warnings.simplefilter("ignore")
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    print(
        "load generator: "
        + ("wrk (1 thread, Lua body)" if use_wrk else "asyncio httpx client, one process per run")
        + f"; {args.seconds:g} s per run after a 1 s warm-up; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    models, batches = train()
    workdir = Path(tempfile.mkdtemp(prefix="maestro-bench-serving-"))
    (workdir / "models").mkdir()
    for name, model in models.items():
        (workdir / "models" / f"{name}.skops").write_bytes(sio.dumps(model))
    bench = Bench(run_wrk if use_wrk else run_httpx, args.seconds, batches)
    if not args.isolation_only:
        bench.results += [
            r
            for r in raw_results(workdir, batches, args.seconds)
            if r.model in models_run and r.rows in rows_run
        ]

    targets, redeployable, processes = start_targets(workdir, configs, settings_run, not args.no_v2)
    try:
        bench.grid(targets, models_run, rows_run, concurrency_run, rounds=args.rounds)
        if "platform-first-5s" in configs:
            for _ in range(args.rounds):
                for platform, target in redeployable.values():
                    for name in models_run:
                        bench.first_seconds(platform, target, name, rows_run)
    finally:
        for process in processes:
            process.stop()

    if args.isolation:
        run_isolation(workdir, models, bench, rows_run, concurrency_run, args.skip_platform)

    if not args.skip_mlflow:
        try:
            save_mlflow_models(workdir, {name: models[name] for name in models_run})
            for name in models_run:
                process, mlflow_base = start_mlflow(workdir, name)
                mlflow = Target(
                    "mlflow",
                    "",
                    lambda _model, _rows, b=mlflow_base: f"{b}/invocations",
                    "mlflow",
                    {"Content-Type": "application/json"},
                    process.pid,
                )
                try:
                    bench.grid([mlflow], [name], rows_run, concurrency_run)
                finally:
                    process.stop()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"mlflow: skipped ({exc})", flush=True)
    results = medians(bench.results)
    report(results)
    targets_met(results, settings_run)
    mlflow_targets(results, settings_run)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    shutil.rmtree(workdir, ignore_errors=True)


def medians(results: list[Result]) -> list[Result]:
    """One result per target, settings and cell: the median of its measurements, with
    the lowest and highest requests/s beside it."""
    groups: dict[tuple[str, str, str, int, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.target, r.settings, r.model, r.rows, r.concurrency), []).append(r)
    collapsed = []
    for (target, settings, model, rows, concurrency), runs in groups.items():
        cpus = [r.cpu_ms for r in runs if r.cpu_ms is not None]
        collapsed.append(
            Result(
                target,
                model,
                rows,
                concurrency,
                statistics.median(r.rps for r in runs),
                statistics.median(r.p50_ms for r in runs),
                statistics.median(r.p99_ms for r in runs),
                sum(r.errors for r in runs),
                settings,
                statistics.median(cpus) if cpus else None,
                len(runs),
                min(r.rps for r in runs),
                max(r.rps for r in runs),
            )
        )
    return collapsed


def report(results: list[Result]) -> None:
    """Every result, grouped by model, rows and concurrency."""
    mlflow = {(r.model, r.rows, r.concurrency): r for r in results if r.target == "mlflow"}
    first_seen = {model: index for index, model in reversed(list(enumerate(r.model for r in results)))}
    ordered = sorted(results, key=lambda r: (first_seen[r.model], r.rows, r.concurrency))
    print()
    print(
        f"{'target':<20} {'settings':<8} {'model':<8} {'rows':>5} {'c':>2} {'req/s':>9} {'rows/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} {'x mlflow':>9}  req/s lowest-highest"
    )
    previous = None
    for r in ordered:
        cell = (r.model, r.rows, r.concurrency)
        if previous is not None and cell != previous:
            print()
        previous = cell
        base = mlflow.get(cell)
        ratio = f"{r.rps / base.rps:8.1f}x" if base and r.target != "mlflow" else ""
        cpu = f"{r.cpu_ms:10.3f}" if r.cpu_ms is not None else ""
        errors = f"  ({r.errors} errors)" if r.errors else ""
        spread = f"  {r.rps_low:,.0f}-{r.rps_high:,.0f} ({r.runs} runs)" if r.runs > 1 else ""
        print(
            f"{r.target:<20} {r.settings:<8} {r.model:<8} {r.rows:>5} {r.concurrency:>2} {r.rps:>9.1f} "
            f"{r.rps * r.rows:>11,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {cpu:>10} {ratio:>9}{spread}{errors}"
        )


def _verdict(met: bool) -> str:
    return "met   " if met else "MISSED"


def _cpu(r: Result) -> str:
    return f"{r.cpu_ms:.3f}" if r.cpu_ms is not None else "?"


def targets_met(results: list[Result], settings_run: list[str]) -> None:
    """The targets, from this run's figures; a target whose figures were not measured is
    left out."""
    cells = {(r.target, r.settings, r.model, r.rows, r.concurrency): r for r in results}
    models = [m for m in MODELS if any(r.model == m for r in results)]
    sections: list[tuple[str, list[str]]] = []

    def section(title: str) -> None:
        sections.append((title, []))

    def line(label: str, met: bool, figures: str) -> None:
        sections[-1][1].append(f"   {label:<34} {_verdict(met)} {figures}")

    section("1. default settings within 10 % of tuned (access log off): req/s default/tuned, 1 row c=8")
    for model in models:
        for target in ("model-server", "platform"):
            default = cells.get((target, "default", model, 1, 8))
            tuned = cells.get((target, "tuned", model, 1, 8))
            if default and tuned:
                ratio = default.rps / tuned.rps
                line(
                    f"{target} {model}",
                    ratio >= 0.9,
                    f"{ratio:.2f} ({default.rps:,.0f} / {tuned.rps:,.0f} req/s; "
                    f"CPU {_cpu(default)} / {_cpu(tuned)} ms/req)",
                )
    section("2. platform 1-row req/s ≥ 80 % of the model server's (prediction log 100 %)")
    for settings in settings_run:
        for model in models:
            for concurrency in CONCURRENCY:
                platform = cells.get(("platform", settings, model, 1, concurrency))
                server = cells.get(("model-server", settings, model, 1, concurrency))
                if platform and server:
                    ratio = platform.rps / server.rps
                    line(
                        f"{settings} {model} c={concurrency}",
                        ratio >= 0.8,
                        f"{ratio:.2f} ({platform.rps:,.0f} / {server.rps:,.0f} req/s; "
                        f"CPU {_cpu(platform)} / {_cpu(server)} ms/req)",
                    )
    section("3. platform p99 < 20 ms at 1 row c=8, prediction log 100 %")
    for settings in settings_run:
        for model in models:
            platform = cells.get(("platform", settings, model, 1, 8))
            if platform:
                line(f"{settings} {model}", platform.p99_ms < 20, f"p99 {platform.p99_ms:.2f} ms")
    section("4. the first 5 s after a deploy within 20 % of 5 s later: req/s first/later")
    for settings in settings_run:
        for model in models:
            for rows, concurrency in FIRST_CELLS:
                first = cells.get(("platform first 5 s", settings, model, rows, concurrency))
                later = cells.get(("platform 5 s later", settings, model, rows, concurrency))
                if first and later:
                    ratio = first.rps / later.rps
                    line(
                        f"{settings} {model} {rows:,} row{'s' if rows > 1 else ''} c={concurrency}",
                        ratio >= 0.8 and not first.errors,
                        f"{ratio:.2f} ({first.rps:,.0f} / {later.rps:,.0f} req/s; "
                        f"p99 {first.p99_ms:.2f} / {later.p99_ms:.2f} ms"
                        + (f"; {first.errors} errors" if first.errors else "")
                        + ")",
                    )
    section("5. platform 1,000-row rows/s ≥ 80 % of the model server's (prediction log 100 %)")
    for settings in settings_run:
        for model in models:
            for concurrency in CONCURRENCY:
                platform = cells.get(("platform", settings, model, 1000, concurrency))
                server = cells.get(("model-server", settings, model, 1000, concurrency))
                if platform and server:
                    ratio = platform.rps / server.rps
                    line(
                        f"{settings} {model} c={concurrency}",
                        ratio >= 0.8,
                        f"{ratio:.2f} ({platform.rps * 1000:,.0f} / {server.rps * 1000:,.0f} rows/s)",
                    )
    if not any(lines for _title, lines in sections):
        return
    print()
    print("targets:")
    for title, lines in sections:
        print(title)
        for text in lines or ["   not measured in this run"]:
            print(text)


def mlflow_targets(results: list[Result], settings_run: list[str]) -> None:
    """The model server against MLflow, with the tuned settings when they were measured."""
    settings = "tuned" if "tuned" in settings_run else settings_run[0] if settings_run else ""
    models = [m for m in MODELS if any(r.model == m for r in results)]
    mlflow = {(r.model, r.rows, r.concurrency): r for r in results if r.target == "mlflow"}
    server = {
        (r.model, r.rows, r.concurrency): r
        for r in results
        if r.target == "model-server" and r.settings == settings
    }
    checks = [
        ("≥ 5x MLflow's throughput at 1 row, c=8", [(m, 1, 8) for m in models]),
        ("≥ 5x MLflow's rows/s at 1,000 rows", [(m, 1000, c) for m in models for c in CONCURRENCY]),
    ]
    for label, keys in checks:
        ratios = [server[k].rps / mlflow[k].rps for k in keys if k in server and k in mlflow]
        if ratios:
            print(
                f"target {label} ({settings} model server): "
                f"{'met' if min(ratios) >= 5 else 'MISSED'} (lowest {min(ratios):.1f}x)"
            )
    logreg = server.get(("logreg", 1, 1))
    if logreg:
        print(
            f"target p50 < 3 ms, 1-row LogisticRegression on the {settings} model server: "
            f"{'met' if logreg.p50_ms < 3 else 'MISSED'} ({logreg.p50_ms:.2f} ms at c=1)"
        )


if __name__ == "__main__":
    main()
