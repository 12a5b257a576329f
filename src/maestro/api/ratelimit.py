"""Rate limits with the ``limits`` library: in memory by default, in Redis when
``MAESTRO_REDIS_URL`` is set (so every replica shares the count).

Requests count against the plan of the organisation they act for, whoever sends
them (every member and every API key share the organisation's allowance): unlimited
(a self-hosted install's default), free 100 requests/hour, professional 10,000/hour,
enterprise unlimited. The count of an organisation is one, whatever its plan, so a
plan change applies to the very next request with the requests already made. Sign-in
and sign-up are limited per client address and per account, refresh-token exchanges
per client address. Limited responses carry
``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``; a 429 adds ``Retry-After``.

Anonymous traffic chooses the keys (its address, any email), so what is kept for a
key must go once its window has passed: Redis expires the keys itself, and the
memory storage is swept (``SweptMemoryStorage``)."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time

from limits import RateLimitItem, parse
from limits.limits import safe_string
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from maestro.config import Settings
from maestro.errors import RateLimited

PLAN_LIMITS: dict[str, str | None] = {
    "unlimited": None,
    "free": "100/hour",
    "professional": "10000/hour",
    "enterprise": None,
}


class SweptMemoryStorage(MemoryStorage):
    """``limits``' memory storage drops the events of a key once they expire, but
    keeps the key itself, so every client address or email ever seen would stay in
    memory. Keys whose events have all expired are dropped every ``SWEEP_EVERY``
    entries."""

    SWEEP_EVERY = 1024

    def __init__(self) -> None:
        super().__init__()
        self._entries = 0
        self._guard = threading.Lock()  # a sweep never runs beside an entry being added

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        with self._guard:
            self._entries += 1
            if self._entries % self.SWEEP_EVERY == 0:
                self._sweep(time.time())
            return super().acquire_entry(key, limit, expiry, amount)

    def sweep(self, now: float | None = None) -> None:
        """Forget every key whose newest event expired before ``now``."""
        with self._guard:
            self._sweep(time.time() if now is None else now)

    def _sweep(self, now: float) -> None:
        for key in list(self.events):
            with self.locks[key]:
                events = self.events.get(key)
                if not events or events[0].expiry <= now:  # newest first
                    self.events.pop(key, None)
                    self.locks.pop(key, None)


def _key_without_amount(self: RateLimitItem, *identifiers: bytes | str | int | float) -> str:
    parts = [safe_string(part) for part in identifiers]
    return "/".join([self.namespace, "plan", *parts, safe_string(self.multiples), self.GRANULARITY.name])


def plan_item(limit: str) -> RateLimitItem:
    """A plan's limit whose counter is named without its amount: every plan of the same
    window shares an organisation's one count, so changing the plan neither forgets nor
    restarts what was counted."""
    parsed = parse(limit)
    shared = type(f"Plan{type(parsed).__name__}", (type(parsed),), {"key_for": _key_without_amount})
    item: RateLimitItem = shared(parsed.amount, parsed.multiples, parsed.namespace)
    return item


def client_key(address: str) -> str:
    """What a per-address limit counts by: an IPv6 client usually holds a whole /64,
    so all of its addresses count as one."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{parsed}/64", strict=False))
    return str(parsed)


def _account_key(email: str) -> str:
    """Emails are the caller's text: counted by a fixed-length digest."""
    return hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        self.storage = (
            storage_from_string(settings.redis_url, key_prefix=f"{settings.queue_name}-limits")
            if settings.redis_url
            else SweptMemoryStorage()
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.login_per_ip = parse(settings.login_limit_per_ip)
        self.login_per_account = parse(settings.login_limit_per_account)
        self.refresh_per_ip = parse(settings.refresh_limit_per_ip)
        self.default_plan = settings.default_plan
        self.plans = {plan: plan_item(limit) if limit else None for plan, limit in PLAN_LIMITS.items()}

    def hit(self, item: RateLimitItem, *identifiers: str) -> dict[str, str]:
        """Count one request; the headers to send, or RateLimited when over."""
        allowed = self.limiter.hit(item, *identifiers)
        stats = self.limiter.get_window_stats(item, *identifiers)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(max(stats.remaining, 0)),
            "X-RateLimit-Reset": str(math.ceil(stats.reset_time)),
        }
        if not allowed:
            headers["Retry-After"] = str(max(math.ceil(stats.reset_time - time.time()), 1))
            raise RateLimited(
                f"Rate limit of {item.amount} per {item.GRANULARITY.name} exceeded; retry later",
                headers=headers,
            )
        return headers

    def for_plan(self, plan: str | None, organization_id: str | None, principal_id: str) -> dict[str, str]:
        """Count a request against its organisation's plan. A caller acting for no
        organisation (a user who belongs to none) is counted alone, on the default plan."""
        if not self.enabled:
            return {}
        item = self.plans.get(plan or self.default_plan, self.plans["free"])
        if item is None:
            return {}
        if organization_id is None:
            return self.hit(item, "principal", principal_id)
        return self.hit(item, "organization", organization_id)

    def login(self, client_ip: str, email: str) -> None:
        """Sign-in and sign-up attempts: per address first, so one address cannot
        fill memory with the emails it tries."""
        if not self.enabled:
            return
        self.hit(self.login_per_ip, "login-ip", client_key(client_ip))
        self.hit(self.login_per_account, "login-account", _account_key(email))

    def refresh(self, client_ip: str) -> dict[str, str]:
        """Refresh-token exchanges, which anyone may attempt: per address."""
        if not self.enabled:
            return {}
        return self.hit(self.refresh_per_ip, "refresh-ip", client_key(client_ip))

    def reset(self) -> None:
        self.storage.reset()
