"""What monitoring costs: judging drift, against Evidently, and serving with the
prediction log and its folding on, against the log off.

    .venv/bin/python bench/monitoring.py [--rows 50000] [--repeats 3] [--seconds 10]
        [--rounds 6] [--skip-evidently] [--skip-serving]

1. Drift of a 20-column table (13 numeric, 7 categorical), ``--rows`` rows a side, with
   four planted shifts (income's mean +15 %, a 10-point change in the plan mix, a wider
   spread, more nulls) and 16 columns drawn alike on both sides. Maestro is timed from
   raw values (``column_drift_from_values`` per column, then ``dataset_drift``) and from
   hourly profiles: each side cut into 24 hours, profiled and serialised as the fold
   stores them (timed apart: the fold does it as logs arrive), then read back, merged and
   judged (``column_drift_from_profiles``). Evidently's ``Report([DataDriftPreset()])``
   runs on the same data, as pandas DataFrames, in ``bench/.venv-evidently`` (created
   with ``pip install evidently "pandas<3"`` when missing: Evidently 0.7 does not import
   with pandas 3); its verdict per column is its own test's. Each time is the median of
   ``--repeats`` runs after a warm-up.
2. Platform inference, 1 row at c=8 (wrk), on three ``maestro serve`` started by
   ``bench/serving.py``'s ``start_platform``, all with the job consumer in the process:
   "log 100%" (every request logged, MAESTRO_MONITORING_FOLD_INTERVAL_SECONDS=1), "no
   fold" (every request logged, folding off: what the log's writer alone costs) and "log
   0%". The consumer's schedule runs once a minute, so that is a fold a minute (in a
   child process of the server, ``monitoring/fold_process.py``), and the fold reads only
   logs older than its 60 s settling time: the first fold with anything to read comes
   about two minutes after the traffic starts. The servers take turns (ABC CBA) for
   ``--rounds`` rounds; if no run of the logging server has met a fold that folded logs,
   it is measured again while its next fold runs, and the others right after (at most
   20 rounds). Afterwards the logging server's database is read: the fold jobs, the
   stored hourly profiles and the rows they hold. The ratio is of requests/s over all
   runs (requests over measured seconds); p99 is the median of the runs'.

Targets: Maestro's drift ≤ 1 s and ≥ 10x faster than Evidently; the platform with the
log at 100 % and folding within 10 % of its throughput with the log at 0 %. Figures from a
shared 2-core machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import skops.io as sio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import Platform, Run, fit, run_wrk, start_platform  # noqa: E402
from maestro.monitoring.drift import (  # noqa: E402
    ColumnDrift,
    column_drift_from_profiles,
    column_drift_from_values,
    dataset_drift,
)
from maestro.monitoring.profiles import (  # noqa: E402
    CategoricalProfile,
    ColumnKind,
    ColumnProfile,
    NumericProfile,
    profile_columns,
)

EVIDENTLY_VENV = ROOT / "bench" / ".venv-evidently"
HOURS = 24
MAX_ROUNDS = 20

# --- the table -------------------------------------------------------------------------------
PLANTED = {  # the shifts planted in the current side; every other column is drawn alike
    "income": "mean +15 %",
    "spread": "standard deviation x1.3",
    "tenure": "nulls 2 % -> 10 %",
    "plan": "basic 40 -> 30 %, plus 30 -> 40 %",
}


def table(n: int, seed: int, shifted: bool) -> dict[str, np.ndarray]:
    """A customer-like table: numeric columns as float64 with NaN missing, categorical
    ones as strings with None missing."""
    g = np.random.default_rng(seed)

    def nulls(values: np.ndarray, rate: float) -> np.ndarray:
        missing = g.random(n) < rate
        if values.dtype.kind == "f":
            return np.where(missing, np.nan, values)
        out = values.astype(object)
        out[missing] = None
        return out

    def pick(levels: list[str], shares: list[float] | None = None) -> np.ndarray:
        if shares is None:  # Zipf-like: the first level most frequent
            weights = 1 / np.arange(1, len(levels) + 1)
            shares = list(weights / weights.sum())
        return np.array(levels)[g.choice(len(levels), n, p=shares)]

    return {
        "income": g.lognormal(np.log(40_000), 0.6, n) * (1.15 if shifted else 1.0),
        "spread": g.normal(0, 1.3 if shifted else 1.0, n),
        "tenure": nulls(g.poisson(24, n) * 1.0, 0.10 if shifted else 0.02),
        "age": np.clip(np.round(g.normal(42, 12, n)), 18, 90),
        "balance": nulls(g.normal(1_000, 300, n), 0.05),
        "n_products": g.integers(1, 5, n) * 1.0,
        "latency_ms": g.exponential(50, n),
        "ratio": g.random(n),
        "visits": g.poisson(3, n) * 1.0,
        "credit": np.clip(g.normal(680, 50, n), 300, 850),
        "debt": g.lognormal(9, 1.0, n),
        "temperature": g.normal(20, 5, n),
        "discount": g.beta(2, 5, n),
        "plan": pick(
            ["basic", "plus", "pro", "team"], [0.3, 0.4, 0.2, 0.1] if shifted else [0.4, 0.3, 0.2, 0.1]
        ),
        "region": pick([f"region-{i}" for i in range(8)], [1 / 8] * 8),
        "city": pick([f"city-{i:02d}" for i in range(60)]),
        "is_member": nulls(pick(["yes", "no"], [0.35, 0.65]), 0.02),
        "device": pick(["ios", "android", "web"], [0.3, 0.5, 0.2]),
        "channel": pick(list("abcde")),
        "country": pick([f"country-{i:02d}" for i in range(25)]),
    }


KINDS: dict[str, ColumnKind] = {
    name: "numeric" if values.dtype.kind == "f" else "categorical"
    for name, values in table(1, 0, False).items()
}


# --- Maestro ---------------------------------------------------------------------------------
def median_time(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    work()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def from_values(reference: dict[str, np.ndarray], current: dict[str, np.ndarray]) -> list[ColumnDrift]:
    results = [column_drift_from_values(n, reference[n], current[n], kind) for n, kind in KINDS.items()]
    dataset_drift(results)
    return results


def hourly_profiles(side: dict[str, np.ndarray]) -> list[dict[str, bytes]]:
    """Each hour's profile of each column, serialised as the fold stores it."""
    rows = len(next(iter(side.values())))
    hours = np.array_split(np.arange(rows), HOURS)
    names, kinds = list(KINDS), list(KINDS.values())
    return [
        {
            name: p.to_bytes()
            for name, p in profile_columns(names, {n: side[n][h] for n in names}, kinds).items()
        }
        for h in hours
    ]


def merged(hours: list[dict[str, bytes]]) -> dict[str, ColumnProfile]:
    out: dict[str, ColumnProfile] = {}
    for hour in hours:
        for name, data in hour.items():
            profile = (NumericProfile if KINDS[name] == "numeric" else CategoricalProfile).from_bytes(data)
            held = out.setdefault(name, profile)
            if held is not profile:
                held.merge(profile)  # type: ignore[arg-type]
    return out


def from_profiles(reference: list[dict[str, bytes]], current: list[dict[str, bytes]]) -> list[ColumnDrift]:
    ref, cur = merged(reference), merged(current)
    results = [column_drift_from_profiles(name, ref[name], cur[name]) for name in KINDS]
    dataset_drift(results)
    return results


# --- Evidently -------------------------------------------------------------------------------
EVIDENTLY_SCRIPT = """
import json, pickle, statistics, sys, time, warnings
warnings.simplefilter("ignore")
import pandas as pd
import evidently
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

data = pickle.load(open(sys.argv[1], "rb"))
repeats = int(sys.argv[2])
definition = DataDefinition(numerical_columns=data["numeric"], categorical_columns=data["categorical"])
frames = [pd.DataFrame(data[side]) for side in ("current", "reference")]

def run(current, reference):
    report = Report([DataDriftPreset()], include_tests=True)
    return report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    ).dict()

run(*(frame.head(2000) for frame in frames))  # warm-up
times = []
for _ in range(repeats):
    started = time.perf_counter()
    snapshot = run(*frames)
    times.append(time.perf_counter() - started)
scores = {m["config"]["column"]: m for m in snapshot["metrics"] if m["config"]["type"].endswith("ValueDrift")}
columns = {}
for test in snapshot["tests"]:
    column = test["metric_config"]["params"].get("column")
    if column in scores:
        config = scores[column]["config"]
        columns[column] = {"method": config["method"], "value": scores[column]["value"],
                           "threshold": config["threshold"], "drifted": test["status"] == "FAIL"}
print(json.dumps({"version": evidently.__version__, "seconds": statistics.median(times), "columns": columns}))
"""


def ensure_evidently_venv() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not (EVIDENTLY_VENV / "bin" / "evidently").exists():
        # Evidently 0.7 does not import with pandas 3
        print(f"creating {EVIDENTLY_VENV} (pip install evidently 'pandas<3') …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "evidently", "pandas<3"], check=True)
    return python


def evidently(
    reference: dict[str, np.ndarray], current: dict[str, np.ndarray], repeats: int
) -> dict[str, Any]:
    python = ensure_evidently_venv()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "data.pickle"
        data = {
            "reference": reference,
            "current": current,
            "numeric": [n for n, k in KINDS.items() if k == "numeric"],
            "categorical": [n for n, k in KINDS.items() if k == "categorical"],
        }
        path.write_bytes(pickle.dumps(data))
        done = subprocess.run(
            [python, "-c", EVIDENTLY_SCRIPT, str(path), str(repeats)], capture_output=True, text=True
        )
    if done.returncode:
        raise SystemExit(f"evidently failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- part 1 ----------------------------------------------------------------------------------
def _verdict(result: ColumnDrift) -> str:
    figure = f"{result.test[:4]} {result.statistic:.3f}" if result.statistic is not None else result.test
    nulls = " +nulls" if result.null_rate_drifted else ""
    return f"{result.verdict:<7} {figure}{nulls}"


def _flags(drifted: set[str]) -> str:
    planted = list(PLANTED)
    caught = [n for n in planted if n in drifted]
    false = sorted(drifted - set(planted))
    missed = [n for n in planted if n not in drifted]
    return (
        f"planted {len(caught)}/{len(planted)}"
        + (f" (missed {', '.join(missed)})" if missed else "")
        + f", unshifted {len(false)}/{len(KINDS) - len(planted)}"
        + (f" ({', '.join(false)})" if false else "")
    )


def drift_bench(rows: int, repeats: int, skip_evidently: bool) -> None:
    numeric = sum(kind == "numeric" for kind in KINDS.values())
    print(
        f"1. drift: {len(KINDS)} columns ({numeric} numeric), {rows:,} rows a side; median of {repeats} runs"
    )
    reference, current = table(rows, 1, False), table(rows, 2, True)
    raw_s, raw = median_time(lambda: from_values(reference, current), repeats)
    build_s, (ref_hours, cur_hours) = median_time(
        lambda: (hourly_profiles(reference), hourly_profiles(current)), repeats
    )
    merge_s, profiled = median_time(lambda: from_profiles(ref_hours, cur_hours), repeats)
    stored = sum(len(data) for hours in (ref_hours, cur_hours) for hour in hours for data in hour.values())
    print(f"   maestro from raw values              {raw_s:8.3f} s")
    print(f"   maestro hourly profiles: merge+drift {merge_s:8.3f} s  ({2 * HOURS} hours, {stored:,} bytes)")
    print(f"   maestro hourly profiles: building    {build_s:8.3f} s  (done by the fold as logs arrive)")
    theirs: dict[str, Any] = {}
    if not skip_evidently:
        found = evidently(reference, current, repeats)
        theirs = found["columns"]
        ratios = found["seconds"] / raw_s, found["seconds"] / merge_s
        print(f"   evidently {found['version']} DataDriftPreset  {found['seconds']:8.3f} s")
        print(f"   evidently / maestro: {ratios[0]:.1f}x from raw values, {ratios[1]:.1f}x from profiles")
    print()
    print(f"   {'column':<12} {'planted':<34} {'maestro raw':<26} {'maestro profiles':<26} evidently")
    for name, mine, merged_result in zip(KINDS, raw, profiled, strict=True):
        other = theirs.get(name)
        row = f"{name:<12} {PLANTED.get(name, '-'):<34} {_verdict(mine):<26} {_verdict(merged_result):<26}"
        if other:
            method = other["method"].split()[0][:4].lower()
            row += f" {'drift' if other['drifted'] else 'ok':<7} {method} {other['value']:.3f}"
        print(f"   {row}")
    print()
    print(f"   flagged, maestro raw:      {_flags({r.column for r in raw if r.drifted})}")
    print(f"   flagged, maestro profiles: {_flags({r.column for r in profiled if r.drifted})}")
    if theirs:
        print(f"   flagged, evidently:        {_flags({n for n, c in theirs.items() if c['drifted']})}")
        slowest = max(raw_s, merge_s)
        met = slowest <= 1 and found["seconds"] / slowest >= 10
        print(
            f"   target maestro ≤ 1 s and ≥ 10x faster than evidently: {'met' if met else 'MISSED'} "
            f"(slowest {slowest:.3f} s, {found['seconds'] / slowest:.1f}x)"
        )
    else:
        print(f"   target maestro ≤ 1 s: {'met' if max(raw_s, merge_s) <= 1 else 'MISSED'}")


# --- part 2 ----------------------------------------------------------------------------------
@dataclass
class Measured:
    name: str
    began: datetime
    ended: datetime
    run: Run
    folding: bool = False  # a fold that read logs overlapped it


def fold_jobs(data_dir: Path) -> tuple[list[Any], dict[str, int]]:
    """The fold jobs in a platform's database, and what its profiles and log hold."""
    from sqlalchemy import func, select

    from maestro.config import Settings
    from maestro.db import Database
    from maestro.deployments.models import PredictionLog
    from maestro.jobs.maintenance import FOLD
    from maestro.jobs.models import Job
    from maestro.monitoring.models import PREDICTION_COLUMN, MonitoringProfile

    database = Database(Settings(_env_file=None, data_dir=data_dir), create=False)  # type: ignore[call-arg]
    try:
        with database.session(write=False) as session:
            jobs = list(session.scalars(select(Job).where(Job.kind == FOLD).order_by(Job.created_at)))
            hours, columns = session.execute(
                select(
                    func.count(func.distinct(MonitoringProfile.hour)),
                    func.count(func.distinct(MonitoringProfile.column)),
                )
            ).one()
            predictions = session.scalar(
                select(func.sum(MonitoringProfile.rows)).where(MonitoringProfile.column == PREDICTION_COLUMN)
            )
            logged = session.scalar(select(func.count()).select_from(PredictionLog))
        return jobs, {
            "hours": hours,
            "columns": columns,
            "predictions": predictions or 0,
            "logged": logged or 0,
        }
    finally:
        database.dispose()


def serving_bench(seconds: float, rounds: int) -> None:
    from maestro.db import utcnow

    print()
    print(f"2. platform inference, 1 row c=8 (wrk), {seconds:g} s runs, prediction log 100 % against 0 %")
    workdir = Path(tempfile.mkdtemp(prefix="maestro-bench-monitoring-"))
    files = {"logreg": ("logreg.skops", sio.dumps(fit("logreg", 0)))}
    body = orjson.dumps({"instances": np.random.default_rng(1).normal(size=(1, 20)).tolist()})
    started: dict[str, Platform] = {}
    try:
        for name, rate, fold in (("log 100%", "1", "1"), ("no fold", "1", "0"), ("log 0%", "0", "1")):
            platform = start_platform(
                workdir,
                files,
                label=name.replace(" ", "-").replace("%", ""),
                prediction_log_sample_rate=rate,
                run_worker_in_process="true",
                monitoring_fold_interval_seconds=fold,
            )
            if isinstance(platform, str):
                raise SystemExit(f"{name}: {platform}")
            started[name] = platform
        data_dir = workdir / "log-100-data"

        def measure(name: str, seconds: float) -> Run:
            platform = started[name]
            headers = {"Content-Type": "application/json", **platform.headers}
            return run_wrk(platform.inference_url("logreg", 1), body, headers, 8, seconds)

        for name in started:
            measure(name, 2)  # warm-up
        runs: list[Measured] = []
        order = list(started)

        def measure_round(names: list[str]) -> None:
            for name in names:
                began = utcnow()
                run = measure(name, seconds)
                runs.append(Measured(name, began, utcnow(), run))
                print(f"   {name:<9} {run.rps:8.1f} req/s  p99 {run.p99_ms:6.2f} ms", flush=True)

        def mark_folding() -> bool:
            """Mark the runs a fold overlapped; whether one of the logging server's was."""
            jobs, _ = fold_jobs(data_dir)
            busy = [
                (job.started_at, job.finished_at or utcnow())
                for job in jobs
                if job.started_at and (job.result or {}).get("logs_folded", 1)
            ]
            for measured in runs:
                measured.folding = any(a < measured.ended and b > measured.began for a, b in busy)
            return any(m.folding for m in runs if m.name == "log 100%")

        for round_number in range(rounds):
            measure_round(order if round_number % 2 == 0 else order[::-1])
        # Rounds may keep in step with the once-a-minute fold and never meet it: then the
        # logging server is measured once more while its next fold runs, and the others
        # right after.
        for _ in range(MAX_ROUNDS - rounds):
            if mark_folding():
                break
            fold_starts = time.monotonic() + 75
            while time.monotonic() < fold_starts and not any(
                job.status == "running" for job in fold_jobs(data_dir)[0]
            ):
                time.sleep(0.2)
            measure_round(order)
        mark_folding()
    finally:
        for platform in started.values():
            platform.process.stop()

    jobs, stored = fold_jobs(data_dir)
    print()
    print(f"   measured {runs[0].began:%H:%M:%S}-{runs[-1].ended:%H:%M:%S} UTC; folds on the logging server:")
    for job in (job for job in jobs if job.started_at):
        took = (job.finished_at - job.started_at).total_seconds() if job.finished_at else None
        count = (job.result or {}).get("logs_folded", 0)
        rate = f", {count / took:,.0f} logs/s" if took and count else ""
        shown = f"{took:6.2f} s{rate}" if took is not None else ""
        print(f"     {job.started_at:%H:%M:%S} {job.status:<9} {shown} {json.dumps(job.result or {})}")
    folded = sum((job.result or {}).get("logs_folded", 0) for job in jobs)
    print(
        f"   profiles written: {stored['columns']} columns over {stored['hours']} hour(s); the prediction "
        f"column counts {stored['predictions']:,} rows for {folded:,} logs folded, of {stored['logged']:,} "
        "logged (the rest were younger than the settling time)"
    )
    rps: dict[str, float] = {}
    p99: dict[str, float] = {}
    for name in started:
        mine = [m for m in runs if m.name == name]
        rps[name] = sum(m.run.requests for m in mine) / sum((m.ended - m.began).total_seconds() for m in mine)
        p99[name] = statistics.median(m.run.p99_ms for m in mine)
        during = ", ".join(f"{m.run.rps:.0f} req/s p99 {m.run.p99_ms:.2f} ms" for m in mine if m.folding)
        print(
            f"   {name:<9} {len(mine)} runs: {rps[name]:8.1f} req/s overall, p99 median {p99[name]:.2f} ms, "
            f"worst {max(m.run.p99_ms for m in mine):.2f} ms, {sum(m.run.errors for m in mine)} errors; "
            f"while a fold ran: {during or 'none'}"
        )
    ratio = rps["log 100%"] / rps["log 0%"]
    # The fold runs in the logging server but takes its share of the 2 cores from whichever
    # server is measured: log 0 % runs it overlapped were slowed too.
    quiet = [m for m in runs if m.name == "log 0%" and not m.folding]
    seconds_quiet = sum((m.ended - m.began).total_seconds() for m in quiet)
    quiet_ratio = rps["log 100%"] * seconds_quiet / sum(m.run.requests for m in quiet) if quiet else math.nan
    print(
        "   target log 100 % + folding within 10 % of log 0 % (req/s and p99): "
        f"{'met' if ratio >= 0.9 and p99['log 100%'] <= 1.1 * p99['log 0%'] else 'MISSED'} "
        f"(req/s ratio {ratio:.2f}, {quiet_ratio:.2f} against the log 0 % runs no fold overlapped; "
        f"p99 {p99['log 100%']:.2f} / {p99['log 0%']:.2f} ms)"
    )
    if not folded or stored["predictions"] != folded:
        print("   WARNING: the profiles do not hold the rows folded")
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows a side in the drift comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each drift computation")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each serving run")
    parser.add_argument("--rounds", type=int, default=6, help="least rounds of serving runs")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    drift_bench(args.rows, args.repeats, args.skip_evidently)
    if not args.skip_serving:
        serving_bench(args.seconds, args.rounds)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
