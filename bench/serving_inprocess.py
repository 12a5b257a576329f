"""In-process prediction latency: scikit-learn against the ONNX form Maestro serves.

    .venv/bin/python bench/serving_inprocess.py [--seconds 1.5]

Trains a LogisticRegression and a 100-tree RandomForest on 20 features, loads each
through ``maestro.runtimes.load_runtime`` from a skops file (which converts it to ONNX,
one intra-op thread), and prints p50/p99 in µs of ``predict_proba`` for 1 and 1,000
rows: scikit-learn on the original estimator, then the runtime. Also the cost of
turning a 1,000-row JSON body into the matrix (orjson + vectorised validation).
Figures from a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import orjson
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from maestro.runtimes import load_runtime, matrix_from_json

FEATURES = 20


def timed(call: Callable[[], object], seconds: float, max_calls: int = 20_000) -> tuple[float, float, int]:
    for _ in range(5):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < max_calls and (len(samples) < 20 or time.perf_counter() < deadline):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time spent on each measurement")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, FEATURES))  # noqa: N806 - the usual name for a feature matrix
    y = (X[:, 0] + 0.5 * X[:, 1] - 0.8 * X[:, 2] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    models = {
        "LogisticRegression": LogisticRegression(max_iter=1000).fit(X, y),
        "RandomForest(100)": RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y),
    }
    batches = {1: rng.normal(size=(1, FEATURES)), 1000: rng.normal(size=(1000, FEATURES))}

    header = f"{'model':<20} {'rows':>5}  {'sklearn p50':>12} {'p99':>9}  {'onnx p50':>9} {'p99':>9}"
    print(f"{header}  {'speed-up':>8}")
    for name, model in models.items():
        started = time.perf_counter()
        runtime = load_runtime(sio.dumps(model), format="skops")
        load_seconds = time.perf_counter() - started
        assert runtime.serving == "onnx (converted from skops)", runtime.conversion
        for rows, batch in batches.items():
            sk50, sk99, _ = timed(lambda m=model, b=batch: m.predict_proba(b), args.seconds)
            ox50, ox99, _ = timed(lambda r=runtime, b=batch: r.predict_proba(b), args.seconds)
            line = f"{name:<20} {rows:>5}  {sk50:>12,.0f} {sk99:>9,.0f}  {ox50:>9,.0f} {ox99:>9,.0f}"
            print(f"{line}  {sk50 / ox50:>7.0f}x")
        verdict = runtime.conversion["reason"] if runtime.conversion else ""
        print(f"{'':<20} loaded, converted and validated in {load_seconds:.2f} s: {verdict}")

    schema = runtime.input_schema
    rows = batches[1000].tolist()
    body_lists = orjson.dumps({"instances": rows})
    body_objects = orjson.dumps({"instances": [dict(zip(schema.names, row, strict=True)) for row in rows]})
    print()
    for label, body in (("lists", body_lists), ("objects", body_objects)):
        p50, p99, _ = timed(lambda b=body: matrix_from_json(b, schema, key="instances"), args.seconds)
        parse50, _, _ = timed(lambda b=body: orjson.loads(b), args.seconds)
        print(
            f"1,000-row body of {label:<7} to a validated matrix: p50 {p50:,.0f} µs, p99 {p99:,.0f} µs "
            f"(orjson parsing alone {parse50:,.0f} µs)"
        )


if __name__ == "__main__":
    main()
