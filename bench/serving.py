"""Serving throughput and latency over HTTP: Maestro's model server and platform against
``mlflow models serve``, with in-process prediction as the limit.

    .venv/bin/python bench/serving.py [--seconds 5] [--client auto|wrk|httpx]
        [--skip-model-server] [--skip-platform] [--skip-mlflow]
        [--models logreg,forest] [--rows 1,1000] [--concurrency 1,8] [--no-v2]

Trains a LogisticRegression and a 100-tree RandomForest on 20 features, then measures,
with the same models and payloads, at concurrency 1 and 8, with 1-row and 1,000-row
bodies:

- ``raw``: the loaded runtime's ``predict`` in this process (no HTTP; concurrency 1);
- ``model-server``: ``maestro model-server``, ``POST /api/v1/predict`` (1 row) and
  ``/api/v1/batch-predict`` (1,000 rows), and ``POST /v2/models/{name}/infer``;
- ``platform``: ``maestro serve``, ``POST /api/v1/inference/{deployment}``, deployed with
  ``POST /api/v1/projects/{id}/deployments`` (skipped when the platform's OpenAPI
  document has no such route);
- ``mlflow``: ``mlflow models serve --env-manager local`` from ``bench/.venv-mlflow``
  (created with ``pip install mlflow scikit-learn`` when missing), ``POST /invocations``
  with ``inputs``.

With ``--isolation`` (or ``--isolation-only``) it also measures what isolating XGBoost
and LightGBM costs: a 100-tree booster of each, 1-row and 1,000-row bodies, ``raw``
(the runtime in this process) against ``isolated`` (the same model answering from its
isolated process through the sandbox's message format) and ``platform`` (``maestro
serve`` end to end, which serves them isolated); and the time the load check takes per
format (skops, ONNX, XGBoost, LightGBM: a fork from the zygote, loading, warming up and
trying extreme rows), with the memory it measured.

The load generator is ``wrk`` (one thread, a Lua script setting the body) when it is
installed, else a tight asyncio httpx client in a process of its own per run; the
script says which. It prints requests/s, rows/s, p50 and p99, and each server's ratio
to MLflow's throughput on the same model, rows and concurrency. Figures from a shared
2-core machine are noisy: compare within one run.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def run_wrk(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
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
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


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
        (
            len(latencies) / elapsed,
            statistics.median(latencies),
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            errors,
        )
    )


def run_httpx(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_httpx_worker, args=(url, body, headers, concurrency, seconds, out))
    process.start()
    result = out.get(timeout=seconds + 120)
    process.join(30)
    return result


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
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def maestro_env(data_dir: Path, **values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    env.update(
        {
            "MAESTRO_DATA_DIR": str(data_dir),
            "MAESTRO_RATE_LIMITS_ENABLED": "false",
            "MAESTRO_ACCESS_LOG": "false",
            "MAESTRO_LOG_LEVEL": "WARNING",
            **{f"MAESTRO_{key.upper()}": value for key, value in values.items()},
        }
    )
    return env


def start_model_server(workdir: Path) -> tuple[Process, str]:
    port = free_port()
    env = maestro_env(
        workdir / "model-server-data",
        model_server_api_keys=KEY,
        model_server_models_dir=str(workdir / "models"),
        model_server_preload="logreg=file:logreg.skops,forest=file:forest.skops",
    )
    command = [sys.executable, "-m", "maestro", "model-server", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, env, workdir / "model-server.log")
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/api/v1/health", process=process)
    return process, base


def start_platform(
    workdir: Path, files: dict[str, tuple[str, bytes]] | None = None
) -> tuple[Process, str, dict[str, str], dict[str, str]] | str:
    """The platform with the models deployed (by default both scikit-learn models, from
    their skops files; ``files``: name → (file name, bytes)); or why it was skipped."""
    if files is None:
        files = {
            name: (f"{name}.skops", (workdir / "models" / f"{name}.skops").read_bytes()) for name in MODELS
        }
    port = free_port()
    env = maestro_env(
        workdir / "platform-data",
        access_token_ttl_seconds="7200",  # noqa: S106 - a lifetime, not a secret
        run_worker_in_process="false",
    )
    command = [sys.executable, "-m", "maestro", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(command, env, workdir / "platform.log")
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
            names = {}
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
                names[name] = deployment["name"]
        return process, base, headers, names
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


# --- the run -------------------------------------------------------------------------------------
def train() -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(5000, FEATURES))
    labels = (
        matrix[:, 0] + 0.5 * matrix[:, 1] - 0.8 * matrix[:, 2] + rng.normal(scale=0.5, size=5000) > 0
    ).astype(int)
    models = {
        "logreg": LogisticRegression(max_iter=1000).fit(matrix, labels),
        "forest": RandomForestClassifier(n_estimators=100, random_state=0).fit(matrix, labels),
    }
    return models, {rows: rng.normal(size=(rows, FEATURES)) for rows in ROWS}


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
    batches: dict[int, np.ndarray],
    seconds: float,
    measure: Callable[..., None],
    skip_platform: bool,
) -> list[Result]:
    from skl2onnx import to_onnx

    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(5000, FEATURES))
    labels = (matrix[:, 0] - matrix[:, 3] > 0).astype(int)
    trees = tree_models(matrix, labels, workdir)
    print("isolation of XGBoost and LightGBM (100 trees each):", flush=True)
    results = isolation_results(workdir, trees, batches, seconds)
    if not skip_platform:
        files = {name: (f"{name}.model", content) for name, (_fmt, content) in trees.items()}
        started = start_platform(workdir, files)
        if isinstance(started, str):
            print(f"  platform: skipped: {started}", flush=True)
        else:
            process, base, headers, deployments = started
            try:
                for name in trees:
                    measure(
                        "platform",
                        name,
                        lambda rows, n=name: (
                            f"{base}/api/v1/inference/{deployments[n]}" + ("" if rows == 1 else "/batch")
                        ),
                        "platform",
                        {"Content-Type": "application/json", **headers},
                    )
            finally:
                process.stop()
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
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-platform", action="store_true")
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
    if not set(models_run) <= set(MODELS) or not set(rows_run) <= set(ROWS):
        parser.error(f"--models takes {', '.join(MODELS)}; --rows takes {', '.join(map(str, ROWS))}")
    warnings.simplefilter("ignore")
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    load: Callable[..., tuple[float, float, float, int]] = run_wrk if use_wrk else run_httpx
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

    def body_for(kind: str, rows: int, model: str) -> bytes:
        batch = batches[rows]
        if kind == "maestro":  # one row to /predict/{model}; a batch names its model in the body
            if rows == 1:
                return orjson.dumps({"features": batch[0].tolist()})
            return orjson.dumps({"features": batch.tolist(), "model_name": model})
        if kind == "v2":
            tensor = {
                "name": "input",
                "shape": list(batch.shape),
                "datatype": "FP64",
                "data": batch.ravel().tolist(),
            }
            return orjson.dumps({"inputs": [tensor]})
        return orjson.dumps({"instances" if kind == "platform" else "inputs": batch.tolist()})

    results = [
        r
        for r in ([] if args.isolation_only else raw_results(workdir, batches, args.seconds))
        if r.model in models_run and r.rows in rows_run
    ]

    def measure(
        target: str, model: str, url_for: Callable[[int], str], kind: str, headers: dict[str, str]
    ) -> None:
        for rows in rows_run:
            body = body_for(kind, rows, model)
            url = url_for(rows)
            check = httpx.post(url, content=body, headers=headers, timeout=60)
            if check.status_code != 200:
                print(
                    f"  {target} {model} {rows} rows: HTTP {check.status_code} {check.text[:200]}", flush=True
                )
                continue
            for concurrency in concurrency_run:
                load(url, body, headers, concurrency, 1.0)  # warm-up
                rps, p50, p99, errors = load(url, body, headers, concurrency, args.seconds)
                results.append(Result(target, model, rows, concurrency, rps, p50, p99, errors))
                print(
                    f"  {target:<18} {model:<7} {rows:>5} rows c={concurrency}: "
                    f"{rps:8.1f} req/s p50 {p50:7.2f} ms",
                    flush=True,
                )

    json_headers = {"Content-Type": "application/json"}
    keyed = {**json_headers, "X-API-Key": KEY}
    if not args.skip_model_server:
        server, base = start_model_server(workdir)
        try:
            for name in models_run:
                measure(
                    "model-server",
                    name,
                    lambda rows, n=name: (
                        f"{base}/api/v1/predict/{n}" if rows == 1 else f"{base}/api/v1/batch-predict"
                    ),
                    "maestro",
                    keyed,
                )
                if not args.no_v2:
                    measure(
                        "model-server /v2",
                        name,
                        lambda rows, n=name: f"{base}/v2/models/{n}/infer",
                        "v2",
                        keyed,
                    )
        finally:
            server.stop()

    platform_note = "skipped (--skip-platform)" if args.skip_platform else None
    if args.isolation_only:
        platform_note = None
    if not args.skip_platform and not args.isolation_only:
        started = start_platform(workdir)
        if isinstance(started, str):
            platform_note = f"skipped: {started}"
        else:
            process, platform_base, platform_headers, deployments = started
            try:
                for name in models_run:
                    measure(
                        "platform",
                        name,
                        lambda rows, n=name: (
                            f"{platform_base}/api/v1/inference/{deployments[n]}"
                            + ("" if rows == 1 else "/batch")
                        ),
                        "platform",
                        {**json_headers, **platform_headers},
                    )
            finally:
                process.stop()
    if platform_note:
        print(f"platform /api/v1/inference: {platform_note}", flush=True)

    if args.isolation:
        results += run_isolation(workdir, models, batches, args.seconds, measure, args.skip_platform)

    if not args.skip_mlflow:
        try:
            save_mlflow_models(workdir, {name: models[name] for name in models_run})
            for name in models_run:
                process, mlflow_base = start_mlflow(workdir, name)
                try:
                    measure(
                        "mlflow", name, lambda rows, b=mlflow_base: f"{b}/invocations", "mlflow", json_headers
                    )
                finally:
                    process.stop()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"mlflow: skipped ({exc})", flush=True)
    report(results)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    shutil.rmtree(workdir, ignore_errors=True)


def report(results: list[Result]) -> None:
    mlflow = {(r.model, r.rows, r.concurrency): r for r in results if r.target == "mlflow"}
    print()
    print(
        f"{'target':<18} {'model':<8} {'rows':>5} {'c':>2} {'req/s':>9} {'rows/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'x mlflow':>9}"
    )
    for r in results:
        base = mlflow.get((r.model, r.rows, r.concurrency))
        ratio = f"{r.rps / base.rps:8.1f}x" if base and r.target != "mlflow" else ""
        errors = f"  ({r.errors} errors)" if r.errors else ""
        print(
            f"{r.target:<18} {r.model:<8} {r.rows:>5} {r.concurrency:>2} {r.rps:>9.1f} "
            f"{r.rps * r.rows:>11,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {ratio:>9}{errors}"
        )
    server = {(r.model, r.rows, r.concurrency): r for r in results if r.target == "model-server"}
    print()
    checks = [
        ("≥ 5x MLflow's throughput at 1 row, c=8", [(m, 1, 8) for m in MODELS]),
        ("≥ 5x MLflow's rows/s at 1,000 rows", [(m, 1000, c) for m in MODELS for c in CONCURRENCY]),
    ]
    for label, keys in checks:
        ratios = [server[k].rps / mlflow[k].rps for k in keys if k in server and k in mlflow]
        if ratios:
            print(f"target {label}: {'met' if min(ratios) >= 5 else 'MISSED'} (lowest {min(ratios):.1f}x)")
    logreg = server.get(("logreg", 1, 1))
    if logreg:
        print(
            f"target p50 < 3 ms, 1-row LogisticRegression on the model server: "
            f"{'met' if logreg.p50_ms < 3 else 'MISSED'} ({logreg.p50_ms:.2f} ms at c=1)"
        )


if __name__ == "__main__":
    main()
