"""The documentation's examples, run in order against a real server.

A reader follows the README and then the guides, typing the ``bash`` blocks into one
shell and running the ``python`` blocks in the same directory. This test does the
same: every ``bash`` block of ``DOCUMENTS`` runs in one persistent bash process
(``set -euo pipefail``; variables carry from block to block; ``curl`` fails on an
answer that is not 2xx), and every ``python``
block runs with the virtual environment's Python, in the same working directory,
with the variables the shell has exported at that point. A block marked
``<!-- not-tested: reason -->`` is skipped (see ``tests/doc_blocks.py``).

The documents name the server ``http://127.0.0.1:8000`` and the model server
``127.0.0.1:8001``; both addresses are replaced by free ports of this test, and the
shell starts with the server's settings (``MAESTRO_*``) in its environment, as a
reader's shell in the repository has the same ``.env`` and data directory as
``make serve``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maestro.config import Settings
from tests.conftest import RunningProcess, free_port, settings_env
from tests.doc_blocks import Block, blocks

ROOT = Path(__file__).resolve().parent.parent

# The order a reader follows: each guide continues with what the one before made
# (the account, the project, the model, its version, the deployment).
DOCUMENTS = (
    "README.md",
    "docs/access-control.md",
    "docs/registry.md",
    "docs/tracking.md",
    "docs/mlflow.md",
    "docs/serving.md",
    "docs/monitoring.md",
    "docs/alerts-and-webhooks.md",
    "docs/operations.md",
    "docs/security.md",
    "docs/architecture.md",
)
BLOCK_TIMEOUT_SECONDS = 120
DONE = "maestro-docs-block-done"
# An answer that is not 2xx fails its block (curl alone exits 0 on a 404), with the
# answer in the output; ``-sS`` keeps progress meters out of captured answers.
CURL_FAILS_ON_ERRORS = 'curl() { command curl -sS --fail-with-body "$@"; }\n'


pytestmark = pytest.mark.slow


def test_every_document_is_in_the_reading_order() -> None:
    guides = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert guides | {"README.md"} == set(DOCUMENTS)


def test_every_block_is_classified_and_skips_give_a_reason() -> None:
    """Fences name a language; skips are few and explained (blocks() raises otherwise)."""
    every = [block for document in DOCUMENTS for block in blocks(ROOT, document)]
    runnable = [block for block in every if block.language in ("bash", "python")]
    skipped = [block for block in runnable if block.skip_reason is not None]
    assert runnable
    assert len(skipped) * 4 < len(runnable), [block.where for block in skipped]


@dataclass
class Shell:
    """One bash process that runs blocks one after the other, like a reader's terminal."""

    process: subprocess.Popen[str]
    workdir: Path
    count: int = 0

    @classmethod
    def start(cls, workdir: Path, env: dict[str, str]) -> Shell:
        process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            text=True,
            start_new_session=True,  # its own process group: background servers end with it
        )
        shell = cls(process=process, workdir=workdir)
        shell._send("set -euo pipefail\n" + CURL_FAILS_ON_ERRORS)
        return shell

    def _send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command)
        self.process.stdin.flush()

    def run(self, text: str) -> tuple[bool, str, dict[str, str]]:
        """Run one block: (succeeded, its output, the exported environment after it)."""
        self.count += 1
        script = self.workdir / f".block-{self.count}.sh"
        output = self.workdir / f".block-{self.count}.out"
        environment = self.workdir / f".block-{self.count}.env"
        script.write_text(text)
        self._send(f"source {script} > {output} 2>&1 < /dev/null\nenv -0 > {environment}\necho '{DONE}'\n")
        finished = self._wait_done()
        log = output.read_text(errors="replace") if output.exists() else ""
        if not finished:
            return False, log, {}
        pairs = (item.partition("=") for item in environment.read_text().split("\0") if item)
        return True, log, {key: value for key, _, value in pairs}

    def _wait_done(self) -> bool:
        """True once the block's end marker arrives; False when the shell exited (a
        command failed under ``set -e``). A block that hangs fails the test."""
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                if not selector.select(timeout=BLOCK_TIMEOUT_SECONDS):
                    raise AssertionError(f"a block ran longer than {BLOCK_TIMEOUT_SECONDS}s")
                line = self.process.stdout.readline()
                if not line:
                    return False
                if line.rstrip("\n") == DONE:
                    return True

    def stop(self) -> None:
        """End the shell and whatever it started in the background."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def run_python(block_text: str, workdir: Path, env: dict[str, str], number: int) -> tuple[bool, str]:
    script = workdir / f".block-{number}.py"
    script.write_text(block_text)
    try:
        done = subprocess.run(
            [sys.executable, script.name],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        return False, f"ran longer than {BLOCK_TIMEOUT_SECONDS}s\n{exc.stdout or ''}{exc.stderr or ''}"
    return done.returncode == 0, done.stdout + done.stderr


def localised(text: str, server: str, model_server_port: int) -> str:
    return (
        text.replace("http://127.0.0.1:8000", server)
        .replace("127.0.0.1:8001", f"127.0.0.1:{model_server_port}")
        .replace("--port 8001", f"--port {model_server_port}")
    )


def failure(block: Block, text: str, output: str) -> str:
    return f"the example at {block.where} ({block.language}) failed.\n--- block\n{text}--- output\n{output}"


@pytest.fixture
def shell(tmp_path: Path, doc_settings: Settings) -> Iterator[Callable[[], Shell]]:
    started: list[Shell] = []

    def start() -> Shell:
        workdir = tmp_path / "reader"
        workdir.mkdir()
        env = settings_env(doc_settings)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
        started.append(Shell.start(workdir, env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def doc_settings(make_settings: Callable[..., Settings]) -> Settings:
    """What ``make serve`` runs with: a job consumer in the server and the plan limits on."""
    return make_settings(run_worker_in_process=True, rate_limits_enabled=True)


@pytest.mark.timeout(600)  # the walk-through starts a dozen processes; slow on a busy machine
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_examples_run_in_order(
    doc_settings: Settings,
    serve: Callable[..., RunningProcess],
    shell: Callable[[], Shell],
) -> None:
    server = serve(doc_settings)
    terminal = shell()
    model_server_port = free_port()
    env: dict[str, str] = {}
    ran = 0
    every = [block for document in DOCUMENTS for block in blocks(ROOT, document)]
    for block in (block for block in every if block.runs):
        text = localised(block.text, server.base_url, model_server_port)
        ran += 1
        if block.language == "bash":
            ok, output, exported = terminal.run(text)
            env = exported or env
        else:
            ok, output = run_python(text, terminal.workdir, env, ran)
        assert ok, failure(block, text, output) + f"\n--- server log (tail)\n{server.output()[-3000:]}"
    assert ran
