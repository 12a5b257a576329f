"""Against a real ``maestro serve`` and ``maestro model-server``: crafted XGBoost, LightGBM
and ONNX files never touch the server's process.

With the tree checks on, each is refused at upload (422) and nothing of it is kept;
with them off (defence in depth), the native libraries get the files, and only the
isolated processes die: the server stays up, and another organisation's deployment
answers every request (a loop of its requests runs throughout, all 200). A model that
passes its check but crashes on some input fails only those requests, is restarted,
and after repeated crashes its deployment is marked failed (503) until deployed again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import xgboost
from sqlalchemy import select

from maestro.app import create_app
from maestro.config import Settings
from maestro.events.models import OutboxEvent
from maestro.registry.models import ModelVersion
from tests.conftest import RunningProcess, wait_until
from tests.factories import Actor, Factory, Org, api_key_headers
from tests.runtimes import crafted

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux"),
]

MIB = 1024**2
RSS_CEILING = 100 * MIB  # what refusing the memory bomb may add to the server's own memory
ORDINARY = [[0.3, -0.2, 1.1]]
SCHEMA = {"inputs": [{"name": f"x{i}", "type": "float"} for i in range(crafted.FEATURES)]}


# --- processes --------------------------------------------------------------------------------------
def _parent_and_state(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), fields[0]


def live_children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _parent_and_state(int(entry))
            if info is not None and info[0] == pid and info[1] != "Z":
                found.add(int(entry))
    return found


def zygote_of(server: int) -> int:
    for child in live_children(server):
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
            if b"maestro.sandbox.zygote" in cmdline.read():
                return child
    raise AssertionError("the server has started no sandbox")


def gone(pid: int) -> bool:
    info = _parent_and_state(pid)
    return info is None or info[1] == "Z"


def memory(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


# --- the platform ---------------------------------------------------------------------------------
def file_of(data: bytes) -> dict[str, Any]:
    return {"model_file": ("model.bin", data, "application/octet-stream")}


class Tenant:
    """An organisation's developer, with a project, calling a running server."""

    def __init__(self, factory: Factory, server: RunningProcess, name: str) -> None:
        org = Org.new(factory, name)
        self.org = org.id
        self.person: Actor = org.admin
        self.project = org.project("organization", name=f"{name} models")
        self.inference = api_key_headers(org.api_key({"inference": ["read"]}))
        self.http = httpx.Client(base_url=server.base_url, headers=self.person.headers, timeout=120)

    def model(self, name: str) -> str:
        response = self.http.post(
            f"/api/v1/projects/{self.project}/models", json={"name": name, "model_type": "regression"}
        )
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def upload(self, model: str, data: bytes) -> httpx.Response:
        return self.http.post(
            f"/api/v1/models/{model}/versions", data={"model_schema": json.dumps(SCHEMA)}, files=file_of(data)
        )

    def deploy(self, name: str, data: bytes) -> str:
        uploaded = self.upload(self.model(name), data)
        assert uploaded.status_code == 201, uploaded.text
        deployed = self.http.post(
            f"/api/v1/projects/{self.project}/deployments",
            json={"name": name, "model_version_id": uploaded.json()["data"]["id"]},
        )
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["data"]["serving"]["isolated"] is True
        return deployed.json()["data"]["id"]

    def predict(self, name: str, rows: list[list[float]]) -> httpx.Response:
        return self.http.post(f"/api/v1/inference/{name}", json={"instances": rows}, headers=self.inference)


@contextmanager
def answering_throughout(server: RunningProcess, tenant: Tenant, name: str) -> Iterator[Callable[[], None]]:
    """Another organisation's requests, one after the other, for as long as the block
    runs; every one must be answered 200. ``settle()`` waits until a request has been
    answered after it was called, so the loop provably spans what came before."""
    statuses: list[int] = []
    first = threading.Event()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=server.base_url, headers=tenant.inference, timeout=120) as caller:
            while not stop.is_set() and len(statuses) < 100_000:
                response = caller.post(f"/api/v1/inference/{name}", json={"instances": ORDINARY})
                statuses.append(response.status_code)
                first.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert first.wait(120), "the other organisation's loop never got an answer"

    def settle() -> None:
        count = len(statuses)
        wait_until(lambda: len(statuses) > count or not thread.is_alive(), timeout=120)

    try:
        yield settle
    finally:
        settle()
        stop.set()
        thread.join(120)
    assert statuses and set(statuses) == {200}, f"the other organisation got {sorted(set(statuses))}"


@pytest.fixture
def platform(
    serve: Any, make_settings: Callable[..., Settings]
) -> Callable[..., tuple[RunningProcess, Factory]]:
    def start(**values: Any) -> tuple[RunningProcess, Factory]:
        settings = make_settings(**values)
        factory = Factory(create_app(settings))  # writes straight into the server's database
        return serve(settings), factory

    return start


def xgboost_file(tmp_path: Path) -> bytes:
    X, target = crafted._training()  # noqa: N806
    xgboost.XGBRegressor(n_estimators=5, max_depth=3, n_jobs=1).fit(X, target).save_model(tmp_path / "x.json")
    return (tmp_path / "x.json").read_bytes()


# --- the tests ------------------------------------------------------------------------------------------
def test_crafted_files_are_refused_at_upload_and_nothing_is_kept(
    platform: Callable[..., tuple[RunningProcess, Factory]], tmp_path: Path
) -> None:
    server, factory = platform()
    attacker, other = Tenant(factory, server, "Mallory"), Tenant(factory, server, "Globex")
    other.deploy("globex-churn", crafted.lightgbm_text().encode())
    attacks = {
        "min_treesizes.txt": crafted.min_treesizes(),
        "lgb_killswitch.txt": crafted.killswitch(),
        "lgb_leak40.txt": crafted.heap_read(),
        "lgb_many_features.txt": crafted.lightgbm_huge_features(),
        "xgb_right_oob.json": crafted.xgboost_child_out_of_range(tmp_path),
        "xgb_split_oob.json": crafted.xgboost_split_out_of_range(tmp_path),
        "xgb_many_features.json": crafted.xgboost_huge_features(tmp_path),
    }
    with answering_throughout(server, other, "globex-churn") as settle:
        model = attacker.model("boom")
        for name, data in attacks.items():
            response = attacker.upload(model, data)
            assert response.status_code == 422, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == "VALIDATION_ERROR"
            assert error["details"] == [{"field": "model_file", "message": "corrupt"}], name
            settle()

        # The memory bomb: refused in its isolated process, the server's own memory unmoved.
        before = memory(server.process.pid)
        bomb = attacker.upload(model, crafted.onnx_constant_bomb())
        after = memory(server.process.pid)
        assert bomb.status_code == 422, bomb.text
        assert bomb.json()["error"]["details"][0]["message"] == "out_of_memory"
        assert after["VmHWM"] - before["VmHWM"] < RSS_CEILING
        assert after["VmRSS"] - before["VmRSS"] < RSS_CEILING

        # What is left: no version of the crafted files, and no file of theirs in the store.
        listed = attacker.http.get(f"/api/v1/models/{model}/versions").json()
        assert listed["data"] == []
        with factory.database.session(write=False) as session:
            assert session.scalars(select(ModelVersion).where(ModelVersion.model_id == model)).all() == []
        store = Path(server_settings_dir(server)) / "artifacts" / "models" / attacker.project.lower()
        assert not store.exists() or not any(path.is_file() for path in store.rglob("*"))

        # Ordinary XGBoost and LightGBM models deploy and answer from their own processes.
        attacker.deploy("fine-lgb", crafted.lightgbm_text().encode())
        attacker.deploy("fine-xgb", xgboost_file(tmp_path))
        for name in ("fine-lgb", "fine-xgb"):
            answer = attacker.predict(name, ORDINARY)
            assert answer.status_code == 200, answer.text
            assert isinstance(answer.json()["predictions"][0]["prediction"], float)
    assert server.process.poll() is None


def server_settings_dir(server: RunningProcess) -> str:
    with open(f"/proc/{server.process.pid}/environ", "rb") as environ:
        for entry in environ.read().split(b"\0"):
            if entry.startswith(b"MAESTRO_DATA_DIR="):
                return entry.split(b"=", 1)[1].decode()
    raise AssertionError("the server has no data directory")


def test_past_the_checks_crafted_files_crash_only_their_processes(
    platform: Callable[..., tuple[RunningProcess, Factory]], tmp_path: Path
) -> None:
    """Defence in depth: the tree checks off, so LightGBM and XGBoost get the crafted
    files. Loading them kills isolated processes only, and a kill switch that passes its
    check fails only the requests that trip it, until it is stopped."""
    server, factory = platform(model_check_trees=False, model_process_max_crashes=3)
    attacker, other = Tenant(factory, server, "Mallory"), Tenant(factory, server, "Globex")
    other.deploy("globex-churn", crafted.lightgbm_text().encode())
    zygote = zygote_of(server.process.pid)
    others_process = live_children(zygote)

    with answering_throughout(server, other, "globex-churn") as settle:
        model = attacker.model("boom")
        for data, death in (
            (crafted.min_treesizes(), "aborted while loading it"),
            (crafted.killswitch(), "crashed (segmentation fault) while loading it"),
            (crafted.xgboost_child_out_of_range(tmp_path), "crashed (segmentation fault) while loading it"),
        ):
            response = attacker.upload(model, data)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["message"].endswith(death)
            assert response.json()["error"]["details"][0]["message"] == "crashed"
            settle()

        # A kill switch the check's rows do not trip: deployed, it answers ordinary rows.
        deployment = attacker.deploy("window", crafted.lightgbm_window_switch())
        trip = [[0.12345, 0.0, 0.0]]
        assert attacker.predict("window", ORDINARY).status_code == 200
        tripped = attacker.predict("window", trip)
        assert tripped.status_code == 422, tripped.text
        assert "crashed (segmentation fault) on this input" in tripped.json()["error"]["message"]
        assert attacker.predict("window", ORDINARY).status_code == 200  # a new process answers
        settle()

        # Killing its process while requests keep coming fails at most the one in flight.
        [worker] = live_children(zygote) - others_process
        answers: list[tuple[int, bool]] = []
        killed = threading.Event()
        stop = threading.Event()

        def requests() -> None:
            with httpx.Client(base_url=server.base_url, headers=attacker.inference, timeout=120) as caller:
                while not stop.is_set() and len(answers) < 10_000:
                    sent_after_kill = killed.is_set()
                    response = caller.post("/api/v1/inference/window", json={"instances": ORDINARY})
                    answers.append((response.status_code, sent_after_kill))

        thread = threading.Thread(target=requests, daemon=True)
        thread.start()
        wait_until(lambda: len(answers) >= 2)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: gone(worker))
        killed.set()
        wait_until(lambda: sum(after for _status, after in answers) >= 3)
        stop.set()
        thread.join(120)
        failures = [status for status, _after in answers if status != 200]
        assert failures in ([], [422]), answers
        assert [status for status, after in answers if after][-3:] == [200, 200, 200]
        assert worker not in live_children(zygote)

        # The third crash stops the deployment: 503 until it is deployed again.
        assert attacker.predict("window", trip).status_code == 422
        stopped = attacker.predict("window", ORDINARY)
        assert stopped.status_code == 503, stopped.text
        detail = attacker.http.get(f"/api/v1/deployments/{deployment}").json()["data"]
        assert detail["status"] == "failed"
        with factory.database.session(write=False) as session:
            updates = session.scalars(
                select(OutboxEvent).where(OutboxEvent.type == "deployment.updated")
            ).all()
        assert any(
            event.payload["deployment_id"] == deployment and event.payload["status"] == "failed"
            for event in updates
        )

        def logged() -> list[str]:
            entries = attacker.http.get(f"/api/v1/deployments/{deployment}/logs").json()["data"]
            return [entry["event"] for entry in entries]

        wait_until(lambda: logged().count("model_crashed") == 3 and "failed" in logged(), timeout=30)
        reactivated = attacker.http.put(f"/api/v1/deployments/{deployment}", json={"status": "active"})
        assert reactivated.status_code == 200, reactivated.text
        assert attacker.predict("window", ORDINARY).status_code == 200
        settle()

        # The heap read happens in the model's own process, which holds nothing of the server.
        attacker.deploy("leak", crafted.heap_read())
        assert attacker.predict("leak", [[3e38, 0.0, 0.0]]).status_code in (200, 422)
        assert attacker.predict("leak", ORDINARY).status_code == 200
    assert server.process.poll() is None


def test_the_model_server_refuses_crafted_files_and_keeps_serving(
    model_server: Callable[..., RunningProcess], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    key = "operator-key-for-crafted-files"
    models = tmp_path / "models"
    models.mkdir()
    files = {
        "min_treesizes.txt": crafted.min_treesizes(),
        "lgb_killswitch.txt": crafted.killswitch(),
        "xgb_right_oob.json": crafted.xgboost_child_out_of_range(tmp_path),
        "bomb.onnx": crafted.onnx_constant_bomb(),
        "fine.txt": crafted.lightgbm_text().encode(),
    }
    for name, data in files.items():
        (models / name).write_bytes(data)
    settings = make_settings(model_server_api_keys=[key], model_server_models_dir=models)
    server = model_server(settings)
    base = server.base_url
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120) as http:
        loaded = http.post("/api/v1/models/load", json={"model_path": "fine.txt", "model_name": "fine"})
        assert loaded.status_code == 200, loaded.text
        for name in ("min_treesizes.txt", "lgb_killswitch.txt", "xgb_right_oob.json", "bomb.onnx"):
            refused = http.post("/api/v1/models/load", json={"model_path": name, "model_name": "boom"})
            assert refused.status_code == 422, (name, refused.text)
            answer = http.post("/api/v1/predict/fine", json={"features": ORDINARY[0]})
            assert answer.status_code == 200, answer.text
        assert [m["name"] for m in http.get("/api/v1/models").json()["models"]] == ["fine"]
    assert server.process.poll() is None
