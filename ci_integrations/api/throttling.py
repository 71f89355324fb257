"""Per-token rate limiting over the shared Django cache (Redis), so every web replica counts together.

A fixed-window counter: one atomic INCR per request, whatever the rate. (DRF's SimpleRateThrottle keeps a list of
every request time in the window and rewrites it on each request, which is O(rate) work and loses updates between
processes.) A window lets a burst of up to twice the rate straddle its edge; that is fine for protecting the service.
"""

from __future__ import annotations

import functools
import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from ci_integrations.api.permissions import request_token
from p2p_portal.client_address import client_address

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """(requests, seconds) from e.g. "1200/minute", "20/s" or "5000/hour"."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip()[0]]


def _window_count(key: str, period: int) -> int:
    """Count this request in its window and return the count so far: one INCR on Redis per request."""
    key = cache.make_and_validate_key(key)
    backend = getattr(cache, "_cache", None)
    if hasattr(backend, "get_client"):  # Django's RedisCache
        client = _redis_client(backend)
        count = int(client.incr(key))
        if count == 1:  # the window's first request gives the counter its lifetime
            client.expire(key, period + 1)
        return count
    cache.add(key, 0, timeout=period + 1)  # other cache backends (local memory in development)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: this request opens the next window
        cache.add(key, 1, timeout=period + 1)
        return 1


@functools.lru_cache(maxsize=8)
def _redis_client(backend):
    """One Redis client per cache backend and process: Django's RedisCache builds a new client object (and copies
    its ~170 response callbacks) on every call, which costs more than the INCR itself. Clients are thread-safe."""
    return backend.get_client(write=True)  # writes always go to the first server


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
        # Not DRF's get_ident(), which believes X-Forwarded-For from anyone: a made-up address per request would
        # reset the count.
        return f"addr:{client_address(request)}"
