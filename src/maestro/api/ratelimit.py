"""Rate limits with the ``limits`` library: in memory by default, in Redis when
``MAESTRO_REDIS_URL`` is set (so every replica shares the count).

Each principal gets its organisation's plan: free 100 requests/hour, professional
10,000/hour, enterprise unlimited. Login is limited per client address and per
account. Limited responses carry ``X-RateLimit-Limit``, ``-Remaining`` and
``-Reset``; a 429 adds ``Retry-After``."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from maestro.api.errors import RateLimited
from maestro.config import Settings

PLAN_LIMITS: dict[str, str | None] = {
    "free": "100/hour",
    "professional": "10000/hour",
    "enterprise": None,
}


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        uri = settings.redis_url or "memory://"
        self.storage = (
            storage_from_string(uri, key_prefix=f"{settings.queue_name}-limits")
            if settings.redis_url
            else storage_from_string(uri)
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.login_per_ip = parse(settings.login_limit_per_ip)
        self.login_per_account = parse(settings.login_limit_per_account)
        self.plans = {plan: parse(limit) if limit else None for plan, limit in PLAN_LIMITS.items()}

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

    def for_plan(self, plan: str | None, principal_id: str) -> dict[str, str]:
        if not self.enabled:
            return {}
        item = self.plans.get(plan or "free", self.plans["free"])
        if item is None:
            return {}
        return self.hit(item, "principal", principal_id)

    def login(self, client_ip: str, email: str) -> None:
        if not self.enabled:
            return
        self.hit(self.login_per_ip, "login-ip", client_ip)
        self.hit(self.login_per_account, "login-account", email.strip().lower())

    def reset(self) -> None:
        self.storage.reset()
