"""Two real ``maestro serve`` processes on one database, each logging its share of a
deployment's traffic, then two folders in two more processes at once, one of them held
mid-page under the fold mark's lock: every log is folded by exactly one of them, and the
merged profiles say what one process given all the traffic says, and what profiles built
straight from the rows sent say.

The fold job reads only logs older than its settling time (a minute), so the folders call
the job's folding function (``fold_new_predictions``) rather than wait for the schedule;
the servers run no job consumer of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from datasketches import kll_doubles_sketch
from fastapi.testclient import TestClient
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sqlalchemy import func, select, text

from maestro.config import Settings
from maestro.db import Database, utcnow
from maestro.deployments.models import PredictionLog
from maestro.monitoring.folding import fold_new_predictions, merged_profiles
from maestro.monitoring.models import (
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    MonitoringFoldMark,
)
from maestro.monitoring.profiles import KLL_K, CategoricalProfile, ColumnProfile, NumericProfile
from tests.conftest import RunningProcess, settings_env, wait_until
from tests.deployments.platform import FEATURES, SCHEMA, Tiny, deployed, register, skops_file, upload
from tests.factories import Factory, World

pytestmark = pytest.mark.slow

LABELS = ["legit", "fraud"]
PAGE = 7  # logs per fold transaction: many pages, so the two folders take turns
EPS = kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)  # 0.68 %, at 99 % confidence

# One folder: fold_new_predictions in a process of its own. The folder named "first" stops
# after reading its first page under the mark's lock, until the test releases it; each
# folder says when it is about to take the lock, and prints the ids of the logs it folded
# and the log its first read under the lock started after.
FOLDER = """
import json, sys, time
from pathlib import Path
from maestro.config import Settings
from maestro.db import Database
from maestro.monitoring import folding

name, deployment, page, signals = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
profiles_of, locked_mark, read = folding.page_profiles, folding._locked_mark, folding.logged_matrices
folded_ids, first_after = [], []

def wait_for(path):
    deadline = time.monotonic() + 120
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.02)

def page_profiles(logs, *args, **kwargs):
    if name == "first" and not folded_ids:
        (signals / "first-holds").touch()
        wait_for(signals / "release")
    folded_ids.extend(log.id for log in logs)
    return profiles_of(logs, *args, **kwargs)

def logged_matrices(*args, after, limit, **kwargs):
    if limit > 1 and not first_after:  # the first read under the lock: where it starts
        first_after.append(after.id)
    return read(*args, after=after, limit=limit, **kwargs)

def announced_lock(*args):
    (signals / f"{name}-locks").touch()
    return locked_mark(*args)

folding.page_profiles, folding._locked_mark = page_profiles, announced_lock
folding.logged_matrices = logged_matrices
database = Database(Settings(), create=False)
folded = folding.fold_new_predictions(database, deployment, page=page)
print(json.dumps({"folded": folded, "ids": folded_ids, "first_after": first_after[0]}))
"""


def _traffic() -> list[list[dict[str, float | None]]]:
    """About 3,000 rows in 60 requests of 1 to 99 rows; 5 % of the amounts are null."""
    rng = np.random.default_rng(11)
    batches = []
    for size in rng.integers(1, 100, 60):
        rows = rng.normal(size=(size, len(FEATURES)))
        rows[rng.random(size) < 0.05, 0] = np.nan
        batches.append(
            [
                {f: (None if np.isnan(v) else v) for f, v in zip(FEATURES, row, strict=True)}
                for row in rows.tolist()
            ]
        )
    return batches


def _send(server: RunningProcess, headers: dict[str, str], name: str, batch: list[Any]) -> list[Any]:
    answered = httpx.post(
        f"{server.base_url}/api/v1/inference/{name}/batch",
        json={"instances": batch},
        headers=headers,
        timeout=60,
    )
    assert answered.status_code == 200, answered.text
    return answered.json()["predictions"]


def _logs(database: Database, deployment: str) -> list[tuple[Any, str]]:
    """The deployment's logs as (created_at, id), in the fold's keyset order."""
    with database.session(write=False) as session:
        rows = session.execute(
            select(PredictionLog.created_at, PredictionLog.id)
            .where(PredictionLog.deployment_id == deployment)
            .order_by(PredictionLog.created_at, PredictionLog.id)
        )
        return [(at, log_id) for at, log_id in rows]


def _profiles(database: Database, deployment: str) -> dict[str, ColumnProfile]:
    now = utcnow()
    with database.session(write=False) as session:
        return merged_profiles(session, deployment, now - timedelta(days=1), now + timedelta(hours=1))


def _waiting_on_a_lock(database: Database) -> bool:
    with database.session(write=False) as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def _assert_within_rank_error(profile: NumericProfile, values: np.ndarray) -> None:
    """Each estimated quantile's true rank (a range, where values tie) is within the
    sketch's normalised rank error of the quantile asked for."""
    ordered = np.sort(values)
    for q in (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        estimate = profile.sketch.get_quantile(q)
        below = np.searchsorted(ordered, estimate, "left") / ordered.size
        up_to = np.searchsorted(ordered, estimate, "right") / ordered.size
        assert below - EPS <= q <= up_to + EPS, (q, below, up_to)


def _assert_describes(profile: ColumnProfile, values: np.ndarray) -> None:
    """Counts, nulls and bounds exactly, the sum up to float rounding, quantiles within
    the rank error: what a profile guarantees whatever order its pages merged in."""
    assert isinstance(profile, NumericProfile)
    present = values[~np.isnan(values)]
    assert (profile.count, profile.null_count) == (values.size, values.size - present.size)
    assert (profile.min, profile.max) == (present.min(), present.max())
    assert profile.sum == pytest.approx(present.sum(), rel=1e-12, abs=1e-9)
    assert profile.sketch.n == present.size
    assert profile.sketch.is_estimation_mode()  # past k values: the sketch, not the values
    _assert_within_rank_error(profile, present)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    # A folder waiting for the other's write lock on SQLite waits up to a minute.
    return make_settings(sqlite_busy_timeout_ms=60_000)


def _classifier(client: TestClient, world: World, tiny: Tiny, name: str) -> str:
    """A deployment answering labels with their probabilities, null amounts imputed."""
    y = np.where(tiny.X[:, 0] + tiny.X[:, 3] > 0, 1, 0)
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(tiny.X, y)
    version = upload(
        client,
        register(client, world, name=name),
        world.developer.headers,
        skops_file(model),
        schema={**SCHEMA, "class_labels": LABELS},
    )
    return deployed(client, world, name, version["id"])["id"]


def test_two_servers_and_two_folders_count_every_row_once(
    client: TestClient,
    factory: Factory,
    world: World,
    tiny: Tiny,
    settings: Settings,
    serve: Callable[..., RunningProcess],
    tmp_path: Path,
) -> None:
    split = _classifier(client, world, tiny, "fraud-split")
    whole = _classifier(client, world, tiny, "fraud-whole")
    servers = serve(settings), serve(settings)
    batches = _traffic()
    half = len(batches) // 2
    answers: dict[str, list[Any]] = {"fraud-split": [], "fraud-whole": []}
    database = factory.database

    def send(start: int, end: int) -> None:
        for index in range(start, end):
            batch = batches[index]
            answers["fraud-split"] += _send(servers[index % 2], world.key_headers, "fraud-split", batch)
            answers["fraud-whole"] += _send(servers[0], world.key_headers, "fraud-whole", batch)
        wait_until(lambda: len(_logs(database, split)) == len(_logs(database, whole)) == end, timeout=60)

    # The first half, folded by one folder: the split deployment's mark exists from now on,
    # so a second folder can get past it only through the mark's lock.
    send(0, half)
    assert fold_new_predictions(database, split, page=PAGE) == half
    send(half, len(batches))
    assert answers["fraud-split"] == answers["fraud-whole"]

    # Two folders on the split deployment at once: "first" holds its first page under the
    # mark's lock until "second" is about to take the lock too (and, on PostgreSQL, is
    # seen waiting on it).
    signals = tmp_path / "signals"
    signals.mkdir()

    def folder(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", FOLDER, name, split, str(PAGE), str(signals)],
            env=settings_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def signalled(signal: str) -> bool:
        """Whether ``signal`` came; a folder that ended before it fails the test with its error."""
        for process in folders.values():
            if process.poll() is not None and process.returncode != 0:
                raise AssertionError(process.stderr.read() if process.stderr else "a folder failed")
        return (signals / signal).exists()

    folders = {"first": folder("first")}
    try:
        wait_until(lambda: signalled("first-holds"), timeout=120)
        folders["second"] = folder("second")
        wait_until(lambda: signalled("second-locks"), timeout=120)
        if not database.is_sqlite:
            wait_until(lambda: _waiting_on_a_lock(database), timeout=60)
        (signals / "release").touch()
        outputs = {}
        for name, process in folders.items():
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs[name] = json.loads(out)
    finally:
        for process in folders.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert fold_new_predictions(database, whole, page=PAGE) == len(batches)

    # Every new log folded by exactly one folder; the first folded its held page, and the
    # mark stands on the last log.
    logs = _logs(database, split)
    by_first, by_second = outputs["first"]["ids"], outputs["second"]["ids"]
    assert len(by_first) >= PAGE
    # The second, announced while the first held its page, read only once the first had
    # committed: it started after a log the first folded, not at the mark they both saw.
    assert outputs["second"]["first_after"] in by_first
    assert sorted(by_first + by_second) == sorted(log_id for _, log_id in logs[half:])
    assert outputs["first"]["folded"] + outputs["second"]["folded"] == len(batches) - half
    with database.session(write=False) as session:
        mark = session.get(MonitoringFoldMark, split)
        assert mark is not None and (mark.last_created_at, mark.last_id) == logs[-1]
        assert session.scalar(select(func.count()).select_from(MonitoringFoldMark)) == 2
    assert fold_new_predictions(database, split) == 0

    # What the two processes' profiles merge to is what one process's say, and what the
    # rows sent say: exactly for counts, nulls, bounds and labels; quantiles within the
    # sketch's rank error (its compactions are random, so two sketches of the same rows
    # may differ within it).
    rows = np.array([[np.nan if v is None else v for v in r.values()] for b in batches for r in b])
    predicted = answers["fraud-whole"]
    sent = {feature: rows[:, i] for i, feature in enumerate(FEATURES)}
    sent |= {PROBABILITY_PREFIX + c: np.array([a["probabilities"][c] for a in predicted]) for c in LABELS}
    assert np.isnan(sent["amount"]).sum() > 100
    for deployment in (split, whole):
        profiles = _profiles(database, deployment)
        assert set(profiles) == {*sent, PREDICTION_COLUMN}
        for column, values in sent.items():
            _assert_describes(profiles[column], values)
        labels = profiles[PREDICTION_COLUMN]
        assert isinstance(labels, CategoricalProfile)
        assert (labels.count, labels.null_count) == (rows.shape[0], 0)
        assert labels.counts == Counter(a["prediction"] for a in predicted)
