"""Isolated processes: whatever a task does to its own process, the server goes on, and
a compromised task can reach neither the data directory nor the network nor the server."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from maestro.sandbox import ChildDied, ChildFailed, ChildTimedOut, Limits, Sandbox, SandboxError
from maestro.sandbox.confine import landlock_abi

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="isolation needs Linux")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(python_path=[str(ROOT)])
    yield box
    box.close()


def test_the_zygote_is_single_threaded_after_preloading(sandbox: Sandbox) -> None:
    assert sandbox.ping()["threads"] == 1


def test_arrays_go_and_come_back(sandbox: Sandbox) -> None:
    with sandbox.spawn("tests.sandbox.tasks:echo", {"name": "x"}, limits=Limits()) as child:
        matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
        reply = child.request(
            {"op": "double"}, [matrix, np.array([True, False])], timeout=30, max_reply_bytes=1 << 20
        )
        assert reply.meta["args"] == {"name": "x"}
        np.testing.assert_array_equal(reply.arrays[0], matrix * 2)
        assert reply.arrays[1].tolist() == [False, True]
        assert child.memory().rss_bytes > 0


def test_a_segfault_kills_only_the_child(sandbox: Sandbox) -> None:
    child = sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits())
    with pytest.raises(ChildDied) as died:
        child.request({"op": "crash"}, timeout=30, max_reply_bytes=1 << 10)
    assert died.value.exit_code == -11
    assert "segmentation fault" in died.value.message
    with pytest.raises(ChildDied):
        child.request({"op": "double"}, timeout=30, max_reply_bytes=1 << 10)
    with sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits()) as again:
        assert again.request({"op": "double"}, timeout=30, max_reply_bytes=1 << 10).meta == {"args": {}}


def test_memory_past_the_budget_is_refused(sandbox: Sandbox) -> None:
    with sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits(memory_bytes=64 * 1024**2)) as child:
        with pytest.raises(ChildFailed) as failed:
            child.request({"op": "allocate", "bytes": 2 * 1024**3}, timeout=30, max_reply_bytes=1 << 10)
        assert failed.value.kind in ("MemoryError", "_ArrayMemoryError")
        fits = child.request({"op": "allocate", "bytes": 16 * 1024**2}, timeout=30, max_reply_bytes=1 << 10)
        assert fits.meta["allocated"] == 16 * 1024**2
        assert child.memory().peak_bytes >= 16 * 1024**2


def test_cpu_time_is_bounded(sandbox: Sandbox) -> None:
    child = sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits(cpu_seconds=1))
    with pytest.raises(ChildDied) as died:
        child.request({"op": "spin"}, timeout=None, max_reply_bytes=1 << 10)
    assert died.value.exit_code in (-24, -9)  # SIGXCPU, then SIGKILL at the hard limit


def test_a_child_that_never_answers_is_killed(sandbox: Sandbox) -> None:
    child = sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits())
    with pytest.raises(ChildTimedOut):
        child.request({"op": "hang"}, timeout=0.2, max_reply_bytes=1 << 10)
    assert not child.alive
    assert child.exit_code == -9


def test_task_errors_arrive_as_printable_text(sandbox: Sandbox) -> None:
    with sandbox.spawn("tests.sandbox.tasks:echo", limits=Limits()) as child:
        with pytest.raises(ChildFailed) as failed:
            child.request({"op": "fail"}, timeout=30, max_reply_bytes=1 << 10)
        assert failed.value.kind == "ValueError"
        assert failed.value.message.isprintable()
        assert "bad" in failed.value.message


@pytest.mark.parametrize("kind", ["huge", "object_array", "short"])
def test_lying_answers_are_refused(sandbox: Sandbox, kind: str) -> None:
    child = sandbox.spawn("tests.sandbox.tasks:liar", {"kind": kind}, limits=Limits())
    with pytest.raises(SandboxError):
        child.request({"op": "anything"}, timeout=30, max_reply_bytes=1 << 20)
    assert not child.alive


@pytest.mark.skipif(landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")
def test_a_compromised_child_reaches_nothing(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    secret = data_dir / "secret_key"
    secret.write_text("s3cret")
    scratch = tmp_path / "scratch"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setenv("MAESTRO_SECRET_KEY", "not-for-children")
        fresh = Sandbox(python_path=[str(ROOT)])  # started with the secret in this environment
        try:
            child = fresh.spawn(
                "tests.sandbox.tasks:probe",
                {
                    "protected_file": str(secret),
                    "scratch": str(scratch),
                    "elsewhere": str(tmp_path / "elsewhere.txt"),
                    "port": port,
                    "server_pid": os.getpid(),
                },
                limits=Limits(file_bytes=1 << 20),
                imports=["onnxruntime"],
                writable=[str(scratch)],
                protected=[str(data_dir)],
            )
            with child:
                report = child.receive(timeout=60, max_reply_bytes=0).meta
        finally:
            fresh.close()
    assert report == {
        "read_protected": "refused: PermissionError",
        "write_scratch": "allowed",
        "write_elsewhere": "refused: PermissionError",
        "connect": "refused: PermissionError",
        "execute": "refused: PermissionError",
        "signal_server": "refused: PermissionError",
        "signal_itself": "allowed",
        "secret_in_environment": False,
        "import_onnxruntime": "allowed",
    }
    assert (scratch / "out.txt").read_bytes() == b"x"
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_dead_zygote_is_replaced(sandbox: Sandbox) -> None:
    box = Sandbox(python_path=[str(ROOT)])
    try:
        child = box.spawn("tests.sandbox.tasks:echo", limits=Limits())
        os.kill(box.ping()["pid"], 9)
        assert box._process is not None
        box._process.wait(30)  # once it has exited, its children have been sent SIGKILL
        with pytest.raises(ChildDied):  # its children die with it
            child.request({"op": "double"}, timeout=30, max_reply_bytes=1 << 10)
        with box.spawn("tests.sandbox.tasks:echo", limits=Limits()) as again:
            assert again.request({"op": "double"}, timeout=30, max_reply_bytes=1 << 10).meta == {"args": {}}
    finally:
        box.close()
