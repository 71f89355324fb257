"""Per-token rate limiting over the shared Django cache (Redis), so every web replica counts together.

A fixed-window counter: one atomic INCR per request, whatever the rate. (DRF's SimpleRateThrottle keeps a list of
every request time in the window and rewrites it on each request, which is O(rate) work and loses updates between
processes.) A window lets a burst of up to twice the rate straddle its edge; that is fine for protecting the service.
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from ci_integrations.api.permissions import request_token

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """(requests, seconds) from e.g. "1200/minute", "20/s" or "5000/hour"."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip()[0]]


def _window_count(key: str, period: int) -> int:
    """Count this request in its window and return the count so far: one round trip on Redis."""
    key = cache.make_and_validate_key(key)
    client_of = getattr(getattr(cache, "_cache", None), "get_client", None)
    if client_of is not None:  # Django's RedisCache: INCR and EXPIRE pipelined, atomic per request
        pipe = client_of(key, write=True).pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, period + 1, nx=True)
        return int(pipe.execute()[0])
    cache.add(key, 0, timeout=period + 1)  # other cache backends (local memory in development)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: this request opens the next window
        cache.add(key, 1, timeout=period + 1)
        return 1


class TokenRateThrottle(BaseThrottle):
    """`P2P_API_TOKEN_RATE` requests per token (e.g. "1200/minute"); callers without a token count per address."""

    def __init__(self):
        self.retry_after: int | None = None

    def allow_request(self, request, view) -> bool:
        # Read at request time, not import time, so the rate can be tuned (and tested) through settings.
        rate = getattr(settings, "P2P_API_TOKEN_RATE", "")
        if not rate:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        count = _window_count(f"throttle:{self.identity(request)}:{period}:{window}", period)
        if count <= limit:
            return True
        self.retry_after = max(1, math.ceil((window + 1) * period - now))
        return False

    def wait(self) -> int | None:
        return self.retry_after

    def identity(self, request) -> str:
        token = request_token(request)
        if token is not None:
            return f"token:{token.key_id}"
        if request.user and request.user.is_authenticated:
            return f"user:{request.user.pk}"
        return f"addr:{self.get_ident(request)}"
