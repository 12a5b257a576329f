"""A short memory of checked credentials and access decisions, so a busy client (an
inference caller above all) does not cost database lookups on every request.

What is remembered, and for how long: an API key or an access token, as the principal
it authenticated to, for ``MAESTRO_AUTH_CACHE_SECONDS`` (1 s by default), never past
the key's or the token's own expiry.

How it stays correct: every memory in this process is emptied the moment a transaction
commits that touched the rows a principal or a decision is built from (API keys,
sessions, users, organisations, memberships, projects, project members), whoever made
the change: revoking a key, logging out, a reused refresh token, a password reset, a
role change. The trade-off is for changes made by *another* process (another worker
or replica): there a revoked key or an ended session keeps working for at most the TTL.
``MAESTRO_AUTH_CACHE_SECONDS=0`` turns the memory off and checks every request.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

# Tables whose rows principals and access decisions are built from.
WATCHED_TABLES = frozenset(
    {"api_keys", "auth_sessions", "users", "organizations", "memberships", "projects", "project_members"}
)
MAX_ENTRIES = 10_000
_CHANGED = "credentials_changed"
_MEMORIES: weakref.WeakSet[ShortMemory] = weakref.WeakSet()
_MEMORIES_LOCK = threading.Lock()


# An entry is checked again after this share of its lifetime, by one caller, while the
# others go on using it: at a busy moment no crowd of requests waits on the same lookup.
RECHECK_AFTER = 0.75


class ShortMemory:
    """A bounded map whose entries expire after ``seconds`` (or earlier, at the
    monotonic deadline given with them); emptied whenever credentials change.
    ``clock`` (monotonic seconds) is the clock it reads; tests give it one they move.

    Three quarters of the way into the TTL, the first ``get`` answers None, so that caller
    checks again and ``put``s a fresh entry, while every other caller keeps the old one
    until it expires. Without that, all the requests in flight when a busy credential
    expired would look it up at once, once per TTL, and the last of them would wait for
    all the others: the slowest hundredth of inference requests waited 25 to 75 ms for
    that at 2,000 requests/s. No entry outlives its deadline, so what another process
    changed still applies within the TTL."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[Hashable, tuple[Any, float, float]] = {}  # value, deadline, re-check at
        self._lock = threading.Lock()
        with _MEMORIES_LOCK:
            _MEMORIES.add(self)

    def get(self, key: Hashable) -> Any:
        """The value; None when there is none, it has expired, or this caller is the one
        to check it again (then it must ``put`` the result, or ``forget`` the key)."""
        found = self._entries.get(key)
        if found is None:
            return None
        value, until, recheck_at = found
        now = self.clock()
        if now < recheck_at:
            return value
        if until <= now:
            self._expire(key, found)
            return None
        with self._lock:
            current = self._entries.get(key)
            if current is not found:  # claimed or renewed by another caller, or forgotten
                return None if current is None else current[0]
            self._entries[key] = (value, until, until)  # claimed: the others use it to the end
        return None

    def peek(self, key: Hashable) -> Any:
        """The value without claiming its re-check: None when ``get`` might answer None.
        For a path that would take the re-check elsewhere (in a worker thread)."""
        found = self._entries.get(key)
        if found is None:
            return None
        value, _, recheck_at = found
        return value if self.clock() < recheck_at else None

    def put(self, key: Hashable, value: Any, *, at_most: float | None = None) -> None:
        """Remember ``value``; ``at_most``: seconds after which it must be forgotten anyway."""
        lifetime = self.seconds if at_most is None else min(self.seconds, at_most)
        if lifetime <= 0:
            return
        now = self.clock()
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                expired = [k for k, (_, until, _) in self._entries.items() if until <= now]
                for stale in expired or list(self._entries)[: MAX_ENTRIES // 10]:
                    self._entries.pop(stale, None)
            # One that ends before its re-check (a credential about to expire) just ends.
            until = now + lifetime
            self._entries[key] = (value, until, min(now + self.seconds * RECHECK_AFTER, until))

    def forget(self, key: Hashable) -> None:
        """Drop one entry: its re-check found it no longer holds."""
        with self._lock:
            self._entries.pop(key, None)

    def _expire(self, key: Hashable, found: tuple[Any, float, float]) -> None:
        with self._lock:
            if self._entries.get(key) is found:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def forget_everything() -> None:
    """Empty every memory in this process."""
    with _MEMORIES_LOCK:
        memories = list(_MEMORIES)
    for memory in memories:
        memory.clear()


def _watched(obj: Any) -> bool:
    return getattr(obj, "__tablename__", None) in WATCHED_TABLES


@event.listens_for(Session, "after_flush")
def _note_flushed_changes(session: Session, _context: Any) -> None:
    if any(_watched(obj) for objects in (session.new, session.dirty, session.deleted) for obj in objects):
        session.info[_CHANGED] = True


@event.listens_for(Session, "do_orm_execute")
def _note_bulk_changes(state: ORMExecuteState) -> None:
    mapper = state.bind_mapper
    if (state.is_update or state.is_delete) and mapper is not None and _watched(mapper.class_):
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _forget_after_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        forget_everything()


@event.listens_for(Session, "after_soft_rollback")
def _nothing_changed(session: Session, previous: Any) -> None:
    if previous.parent is None:
        session.info.pop(_CHANGED, None)
