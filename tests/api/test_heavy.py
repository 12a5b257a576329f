"""The shared pool for CPU-heavy work: a bounded number of turns for the whole process,
a share per caller and organisation, a bounded queue with a wait limit, arrival order
between owners, and worker processes that run the work and survive a crash."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from maestro.api.heavy import HeavyWork
from maestro.errors import RateLimited, ServiceUnavailable
from tests.api.heavy_functions import die, pid_and_niceness, refuse, twice
from tests.conftest import wait_until

A = ("user:a", "organization:one")
A_KEY = ("api_key:k", "organization:one")  # another credential of the same organisation
B = ("user:b", "organization:two")
C = ("user:c", "organization:three")


class Holder:
    """Takes turns in other threads and keeps each until released."""

    def __init__(self, pool: HeavyWork) -> None:
        self.pool = pool
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, str] = {}
        self.releases: dict[str, threading.Event] = {}

    def hold(self, name: str, owners: tuple[str, ...], *, wait_for_turn: bool = True) -> None:
        entered = threading.Event()
        release = self.releases[name] = threading.Event()

        def keep() -> None:
            try:
                with self.pool.slot(owners):
                    self.outcomes[name] = "running"
                    entered.set()
                    release.wait()
                self.outcomes[name] = "done"
            except (RateLimited, ServiceUnavailable) as exc:
                self.outcomes[name] = type(exc).__name__
                entered.set()

        thread = threading.Thread(target=keep, daemon=True)
        thread.start()
        self.threads.append(thread)
        if wait_for_turn:
            assert entered.wait(30)

    def release(self, name: str) -> None:
        self.releases[name].set()

    def close(self) -> None:
        for release in self.releases.values():
            release.set()
        for thread in self.threads:
            thread.join(30)


@pytest.fixture
def holder() -> Iterator[Callable[[HeavyWork], Holder]]:
    made: list[Holder] = []

    def make(pool: HeavyWork) -> Holder:
        made.append(Holder(pool))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_an_owner_beyond_its_share_gets_429_and_others_still_run(
    holder: Callable[[HeavyWork], Holder],
) -> None:
    pool = HeavyWork(workers=2, per_owner=1, owner_queue=0, queue=4, wait_seconds=30)
    held = holder(pool)
    held.hold("a", A)
    for owners in (A, A_KEY):  # the same organisation through another credential
        with pytest.raises(RateLimited) as refused, pool.slot(owners):
            pass
        assert refused.value.headers["Retry-After"] == "1" and refused.value.status_code == 429
    with pool.slot(B):
        assert pool.stats() == {"running": 2, "waiting": 0}
    held.release("a")
    wait_until(lambda: pool.stats() == {"running": 0, "waiting": 0})
    assert not pool._running_by_owner and not pool._waiting_by_owner  # owners are forgotten


def test_a_full_queue_answers_503_at_once(holder: Callable[[HeavyWork], Holder]) -> None:
    pool = HeavyWork(workers=1, per_owner=1, owner_queue=2, queue=0, wait_seconds=30)
    holder(pool).hold("a", A)
    with pytest.raises(ServiceUnavailable) as busy, pool.slot(B):
        pass
    assert busy.value.status_code == 503 and busy.value.headers["Retry-After"] == "30"


def test_a_wait_past_the_limit_answers_503(holder: Callable[[HeavyWork], Holder]) -> None:
    """The turn is held until the test ends, so the wait cannot but run out."""
    pool = HeavyWork(workers=1, per_owner=1, owner_queue=1, queue=1, wait_seconds=0.05)
    holder(pool).hold("a", A)
    with pytest.raises(ServiceUnavailable), pool.slot(B):
        pass
    assert pool.stats() == {"running": 1, "waiting": 0}


def test_an_owner_at_its_share_lets_the_next_in_line_go_first(holder: Callable[[HeavyWork], Holder]) -> None:
    pool = HeavyWork(workers=2, per_owner=1, owner_queue=2, queue=8, wait_seconds=30)
    held = holder(pool)
    held.hold("a1", A)
    held.hold("c1", C)
    held.hold("a2", A, wait_for_turn=False)  # waits: A already runs one
    wait_until(lambda: pool.stats()["waiting"] == 1)
    held.hold("b1", B, wait_for_turn=False)  # waits behind a2 for a free turn
    wait_until(lambda: pool.stats()["waiting"] == 2)
    held.release("c1")  # a turn frees up: a2 came first, but A is at its share
    wait_until(lambda: held.outcomes.get("b1") == "running")
    assert held.outcomes.get("a2") is None and pool.stats() == {"running": 2, "waiting": 1}
    held.release("a1")
    wait_until(lambda: held.outcomes.get("a2") == "running")


@pytest.mark.slow
def test_work_runs_in_worker_processes_that_outlive_a_crash() -> None:
    pool = HeavyWork(workers=1, per_owner=1, owner_queue=0, queue=0, wait_seconds=30)
    assert pool.run(A, twice, 21) == 42
    pid, niceness = pool.run(A, pid_and_niceness, 0)
    assert pid != os.getpid() and niceness > os.nice(0)  # a worker, below the server's priority
    with pytest.raises(ValueError, match="no 7"):
        pool.run(A, refuse, 7)
    with pytest.raises(ServiceUnavailable):
        pool.run(A, die, 0)
    assert pool.run(B, twice, 2) == 4  # a fresh worker
    assert pool.stats() == {"running": 0, "waiting": 0}


def test_threads_instead_of_processes() -> None:
    pool = HeavyWork(workers=1, processes=False)
    assert pool.run(A, pid_and_niceness, 0) == (os.getpid(), os.nice(0))
