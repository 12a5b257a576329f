"""Start-up time: what importing the application costs, per group of modules, how long
`maestro serve` takes from launch to a healthy /health, and how long the commands that
need no server take.

    .venv/bin/python bench/startup.py [--runs 5] [--compare /path/to/other/src]

Every figure comes from fresh processes of this interpreter, with compiled bytecode
cached (in a private directory) as in an installation. ``--compare`` measures a
second source tree (its ``src`` directory, put first on ``PYTHONPATH``) in the same run,
interleaved with this one, so a before/after pair shares the machine's state.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

# Top-level import names → the group a module's time is counted in (first match wins).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "web: fastapi/pydantic/starlette",
        ("fastapi", "pydantic", "pydantic_core", "starlette", "annotated_types"),
    ),
    ("server: uvicorn/anyio/httpx", ("uvicorn", "anyio", "httpx", "httpcore", "h11", "httptools", "uvloop")),
    ("sqlalchemy/alembic", ("sqlalchemy", "alembic", "mako", "psycopg", "psycopg_binary")),
    ("numeric: numpy/scipy/sklearn", ("numpy", "scipy", "sklearn", "joblib", "threadpoolctl")),
    ("onnx/onnxruntime/skl2onnx", ("onnx", "onnxruntime", "skl2onnx", "onnxconverter_common", "google")),
    ("boosters: xgboost/lightgbm", ("xgboost", "lightgbm")),
    ("skops", ("skops",)),
    ("polars/fastexcel", ("polars", "fastexcel", "pyarrow")),
    ("mlflow", ("mlflow",)),
    ("fpdf/fontTools/PIL", ("fpdf", "fontTools", "PIL", "defusedxml")),
    ("huey/redis/limits", ("huey", "redis", "limits")),
    ("jinja2/yaml/markdown", ("jinja2", "yaml", "markdown_it")),
    ("crypto: cryptography/argon2/jwt", ("cryptography", "argon2", "jwt", "_cffi_backend", "cffi")),
    ("typer/click/rich", ("typer", "click", "rich", "shellingham")),
    ("prometheus_client", ("prometheus_client",)),
    ("fsspec", ("fsspec",)),
)


def group_of(module: str) -> str:
    top = module.split(".", 1)[0]
    if top == "maestro":
        parts = module.split(".")
        return f"maestro.{parts[1]}" if len(parts) > 1 else "maestro"
    for name, tops in GROUPS:
        if top in tops:
            return name
    return "other (stdlib and small libraries)"


# Compiled bytecode goes to a private directory (no tree is written to), and is written
# even where PYTHONDONTWRITEBYTECODE is set: an installation compiles its modules once,
# so a start that compiles every module from source measures something no user sees.
PYCACHE = Path(tempfile.mkdtemp(prefix="maestro-startup-pycache-"))
atexit.register(shutil.rmtree, PYCACHE, ignore_errors=True)


def environment(src: Path | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAESTRO_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    return env


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_profile(src: Path | None, statement: str) -> tuple[dict[str, float], float]:
    """Self time (ms) per group for ``statement`` in a fresh interpreter, and the total."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        env=environment(src),
        capture_output=True,
        text=True,
        check=True,
    )
    groups: dict[str, float] = defaultdict(float)
    for line in completed.stderr.splitlines():
        found = _IMPORT_LINE.match(line)
        if found:
            groups[group_of(found.group(4))] += int(found.group(1)) / 1000
    return dict(groups), sum(groups.values())


Figure = tuple[float, float]  # (wall-clock seconds, CPU seconds of the process)


def wall(command: list[str], src: Path | None, cwd: Path) -> Figure:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=environment(src), cwd=cwd, capture_output=True, check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds(pid: int) -> float:
    """User and system time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_to_health(src: Path | None, data_dir: Path) -> Figure:
    """From launching `maestro serve` on ``data_dir`` to a 200 on /health: wall-clock
    seconds, and the CPU seconds the server process had used by then."""
    port = free_port()
    env = environment(src) | {
        "MAESTRO_DATA_DIR": str(data_dir),
        "MAESTRO_LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "maestro", "serve", "--port", str(port)],
        env=env,
        cwd=data_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=1) as client:
            while True:
                if process.poll() is not None:
                    raise SystemExit("maestro serve exited before answering /health")
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        return time.perf_counter() - started, cpu_seconds(process.pid)
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per wall-clock figure (median)")
    parser.add_argument("--compare", type=Path, help="another tree's src directory, measured alike")
    options = parser.parse_args()

    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if options.compare:
        trees.insert(0, ("compare", options.compare.resolve()))
        print(f"compare: {options.compare.resolve()}; this tree: {Path(__file__).resolve().parents[1]}\n")

    for _, src in trees:  # compiles the bytecode once, as an installation does
        import_profile(src, "import maestro.app, maestro.cli")
    profiles = {label: import_profile(src, "import maestro.app") for label, src in trees}
    names = sorted({name for groups, _ in profiles.values() for name in groups})
    width = max(len(name) for name in names)
    print("Import time of maestro.app, self time per group (ms, one run):")
    print(f"  {'group':<{width}}" + "".join(f"  {label[:22]:>22}" for label, _ in trees))
    order = sorted(names, key=lambda name: -max(groups.get(name, 0.0) for groups, _ in profiles.values()))
    for name in order:
        cells = "".join(f"  {profiles[label][0].get(name, 0.0):>22.0f}" for label, _ in trees)
        print(f"  {name:<{width}}{cells}")
    print(f"  {'total':<{width}}" + "".join(f"  {profiles[label][1]:>22.0f}" for label, _ in trees))

    cli_profiles = {label: import_profile(src, "import maestro.cli")[1] for label, src in trees}
    print("\nImport time of maestro.cli (ms): " + ", ".join(f"{k}: {v:.0f}" for k, v in cli_profiles.items()))

    print(f"\nSeconds, median of {options.runs} runs: wall clock (CPU time of the process)")
    print(f"  (load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores)")
    maestro = [sys.executable, "-m", "maestro"]
    figures: dict[str, dict[str, Figure]] = defaultdict(dict)
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        data_dirs = {label: cwd / f"data-{number}" for number, (label, _) in enumerate(trees)}
        for label, src in trees:  # the first start migrates a new database; not counted
            data_dirs[label].mkdir()
            serve_to_health(src, data_dirs[label])
        measures: dict[str, Callable[[str, Path | None], Figure]] = {
            "maestro --help": lambda _, src: wall([*maestro, "--help"], src, cwd),
            "maestro users --help": lambda _, src: wall([*maestro, "users", "--help"], src, cwd),
            "maestro serve → /health": lambda label, src: serve_to_health(src, data_dirs[label]),
        }
        for what, measure in measures.items():
            samples: dict[str, list[Figure]] = defaultdict(list)
            for _ in range(options.runs):
                for label, src in trees:  # interleaved, so both see the same machine
                    samples[label].append(measure(label, src))
            for label, _ in trees:
                figures[what][label] = (
                    statistics.median(wall for wall, _ in samples[label]),
                    statistics.median(cpu for _, cpu in samples[label]),
                )
    for what, by_tree in figures.items():
        cells = "".join(f"  {label}: {wall:.2f} ({cpu:.2f} CPU)" for label, (wall, cpu) in by_tree.items())
        print(f"  {what:<26}{cells}")


if __name__ == "__main__":
    main()
